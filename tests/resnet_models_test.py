"""Tests for resnet_jax.models: shapes, sizes, v1.5 strides, BN modes, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resnet_jax import models


def _num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@jax.jit
def _forward(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  return model(x), nnx.state(model)


def _jit_forward(model, x):
  graphdef, state = nnx.split(model)
  y, new_state = _forward(graphdef, state, x)
  nnx.update(model, new_state)
  return y


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50',
                                  '_resnet1'])
def test_output_shape(name):
  model = models.MODELS[name](num_classes=2, num_filters=4, num_channels=1,
                              rngs=nnx.Rngs(0))
  y = _jit_forward(model, jnp.ones((3, 32, 32, 1)))
  assert y.shape == (3, 2) and y.dtype == jnp.float32
  assert np.all(np.isfinite(y))


@pytest.mark.parametrize('name, expected', [
    # torchvision resnet{18,34,50}(num_classes=1000) parameter counts
    # (3-channel stem; BN scale/bias are parameters, running stats are not).
    ('resnet18', 11_689_512), ('resnet34', 21_797_672),
    ('resnet50', 25_557_032)])
def test_parameter_count_matches_torchvision(name, expected):
  model = nnx.eval_shape(lambda: models.MODELS[name](
      num_classes=1000, num_channels=3, rngs=nnx.Rngs(0)))
  assert _num_params(model) == expected


def test_stride_on_3x3_in_bottleneck():
  model = nnx.eval_shape(lambda: models.ResNet50(rngs=nnx.Rngs(0)))
  first_of_stage2 = model.blocks[3]  # stage sizes (3, 4, 6, 3)
  assert first_of_stage2.conv1.strides == (1, 1)
  assert first_of_stage2.conv2.strides == (2, 2)
  assert first_of_stage2.proj.strides == (2, 2)


def test_train_eval_switch_batchnorm():
  model = models._ResNet1(num_filters=4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1)) * 3 + 2
  running_mean = lambda: np.array(model.stem_bn.mean[...])
  before = running_mean()
  model.train()
  assert not model.stem_bn.use_running_average
  y_train = _jit_forward(model, x)
  after = running_mean()
  # Training mode updates the running averages ...
  assert not np.allclose(before, after)
  model.eval()
  assert model.stem_bn.use_running_average
  y_eval = _jit_forward(model, x)
  # ... eval mode leaves them alone and normalises differently.
  np.testing.assert_array_equal(after, running_mean())
  assert not np.allclose(y_train, y_eval)


def test_bfloat16_compute_float32_params():
  model = models._ResNet1(num_filters=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  y = _jit_forward(model, jnp.ones((2, 16, 16, 1)))
  assert y.dtype == jnp.float32


@pytest.mark.parametrize('variant', [
    dict(pointwise_dot=True),           # the default
    dict(pointwise_dot=False, max_pool='slices'),
    dict(pointwise_dot=False, stem_pad_channels=4),
], ids=str)
def test_variants_match_convolution_and_window_pool(variant):
  # 1x1 convs as dots (default), the stem's max-pool as 9 strided slices
  # and its input channels zero-padded == lax.conv_general_dilated and
  # nnx.max_pool: outputs, BN statistics and gradients, including the
  # strided projection. (At ties the slices split the max-pool's gradient
  # where select_and_scatter gives it to one input; the ties here are the
  # ReLU's zeros, whose gradient the ReLU stops either way.)
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 1))
  results = []
  for kw in (dict(pointwise_dot=False), variant):
    model = models.ResNet(stage_sizes=(1, 1),
                          block_cls=models.BottleneckResNetBlock,
                          num_filters=4, rngs=nnx.Rngs(0), **kw)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest=rest, graphdef=graphdef):
      m = nnx.merge(graphdef, params, rest, copy=True)
      y = m(x)
      return jnp.sum(y * jnp.arange(1, 3)), (y, nnx.state(m, nnx.BatchStat))

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  (_, (y0, s0)), g0 = results[0]
  (_, (y1, s1)), g1 = results[1]
  assert jax.tree.structure(g1) == jax.tree.structure(g0)   # same params
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s0) + jax.tree.leaves(g0),
                  jax.tree.leaves(s1) + jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('shape', [(2, 9, 9, 3), (1, 8, 6, 2)])
def test_max_pool_slices_matches_window(shape):
  x = jax.random.normal(jax.random.key(3), shape)
  window = lambda x: nnx.max_pool(x, (3, 3), strides=(2, 2),
                                  padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(models._max_pool_slices(x), window(x))
  # No ties in random normals: the same gradient.
  g = lambda f: jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)
  np.testing.assert_array_equal(g(models._max_pool_slices), g(window))
