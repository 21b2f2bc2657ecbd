"""Tests for pggan_jax.augment (ADA for CT) against hand-computed values."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from pggan_jax import augment

_ALL = 'bgc,xfrac,cutout'


def _images(n=6, size=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 1),
                            minval=-1.0, maxval=1.0)


def _phantom(size=32):
  """A head-like slice: air -1, skull ring +1, brain -0.2, ventricle -0.7."""
  yy, xx = np.mgrid[:size, :size]
  d = np.hypot((yy - size / 2 + 0.5) / (0.36 * size),
               (xx - size / 2 + 0.5) / (0.30 * size))
  img = np.full((size, size), -1.0, np.float32)
  img[d < 1] = 1.0
  img[d < 0.85] = -0.2
  img[d < 0.3] = -0.7
  return img[None, :, :, None]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_p0_is_the_identity_exactly(dtype):
  x = _images().astype(dtype)
  y = jax.jit(lambda x, p, k: augment.augment(x, p, k, policy=_ALL))(
      x, jnp.float32(0.0), jax.random.key(1))
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(x, np.float32))


def test_flip_params_mirror_every_image_exactly():
  x = _images()
  prm = augment.identity_params(6)._replace(flip=jnp.ones(6))
  np.testing.assert_array_equal(np.asarray(augment.apply_params(x, prm)),
                                np.asarray(x[:, :, ::-1]))


def test_xflip_at_p1_mirrors_half_as_ada():
  # At p = 1 each sample draws flip/no flip 50:50 (ADA), so each output is
  # exactly the image or its mirror, and both occur.
  n = 128
  x = _images(n)
  y = np.asarray(augment.augment(x, 1.0, jax.random.key(3), policy='xflip'))
  same = np.all(y == np.asarray(x), axis=(1, 2, 3))
  mirrored = np.all(y == np.asarray(x[:, :, ::-1]), axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 0.3 * n < mirrored.sum() < 0.7 * n


def test_integer_translation_moves_a_marker():
  img = jnp.full((2, 8, 8, 1), -1.0).at[:, 4, 2, 0].set(1.0)
  prm = augment.identity_params(2)._replace(
      xint=jnp.array([[3.0, -2.0], [-1.0, 1.0]]))   # (x right, y down)
  out = np.asarray(augment.apply_params(img, prm))[..., 0]
  expected = np.full((2, 8, 8), -1.0, np.float32)
  expected[0, 2, 5] = expected[1, 5, 1] = 1.0
  np.testing.assert_array_equal(out, expected)


def test_xint_draws_whole_pixel_shifts_and_fills_with_air():
  img = jnp.full((64, 16, 16, 1), -1.0).at[:, 8, 8, 0].set(1.0)
  out = np.asarray(augment.augment(img, 1.0, jax.random.key(4),
                                   policy='xint'))[..., 0]
  # No blur: one pixel at +1, everything else exactly air.
  assert np.all(np.sum(out == 1.0, axis=(1, 2)) == 1)
  assert np.all(np.sum(out == -1.0, axis=(1, 2)) == 16 * 16 - 1)
  rows, cols = np.nonzero(out == 1.0)[1:]
  shifts = np.stack([cols - 8, rows - 8], 1)
  assert np.abs(shifts).max() <= 2   # round(0.125 * 16)
  assert len({tuple(s) for s in shifts}) > 5


def test_color_is_a_bounded_affine_map_per_sample():
  x = _images(64)
  y = augment.augment(x, 1.0, jax.random.key(5), policy='color')
  assert bool(jnp.all(jnp.isfinite(y)))
  # y = c * (x + b) per sample: recover c and b from two pixels.
  x0, x1 = x[:, 0, 0, 0], x[:, 0, 1, 0]
  c = (y[:, 0, 1, 0] - y[:, 0, 0, 0]) / (x1 - x0)
  b = y[:, 0, 0, 0] / c - x0
  np.testing.assert_allclose(np.asarray(c[:, None, None, None] * (x + b[
      :, None, None, None])), np.asarray(y), atol=1e-4)
  assert float(c.min()) >= 0.5 - 1e-4 and float(c.max()) <= 2.0 + 1e-4
  assert float(jnp.abs(b).max()) <= 0.4 + 1e-4
  assert float(jnp.abs(y).max()) <= 2.0 * 1.4 + 1e-4
  assert float(jnp.std(c)) > 0.1 and float(jnp.std(b)) > 0.05


@pytest.mark.parametrize('policy', ['xflip', 'xint', 'scale', 'rotate',
                                    'aniso', 'xfrac', 'brightness',
                                    'contrast', 'cutout', _ALL])
def test_differentiable_in_x(policy):
  x = _images()
  w = jax.random.normal(jax.random.key(6), x.shape)
  f = lambda x: jnp.sum(w * augment.augment(x, 1.0, jax.random.key(7),
                                            policy=policy))
  g = jax.jit(jax.grad(f))(x)
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(g).sum()) > 0
  # And the op did something (else the gradient test proves nothing).
  y = augment.augment(x, 1.0, jax.random.key(7), policy=policy)
  assert float(jnp.abs(y - x).max()) > 1e-3


def test_gradient_of_a_rotation_matches_finite_differences():
  x = _images(2, 8)
  v = jax.random.normal(jax.random.key(8), x.shape)
  f = lambda x: jnp.sum(jnp.sin(augment.augment(x, 1.0, jax.random.key(9),
                                                policy='geom')))
  g = jax.grad(f)(x)
  eps = 1e-2
  fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
  assert float(jnp.sum(g * v)) == pytest.approx(float(fd), rel=1e-2)


def test_same_key_same_output_other_key_differs():
  x = _images()
  run = jax.jit(lambda k: augment.augment(x, 0.8, k, policy=_ALL))
  a, b = run(jax.random.key(11)), run(jax.random.key(11))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(a - run(jax.random.key(12))).max()) > 1e-3


def test_draws_do_not_depend_on_the_pixels():
  # Needed by gradient_penalty_augmented: one key, one transform.
  x, z = _images(seed=0), _images(seed=1)
  key = jax.random.key(13)
  aug = lambda v: augment.augment(v, 0.7, key, policy=_ALL)
  u = 0.3
  np.testing.assert_allclose(np.asarray(aug(x + u * (z - x))),
                             np.asarray(aug(x) + u * (aug(z) - aug(x))),
                             atol=1e-5)


def test_each_operation_switches_on_alone_with_its_probability():
  # Every operation reads its own row of one draw: each is on with its
  # probability (rotation before and after aniso each with 1 - sqrt(1 - p))
  # independently of the others (two operations reading one row would be
  # on together), and a policy's other operations leave its draws alone.
  n, p = 20000, 0.3
  key = jax.random.key(21)
  prm = augment.sample_params(key, (n, 16, 16, 1), p, policy=_ALL)
  on = {'flip_drawn': np.asarray(prm.flip) != 0,  # on with p, flips half
        'xint': np.any(np.asarray(prm.xint) != 0, 1),
        'scale': np.asarray(prm.scale) != 1,
        'rotate_pre': np.asarray(prm.rotate_pre) != 0,
        'rotate_post': np.asarray(prm.rotate_post) != 0,
        'aniso': np.asarray(prm.aniso) != 1,
        'xfrac': np.any(np.asarray(prm.xfrac) != 0, 1),
        'brightness': np.asarray(prm.brightness) != 0,
        'contrast': np.asarray(prm.contrast) != 1,
        'cutout': np.asarray(prm.cutout_size) > 0}
  p_rot = 1 - np.sqrt(1 - p)
  expected = dict.fromkeys(on, p)
  expected.update(flip_drawn=p / 2, rotate_pre=p_rot, rotate_post=p_rot)
  # xint rounds shifts of under half a pixel to none: 1/16 of them at 16 px.
  expected['xint'] = p * (1 - (0.5 / (0.125 * 16)) ** 2)
  for k, v in on.items():
    assert abs(v.mean() - expected[k]) < 0.015, k
  names = list(on)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      both = (on[a] & on[b]).mean()
      assert abs(both - expected[a] * expected[b]) < 0.01, (a, b)
  # Values: no two share a random number, and each keeps its range.
  pre, post = np.asarray(prm.rotate_pre), np.asarray(prm.rotate_post)
  both_rot = on['rotate_pre'] & on['rotate_post']
  assert both_rot.sum() > 100 and np.all(pre[both_rot] != post[both_rot])
  top = np.radians(augment.Strengths().rotate_max)
  assert np.abs(pre).max() <= top and np.abs(post).max() <= top
  assert abs(np.corrcoef(pre[both_rot], post[both_rot])[0, 1]) < 0.1
  centre = np.asarray(prm.cutout_center)
  assert centre.min() >= 0 and centre.max() < 1
  np.testing.assert_allclose(centre.mean(0), 0.5, atol=0.01)
  assert abs(np.corrcoef(centre.T)[0, 1]) < 0.05
  alone = augment.sample_params(key, (n, 16, 16, 1), p, policy='scale')
  np.testing.assert_array_equal(np.asarray(alone.scale),
                                np.asarray(prm.scale))
  assert np.all(np.asarray(alone.aniso) == 1)


def _count_primitive(jaxpr, name: str) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == name
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else [v]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          n += _count_primitive(sub.jaxpr, name)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          n += _count_primitive(sub, name)
  return n


def test_a_draw_is_two_random_number_calls():
  # Each random-number call is a chain of small kernels, and the training
  # loop draws several times an iteration: with one call per operation and
  # value (20 for this policy) the draws were half of the training
  # program's fusions at 4x4 on the CPU.
  jaxpr = jax.make_jaxpr(lambda k, p: augment.sample_params(
      k, (8, 16, 16, 1), p, policy=_ALL))(jax.random.key(0), 0.5).jaxpr
  assert _count_primitive(jaxpr, 'random_bits') == 2


def test_unknown_policy_raises():
  with pytest.raises(ValueError, match='rotate90'):
    augment.augment(_images(), 0.5, jax.random.key(0), policy='bgc,rotate90')


def test_p_half_keeps_the_batch_statistics():
  # Non-leaking sanity: the augmented batch of one head slice keeps its
  # mean and spread. Expected: -0.015 +- 0.01 over keys (E[c] ~ 1.05 of
  # the contrast scales a mostly-air mean of -0.64); filling with 0
  # (mid-grey) instead of air gives +0.12, an uncentred brightness its mean.
  x = jnp.asarray(np.repeat(_phantom(), 512, 0))
  y = augment.augment(x, 0.5, jax.random.key(14), policy='bgc')
  assert abs(float(y.mean() - x.mean())) < 0.05
  assert 0.9 < float(y.std() / x.std()) < 1.1
  assert float(jnp.abs(y - x).max()) > 0.5   # it did augment


@pytest.mark.parametrize('rt, expected', [(0.9, 0.3 + 0.0128),
                                          (0.2, 0.3 - 0.0128),
                                          (0.6, 0.3)])
def test_ada_adjust_step(rt, expected):
  # 64 images at 5 kimg per unit: 64 / 5000 = 0.0128.
  p = augment.ada_adjust(jnp.float32(0.3), jnp.float32(rt), target=0.6,
                         num_images=64, speed_kimg=5.0)
  assert float(p) == pytest.approx(expected, abs=1e-7)


def test_ada_adjust_clips():
  up = augment.ada_adjust(0.999, 1.0, num_images=64, speed_kimg=5.0)
  down = augment.ada_adjust(0.001, -1.0, num_images=64, speed_kimg=5.0)
  assert float(up) == 1.0 and float(down) == 0.0
  assert float(augment.ada_adjust(0.5, 1.0, num_images=1000,
                                  speed_kimg=500.0)) == pytest.approx(0.502)


def test_rt_hand_computed():
  acc = augment.rt_update(jnp.zeros(2), jnp.array([1.0, 2.0, -1.0]))
  np.testing.assert_array_equal(np.asarray(acc), [1.0, 3.0])
  # With fakes the boundary is the midpoint of the means: (0.5 - 3) / 2.
  acc = augment.rt_update(acc, jnp.array([1.0, 2.0, -1.5]),
                          jnp.array([-3.0, -3.0]))
  np.testing.assert_array_equal(np.asarray(acc), [2.0, 6.0])
  assert float(augment.rt_value(acc)) == pytest.approx(1 / 3)
  assert float(augment.rt_value(jnp.zeros(2))) == 0.0


def test_rt_with_fakes_ignores_the_critic_offset():
  # A WGAN critic is defined up to a constant; r_t must not move with it.
  d_real = jax.random.normal(jax.random.key(15), (32,)) + 1.0
  d_fake = jax.random.normal(jax.random.key(16), (32,)) - 1.0
  rts = [float(augment.rt_value(augment.rt_update(
      jnp.zeros(2), d_real + s, d_fake + s))) for s in (-5.0, 0.0, 7.0)]
  assert rts[0] == rts[1] == rts[2] > 0.5


def test_ada_update_uses_the_count_and_resets():
  acc = augment.rt_update(jnp.zeros(2), jnp.ones(16))
  acc = augment.rt_update(acc, jnp.ones(16))      # rt = 1 over 32 images
  p, acc = augment.ada_update(jnp.float32(0.0), acc, target=0.6,
                              speed_kimg=1.0)
  assert float(p) == pytest.approx(0.032)
  np.testing.assert_array_equal(np.asarray(acc), [0.0, 0.0])
  p2, _ = augment.ada_update(p, acc, speed_kimg=1.0)   # empty: unchanged
  assert float(p2) == float(p)


def test_jit_with_traced_p_and_scan():
  # p is traced: one compilation serves every p (e.g. inside lax.scan).
  x = _images()

  def body(carry, k):
    p, acc = carry
    y = augment.augment(x, p, k)
    acc = augment.rt_update(acc, y.mean(axis=(1, 2, 3)) + 1.0)
    p, acc = augment.ada_update(p, acc, speed_kimg=0.1)
    return (p, acc), y.mean()

  keys = jax.random.split(jax.random.key(17), 4)
  (p, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, keys))(
      (jnp.float32(0.0), jnp.zeros(2)))
  assert float(p) == pytest.approx(4 * 6 / 100)
