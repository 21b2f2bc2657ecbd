"""WGAN-GP losses of PGGAN (Gulrajani et al. 2017; Karras et al. 2018, A.1).

Pure functions of critic scores / a critic callable; no model state. Scores
are float32 whatever the compute dtype.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def _mix_weights(key: jax.Array, like: jax.Array) -> jax.Array:
  return jax.random.uniform(key, (like.shape[0],) + (1,) * (like.ndim - 1),
                            dtype=jnp.float32)


def _penalty_at(critic: Callable[[jax.Array], jax.Array], points: jax.Array,
                target: float) -> jax.Array:
  """(||grad D(points_i)||_2 - target)^2 per sample, grad w.r.t. points."""
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(points)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.astype(jnp.float32)),
                           axis=tuple(range(1, grads.ndim))))
  return jnp.square(norms - target)


def gradient_penalty(critic: Callable[[jax.Array], jax.Array],
                     reals: jax.Array, fakes: jax.Array, key: jax.Array,
                     target: float = 1.0) -> jax.Array:
  """Per-sample penalty (||grad_x D(x_hat)||_2 - target)^2, shape [N].

  x_hat = reals + u * (fakes - reals), u ~ U[0, 1) per sample. The gradient
  is jax.grad of sum_i D(x_hat_i) w.r.t. x_hat, as the official code does
  (tf.gradients of reduce_sum); the norm is over H, W, C of each sample.
  """
  mixed = reals + (fakes - reals) * _mix_weights(key, reals)
  return _penalty_at(critic, mixed, target)


def gradient_penalty_augmented(
    critic: Callable[[jax.Array], jax.Array], reals: jax.Array,
    fakes: jax.Array, key: jax.Array,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array],
    target: float = 1.0) -> jax.Array:
  """WGAN-GP for a critic that sees augmented images, per sample, [N].

    x_hat = reals + u * (fakes - reals),  u ~ U[0, 1) drawn from `key`
    y_hat = T(x_hat),  T = augment_fn(., jax.random.fold_in(key, 1))
    penalty = (||grad_y D(y_hat)||_2 - target)^2

  `reals` and `fakes` are the *un-augmented* batches; `augment_fn(x, key)`
  is the augmentation the critic's inputs get (ADA's `augment` at the
  current p, or DiffAugment). The gradient is taken w.r.t. the augmented
  point y_hat, the critic's own input, and the two ends of each segment get
  the same transform: every augmentation here is affine in x for a fixed
  draw, so T(x_hat) = T(reals) + u * (T(fakes) - T(reals)). With T the
  identity (ADA at p = 0) this equals `gradient_penalty` exactly.

  Why, against the references:
  - stylegan2-ada-pytorch, training/loss.py, StyleGAN2Loss.run_D augments
    inside D's call and accumulate_gradients ('Dr1') takes R1's gradient
    w.r.t. real_img_tmp, the un-augmented reals, i.e. through T. So does
    data-efficient-gans DiffAugment-stylegan2-pytorch/training/loss.py
    (same structure, DiffAugment in run_D), and, in the TF code,
    DiffAugment-stylegan2/training/loss.py ns_DiffAugment_r1 (used by
    run_low_shot.py), while ns_r1_DiffAugment in the same file (used by
    run_cifar.py, run_ffhq.py) takes it w.r.t. the augmented reals. The
    references' one WGAN-GP, DiffAugment-biggan-imagenet/compare_gan/gans/
    modular_gan.py ModularGAN.create_loss with penalty_lib.wgangp_penalty,
    interpolates independently augmented reals and fakes and takes the
    gradient w.r.t. that interpolate: what `gradient_penalty` on augmented
    batches does.
  - R1 has target 0, and 0 stays 0 under any Jacobian, so through T or
    not is a matter of taste there. WGAN-GP's target is a slope: D is the
    Kantorovich potential of W(T#P_real, T#P_fake), which needs
    ||grad D|| <= 1 in D's input space, at the augmented images. Through
    T the penalty is on ||J_T^T grad_y D||, and J_T changes per draw:
    contrast c in [0.5, 2] scales it by c, cutout zeroes a quarter of it,
    scaling rescales it, so target 1 would ask D for slope 1/c at one y
    and 1/c' at the same y from another draw; no critic satisfies that,
    and the penalty would fight D rather than bound it.
  - The segments: Gulrajani et al. (Prop. 1) justify unit slope on
    segments joining pairs of the optimal coupling of the two
    distributions; independent pairs are their stand-in. One draw T on
    both ends couples T#P_real and T#P_fake validly (T is independent of
    the images) and far more closely to the optimum than independent
    draws: a real shifted left paired with a fake shifted right and
    flipped spans mostly the augmentation difference, and its midpoints
    are double exposures that neither distribution has.
  """
  mixed = reals + (fakes - reals) * _mix_weights(key, reals)
  points = augment_fn(mixed, jax.random.fold_in(key, 1))
  return _penalty_at(critic, points, target)


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
