"""WGAN-GP losses of PGGAN (Gulrajani et al. 2017; Karras et al. 2018, A.1).

Pure functions of critic scores / a critic callable; no model state. Scores
are float32 whatever the compute dtype.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def gradient_penalty(critic: Callable[[jax.Array], jax.Array],
                     reals: jax.Array, fakes: jax.Array, key: jax.Array,
                     target: float = 1.0) -> jax.Array:
  """Per-sample penalty (||grad_x D(x_hat)||_2 - target)^2, shape [N].

  x_hat = reals + u * (fakes - reals), u ~ U[0, 1) per sample. The gradient
  is jax.grad of sum_i D(x_hat_i) w.r.t. x_hat, as the official code does
  (tf.gradients of reduce_sum); the norm is over H, W, C of each sample.
  """
  u = jax.random.uniform(key, (reals.shape[0],) + (1,) * (reals.ndim - 1),
                         dtype=jnp.float32)
  mixed = reals + (fakes - reals) * u
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(mixed)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.astype(jnp.float32)),
                           axis=tuple(range(1, grads.ndim))))
  return jnp.square(norms - target)


def d_wgan_gp_loss(real_scores: jax.Array, fake_scores: jax.Array,
                   penalty: jax.Array, *, gp_lambda: float = 10.0,
                   gp_target: float = 1.0,
                   drift: float = 0.001) -> tuple[jax.Array, dict]:
  """Critic loss, averaged over the batch:

    L_D = E[D(G(z))] - E[D(x)]
          + lambda / target^2 * E[(||grad D(x_hat)|| - target)^2]
          + eps_drift * E[D(x)^2]

  with lambda = 10, target = 1, eps_drift = 0.001 in the paper. `penalty` is
  the per-sample output of `gradient_penalty`. Returns (loss, metrics) with
  the Wasserstein estimate wdist = E[D(x)] - E[D(G(z))].
  """
  wdist = jnp.mean(real_scores) - jnp.mean(fake_scores)
  gp = jnp.mean(penalty)
  drift_term = jnp.mean(jnp.square(real_scores))
  loss = -wdist + gp * (gp_lambda / gp_target ** 2) + drift * drift_term
  return loss, {'d/loss': loss, 'd/wdist': wdist, 'd/gp': gp,
                'd/drift': drift_term}


def g_wgan_loss(fake_scores: jax.Array) -> jax.Array:
  """Generator loss L_G = -E[D(G(z))]."""
  return -jnp.mean(fake_scores)
