"""Tests for pggan_jax.losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pggan_jax import augment
from pggan_jax import diffaug
from pggan_jax import losses


def test_gradient_penalty_of_linear_critic_is_analytic():
  w = jax.random.normal(jax.random.key(0), (4, 4, 1))
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3)) + 3.0
  reals = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
  fakes = jax.random.normal(jax.random.key(2), (6, 4, 4, 1))
  pen = losses.gradient_penalty(critic, reals, fakes, jax.random.key(3))
  expected = (np.linalg.norm(np.asarray(w)) - 1.0) ** 2
  np.testing.assert_allclose(np.asarray(pen), np.full(6, expected), rtol=1e-5)
  pen2 = losses.gradient_penalty(critic, reals, fakes, jax.random.key(3),
                                 target=2.0)
  np.testing.assert_allclose(np.asarray(pen2),
                             (np.linalg.norm(np.asarray(w)) - 2.0) ** 2,
                             rtol=1e-5)


def test_gradient_penalty_uses_interpolates():
  # D(x) = 0.5 * sum(x^2): grad = x_hat, so the penalty depends on u.
  critic = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3))
  reals = jnp.zeros((3, 2, 2, 1))
  fakes = jnp.ones((3, 2, 2, 1))
  key = jax.random.key(7)
  u = jax.random.uniform(key, (3, 1, 1, 1))
  expected = (np.asarray(u).reshape(3) * 2.0 - 1.0) ** 2   # ||u * 1|| = 2u
  np.testing.assert_allclose(
      np.asarray(losses.gradient_penalty(critic, reals, fakes, key)),
      expected, rtol=1e-5)


def test_d_loss_hand_computed():
  real = jnp.array([1.0, 3.0])
  fake = jnp.array([0.0, -2.0])
  pen = jnp.array([0.25, 0.75])
  loss, m = losses.d_wgan_gp_loss(real, fake, pen)
  # -(2 - (-1)) + 10 * 0.5 + 0.001 * (1 + 9) / 2
  assert float(loss) == pytest.approx(-3.0 + 5.0 + 0.005)
  assert float(m['d/wdist']) == pytest.approx(3.0)
  assert float(m['d/gp']) == pytest.approx(0.5)


def test_g_loss():
  assert float(losses.g_wgan_loss(jnp.array([1.0, 2.0]))) == -1.5


def _small_critic():
  """A nonlinear critic, so the penalty depends on where it is taken."""
  w1 = jax.random.normal(jax.random.key(20), (8 * 8, 16)) / 8.0
  w2 = jax.random.normal(jax.random.key(21), (16,))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def test_augmented_penalty_at_p0_equals_plain_penalty():
  critic = _small_critic()
  reals = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1), minval=-1.0)
  fakes = jax.random.uniform(jax.random.key(2), (5, 8, 8, 1), minval=-1.0)
  aug = lambda x, k: augment.augment(x, 0.0, k, policy='bgc,cutout')
  key = jax.random.key(3)
  np.testing.assert_array_equal(
      np.asarray(losses.gradient_penalty_augmented(critic, reals, fakes, key,
                                                   aug)),
      np.asarray(losses.gradient_penalty(critic, reals, fakes, key)))
  # ... and differs once the augmentation is on.
  aug1 = lambda x, k: augment.augment(x, 1.0, k, policy='bgc,cutout')
  assert not np.allclose(
      losses.gradient_penalty_augmented(critic, reals, fakes, key, aug1),
      losses.gradient_penalty(critic, reals, fakes, key))


_AUGMENTS = {
    'ada_bgc_cutout': lambda x, k: augment.augment(x, 0.8, k,
                                                   policy='bgc,cutout'),
    'diffaugment': lambda x, k: diffaug.diff_augment(
        x, k, 'color,translation,cutout'),
    # Every operation on its own, always applied: the equality below holds
    # only for a T affine in x for a fixed draw (the penalty's segments
    # are mapped to segments), so an operation that is not (a clip, a
    # gamma) fails here.
    **{f'ada_{op}': (lambda op: lambda x, k: augment.augment(
        x, 1.0, k, policy=op))(op) for op in augment.OPS},
    **{f'diffaugment_{pol}': (lambda pol: lambda x, k: diffaug.diff_augment(
        x, k, pol))(pol) for pol in diffaug._POLICIES},  # pylint: disable=protected-access
}


@pytest.mark.parametrize('aug', _AUGMENTS.values(), ids=_AUGMENTS.keys())
def test_augmented_penalty_uses_one_transform_for_both_ends(aug):
  # = the plain penalty between T(reals) and T(fakes), the same draw T.
  critic = _small_critic()
  reals = jax.random.uniform(jax.random.key(4), (5, 8, 8, 1), minval=-1.0)
  fakes = jax.random.uniform(jax.random.key(5), (5, 8, 8, 1), minval=-1.0)
  key = jax.random.key(6)
  kt = jax.random.fold_in(key, 1)
  np.testing.assert_allclose(
      np.asarray(losses.gradient_penalty_augmented(critic, reals, fakes, key,
                                                   aug)),
      np.asarray(losses.gradient_penalty(critic, aug(reals, kt),
                                         aug(fakes, kt), key)),
      rtol=1e-4, atol=1e-6)


def test_augmented_penalty_is_taken_at_the_critics_input():
  # T(x) = 2x, linear critic w: grad w.r.t. T(x) has norm ||w||; through T
  # it would be 2 ||w||.
  w = jax.random.normal(jax.random.key(7), (4, 4, 1))
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  reals = jnp.zeros((3, 4, 4, 1))
  fakes = jnp.ones((3, 4, 4, 1))
  pen = losses.gradient_penalty_augmented(critic, reals, fakes,
                                          jax.random.key(8),
                                          lambda x, k: 2.0 * x)
  np.testing.assert_allclose(np.asarray(pen),
                             (np.linalg.norm(np.asarray(w)) - 1.0) ** 2,
                             rtol=1e-5)
