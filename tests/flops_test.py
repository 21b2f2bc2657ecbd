"""benchmarks/flops.py: conv and matmul FLOPs counted from jaxprs."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

# Loaded by path: benchmarks/ is a folder of scripts, not a package.
_SPEC = importlib.util.spec_from_file_location('flops', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'benchmarks', 'flops.py'))
_FLOPS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_FLOPS)
count_flops = _FLOPS.count_flops


def _conv(x, w, groups=1):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


def test_conv_forward_and_gradients():
  x, w = jnp.ones((4, 16, 16, 3)), jnp.ones((3, 3, 3, 8))
  macs = 4 * 16 * 16 * 8 * 3 * 3 * 3
  assert count_flops(jax.jit(_conv), x, w) == 2 * macs
  # Gradient w.r.t. input and weights: two more convolutions of equal size.
  grad = jax.grad(lambda x, w: _conv(x, w).sum(), argnums=(0, 1))
  assert count_flops(jax.jit(grad), x, w) == 3 * 2 * macs


def test_grouped_conv():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 2, 6))  # 2 groups
  macs = 2 * 8 * 8 * 6 * 3 * 3 * 2
  assert count_flops(lambda x, w: _conv(x, w, 2), x, w) == 2 * macs
  # Its weight gradient is a batch-grouped convolution: still 3x forward.
  grad = jax.grad(lambda x, w: _conv(x, w, 2).sum(), argnums=(0, 1))
  assert count_flops(grad, x, w) == 3 * 2 * macs


def test_dot_batch_and_scan():
  a, b = jnp.ones((5, 3, 4)), jnp.ones((5, 4, 7))
  assert count_flops(jnp.matmul, a, b) == 2 * 5 * 3 * 4 * 7

  def body(c, _):
    return c @ jnp.ones((6, 6)), None
  f = lambda c: jax.lax.scan(body, c, None, length=10)[0]
  assert count_flops(f, jnp.ones((2, 6))) == 10 * 2 * 2 * 6 * 6


def test_strided_conv_input_gradient_skips_the_inserted_zeros():
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 8))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  fwd = count_flops(conv, x, w)
  assert fwd == 2 * 2 * 8 * 8 * 8 * 3 * 3 * 4
  # The gradient's jaxpr holds the forward conv and the input gradient (a
  # 2x lhs-dilated conv over 16x16, three quarters of its reads zeros).
  dx = jax.grad(lambda x: conv(x, w).sum())
  assert count_flops(dx, x) == 2 * fwd


def test_while_loop_is_refused():
  f = lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 5,
                                   lambda c: c @ jnp.ones((3, 3)), x)
  with pytest.raises(ValueError, match='while loop'):
    count_flops(f, jnp.ones((3, 3)))
  # Also when the matmul sits in a jitted function inside the body.
  mm = jax.jit(lambda c: c @ jnp.ones((3, 3)))
  g = lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 5, mm, x)
  with pytest.raises(ValueError, match='while loop'):
    count_flops(g, jnp.ones((3, 3)))
