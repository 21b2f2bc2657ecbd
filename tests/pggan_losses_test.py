"""Tests for pggan_jax.losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
