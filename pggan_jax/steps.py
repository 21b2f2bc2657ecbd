"""Pure, jitted PGGAN training steps: `d_step`, `g_step`, `ema_update`.

The train state is a dict of pytrees, `{'g', 'd', 'g_ema'}` (nnx.State of
the params) plus `{'g_opt', 'd_opt'}` (optax Adam moments). Graph
definitions, the resolution `stage` and the hyper-parameters are static; the
fade-in `alpha` and the learning rate are traced, so one compilation serves
a whole phase. State buffers are donated.
"""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from pggan_jax import diffaug
from pggan_jax import layers
from pggan_jax import losses


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Static (hashable) loss and optimizer settings."""
  latent_size: int
  gp_lambda: float = 10.0
  gp_target: float = 1.0
  drift: float = 0.001
  adam_b1: float = 0.0
  adam_b2: float = 0.99
  adam_eps: float = 1e-8
  diffaug: str = ''

  @classmethod
  def from_config(cls, config, latent_size: int) -> 'Hparams':
    return cls(latent_size=latent_size, gp_lambda=config.gp_lambda,
               gp_target=config.gp_target, drift=config.drift,
               adam_b1=config.adam_b1, adam_b2=config.adam_b2,
               adam_eps=config.adam_eps, diffaug=config.diffaug)

  def adam(self) -> optax.GradientTransformation:
    """Adam without the learning rate, which is applied (traced) by hand."""
    return optax.scale_by_adam(b1=self.adam_b1, b2=self.adam_b2,
                               eps=self.adam_eps)


def fade_reals(reals: jax.Array, alpha: jax.Array) -> jax.Array:
  """Official FadeLOD: lerp(upsample(avgpool(x)), x, alpha) during fade-in.

  Reals are blurred to the previous resolution as the new layers fade in,
  matching what G can produce at that moment.
  """
  low = layers.upsample2x(layers.downsample2x(reals))
  return low + (reals - low) * alpha


def _apply_adam(hp: Hparams, params, grads, opt_state, lr):
  updates, opt_state = hp.adam().update(grads, opt_state, params)
  params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
  return params, opt_state


def _auto_sharding(fn, like: jax.Array):
  """Runs `fn` with the mesh's axes in 'auto' mode, outputs replicated.

  `make_mesh()` gives Explicit axes (sharding in types), under which
  reshapes of batch-sharded arrays need explicit output shardings. Inside
  the model we let the compiler propagate the batch sharding (data
  parallel) instead; `fn` returns only replicated values (grads, scalars).
  Unsharded inputs (tests, single arrays) call `fn` unchanged.
  """
  mesh = jax.typeof(like).sharding.mesh
  if mesh.empty:
    return fn

  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(fn, axes=mesh.axis_names,
                                    out_sharding=P())(*args)
  return wrapped


def _batch_sharded(x: jax.Array) -> jax.Array:
  """Constrains a batch-major array (e.g. latents) to the 'data' axis."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'data' not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, P('data'))


def _maybe_augment(hp: Hparams, x, key):
  return diffaug.diff_augment(x, key, hp.diffaug) if hp.diffaug else x


@functools.partial(jax.jit, donate_argnames=('state',),
                   static_argnames=('g_graph', 'd_graph', 'stage', 'hp'))
def d_step(state: dict, reals: jax.Array, labels: jax.Array, key: jax.Array,
           alpha: jax.Array, lr: jax.Array, *, g_graph, d_graph, stage: int,
           hp: Hparams) -> tuple[dict, dict]:
  """One critic step with the WGAN-GP loss (see losses.d_wgan_gp_loss)."""
  def grads_fn(g_params, d_params, reals, labels, key, alpha):
    kz, kgp, kar, kaf = jax.random.split(key, 4)
    z = _batch_sharded(
        jax.random.normal(kz, (reals.shape[0], hp.latent_size)))
    g = nnx.merge(g_graph, g_params)
    fakes = jax.lax.stop_gradient(g(z, labels, alpha, stage=stage))
    reals = _maybe_augment(hp, fade_reals(reals, alpha), kar)
    fakes = _maybe_augment(hp, fakes, kaf)

    def loss_fn(d_params):
      d = nnx.merge(d_graph, d_params)
      critic = lambda x: d(x, labels, alpha, stage=stage)
      real_scores, fake_scores = critic(reals), critic(fakes)
      penalty = losses.gradient_penalty(critic, reals, fakes, kgp,
                                        hp.gp_target)
      return losses.d_wgan_gp_loss(real_scores, fake_scores, penalty,
                                   gp_lambda=hp.gp_lambda,
                                   gp_target=hp.gp_target, drift=hp.drift)

    return jax.grad(loss_fn, has_aux=True)(d_params)

  grads, metrics = _auto_sharding(grads_fn, reals)(
      state['g'], state['d'], reals, labels, key, alpha)
  d_params, d_opt = _apply_adam(hp, state['d'], grads, state['d_opt'], lr)
  return dict(state, d=d_params, d_opt=d_opt), metrics


@functools.partial(jax.jit, donate_argnames=('state',),
                   static_argnames=('g_graph', 'd_graph', 'stage', 'hp'))
def g_step(state: dict, labels: jax.Array, key: jax.Array, alpha: jax.Array,
           lr: jax.Array, *, g_graph, d_graph, stage: int,
           hp: Hparams) -> tuple[dict, dict]:
  """One generator step, L_G = -E[D(G(z))] (labels: the batch's labels)."""
  def grads_fn(g_params, d_params, labels, key, alpha):
    kz, kaug = jax.random.split(key)
    z = _batch_sharded(
        jax.random.normal(kz, (labels.shape[0], hp.latent_size)))
    d = nnx.merge(d_graph, d_params)

    def loss_fn(g_params):
      fakes = nnx.merge(g_graph, g_params)(z, labels, alpha, stage=stage)
      fakes = _maybe_augment(hp, fakes, kaug)
      return losses.g_wgan_loss(d(fakes, labels, alpha, stage=stage))

    return jax.value_and_grad(loss_fn)(g_params)

  loss, grads = _auto_sharding(grads_fn, labels)(
      state['g'], state['d'], labels, key, alpha)
  g_params, g_opt = _apply_adam(hp, state['g'], grads, state['g_opt'], lr)
  return dict(state, g=g_params, g_opt=g_opt), {'g/loss': loss}


@functools.partial(jax.jit, donate_argnames=('ema',))
def ema_update(ema, params, decay: jax.Array):
  """ema <- decay * ema + (1 - decay) * params (generator EMA, Gs)."""
  return jax.tree.map(lambda e, p: p + (e - p) * decay, ema, params)


@functools.partial(jax.jit, static_argnames=('g_graph', 'stage'))
def generate(g_params, z: jax.Array, labels: jax.Array, alpha: jax.Array, *,
             g_graph, stage: int) -> jax.Array:
  """Images in [-1, 1] (clipped) from given latents."""
  g = nnx.merge(g_graph, g_params)
  return jnp.clip(g(z, labels, alpha, stage=stage), -1.0, 1.0)
