"""Pure, jitted PGGAN training steps: `d_step`, `g_step`, `ema_update`.

The train state is a dict of pytrees, `{'g', 'd', 'g_ema'}` (nnx.State of
the params) plus `{'g_opt', 'd_opt'}` (optax Adam moments) and, with ADA,
`'aug'` (`init_aug_state`). Graph definitions, the resolution `stage` and
the hyper-parameters are static; the fade-in `alpha` and the learning rate
are traced, so one compilation serves a whole phase. State buffers are
donated.

`train_iterations` composes them into whole training iterations (critic
steps on minibatches drawn on the device, generator step, EMA update), K of
them per dispatch in a `fori_loop`, with metric means accumulated on the
device: the loop in train.py calls only this.
"""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from input_pipeline import sharding
from pggan_jax import augment
from pggan_jax import diffaug
from pggan_jax import layers
from pggan_jax import losses


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Static (hashable) loss, optimizer and loop settings."""
  latent_size: int
  gp_lambda: float = 10.0
  gp_target: float = 1.0
  drift: float = 0.001
  adam_b1: float = 0.0
  adam_b2: float = 0.99
  adam_eps: float = 1e-8
  diffaug: str = ''
  # Critic steps per generator step, and random horizontal flips of reals.
  d_repeats: int = 1
  mirror: bool = False
  # The gradient penalty on every gp_batch_shrink-th pair of the critic's
  # batch only (1 = all of them, the paper).
  gp_batch_shrink: int = 1
  # ADA (augment.py): policy ('' = off), whether p adapts, and how.
  ada_policy: str = ''
  ada_adjust: bool = False
  ada_target: float = 0.6
  ada_speed_kimg: float = 500.0
  ada_interval: int = 4

  @classmethod
  def from_config(cls, config, latent_size: int) -> 'Hparams':
    aug = config.augment
    return cls(latent_size=latent_size, gp_lambda=config.gp_lambda,
               gp_target=config.gp_target, drift=config.drift,
               adam_b1=config.adam_b1, adam_b2=config.adam_b2,
               adam_eps=config.adam_eps, diffaug=config.diffaug,
               d_repeats=config.d_repeats, mirror=config.mirror,
               gp_batch_shrink=config.get('gp_batch_shrink', 1),
               ada_policy=aug.policy if aug.mode != 'off' else '',
               ada_adjust=aug.mode == 'ada', ada_target=aug.target,
               ada_speed_kimg=aug.speed_kimg, ada_interval=aug.interval)

  def adam(self) -> optax.GradientTransformation:
    """Adam without the learning rate, which is applied (traced) by hand."""
    return optax.scale_by_adam(b1=self.adam_b1, b2=self.adam_b2,
                               eps=self.adam_eps)


def init_state(g_params, d_params, hp: Hparams, aug_p: float = 0.0) -> dict:
  """The train state of the module docstring: G_ema a copy of G, fresh Adam
  moments, and ADA's state (starting at p = aug_p) when hp has a policy."""
  adam = hp.adam()
  state = {'g': g_params, 'd': d_params,
           'g_ema': jax.tree.map(jnp.copy, g_params),
           'g_opt': adam.init(g_params), 'd_opt': adam.init(d_params)}
  if hp.ada_policy:
    state['aug'] = init_aug_state(aug_p)
  return state


def init_aug_state(p: float = 0.0) -> dict:
  """ADA state: probability p and the r_t accumulator [sum of signs, n]."""
  return {'p': jnp.float32(p), 'rt_acc': jnp.zeros((2,), jnp.float32)}


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


def _batch_sharded(x: jax.Array) -> jax.Array:
  """Constrains a batch-major array (e.g. latents) to the 'data' axis."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'data' not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, P('data'))


def _augment_fn(hp: Hparams, p):
  """x, key -> augmented x (the critic's view), or None without augmentation.

  ADA (`hp.ada_policy`, probability `p` traced) or DiffAugment; both are
  differentiable in x, so G's gradient flows through them.
  """
  if hp.ada_policy:
    return lambda x, k: augment.augment(x, p, k, policy=hp.ada_policy)
  if hp.diffaug:
    return lambda x, k: diffaug.diff_augment(x, k, hp.diffaug)
  return None


def _aug_p(state: dict, hp: Hparams) -> jax.Array:
  """ADA's p (an argument of the sharded region, not a closure)."""
  return state['aug']['p'] if hp.ada_policy else jnp.float32(0.0)


@functools.partial(jax.jit, donate_argnames=('state',),
                   static_argnames=('g_graph', 'd_graph', 'stage', 'hp'))
def d_step(state: dict, reals: jax.Array, labels: jax.Array, key: jax.Array,
           alpha: jax.Array, lr: jax.Array, *, g_graph, d_graph, stage: int,
           hp: Hparams) -> tuple[dict, dict]:
  """One critic step with the WGAN-GP loss (see losses.d_wgan_gp_loss).

  With augmentation, reals and fakes are augmented independently for the
  scores, and the penalty is `losses.gradient_penalty_augmented` (one draw
  T on both ends of each segment, gradient w.r.t. D's own input; the
  reasons are in its docstring). With ADA, the metrics include 'aug/rt',
  this batch's r_t (augment.rt_update with the fake scores: the WGAN
  critic's real/fake threshold).

  With `hp.gp_batch_shrink` = s > 1 the penalty is taken on every s-th
  (real, fake) pair of the batch only, B / s points (StyleGAN2's
  pl_batch_shrink applied to WGAN-GP). Batches are random, so its mean is
  an unbiased estimate of the whole batch's, and the penalty's forward and
  double-backward pass through D (a third of an iteration's FLOPs at s = 1)
  costs 1 / s. The critic sees those points as one batch: its minibatch-
  stddev groups are drawn from them (train.check_config keeps B / s a
  multiple of the group size, and of the device count).

  Precision: in bfloat16 the critic computes in bf16 but the penalty's
  interpolation (float32 images and weights u) and the gradient norm (of
  the float32-cast gradient) are float32; only the backward pass through D
  is bf16. tests/pggan_steps_test.py checks the bf16 penalty against
  float32 on a fixed batch.
  """
  def grads_fn(g_params, d_params, reals, labels, key, alpha, p):
    aug = _augment_fn(hp, p)
    kz, kgp, kar, kaf = jax.random.split(key, 4)
    z = _batch_sharded(
        jax.random.normal(kz, (reals.shape[0], hp.latent_size)))
    g = nnx.merge(g_graph, g_params)
    fakes = jax.lax.stop_gradient(g(z, labels, alpha, stage=stage))
    reals = fade_reals(reals, alpha)

    def loss_fn(d_params):
      d = nnx.merge(d_graph, d_params)
      critic = lambda x: d(x, labels, alpha, stage=stage)
      every = slice(None, None, hp.gp_batch_shrink)
      gp_critic = lambda x: d(x, labels[every], alpha, stage=stage)
      if aug is None:
        real_scores, fake_scores = critic(reals), critic(fakes)
        penalty = losses.gradient_penalty(
            gp_critic, reals[every], fakes[every], kgp, hp.gp_target)
      else:
        real_scores = critic(aug(reals, kar))
        fake_scores = critic(aug(fakes, kaf))
        penalty = losses.gradient_penalty_augmented(
            gp_critic, reals[every], fakes[every], kgp, aug, hp.gp_target)
      loss, metrics = losses.d_wgan_gp_loss(
          real_scores, fake_scores, penalty, gp_lambda=hp.gp_lambda,
          gp_target=hp.gp_target, drift=hp.drift)
      if hp.ada_policy:
        metrics['aug/rt'] = augment.rt_value(augment.rt_update(
            jnp.zeros((2,), jnp.float32), real_scores, fake_scores))
      return loss, metrics

    return jax.grad(loss_fn, has_aux=True)(d_params)

  grads, metrics = sharding.auto_axes(grads_fn, reals)(
      state['g'], state['d'], reals, labels, key, alpha, _aug_p(state, hp))
  d_params, d_opt = _apply_adam(hp, state['d'], grads, state['d_opt'], lr)
  return dict(state, d=d_params, d_opt=d_opt), metrics


@functools.partial(jax.jit, donate_argnames=('state',),
                   static_argnames=('g_graph', 'd_graph', 'stage', 'hp'))
def g_step(state: dict, labels: jax.Array, key: jax.Array, alpha: jax.Array,
           lr: jax.Array, *, g_graph, d_graph, stage: int,
           hp: Hparams) -> tuple[dict, dict]:
  """One generator step, L_G = -E[D(G(z))] (labels: the batch's labels)."""
  def grads_fn(g_params, d_params, labels, key, alpha, p):
    aug = _augment_fn(hp, p)
    kz, kaug = jax.random.split(key)
    z = _batch_sharded(
        jax.random.normal(kz, (labels.shape[0], hp.latent_size)))
    d = nnx.merge(d_graph, d_params)

    def loss_fn(g_params):
      fakes = nnx.merge(g_graph, g_params)(z, labels, alpha, stage=stage)
      if aug is not None:
        fakes = aug(fakes, kaug)
      return losses.g_wgan_loss(d(fakes, labels, alpha, stage=stage))

    return jax.value_and_grad(loss_fn)(g_params)

  loss, grads = sharding.auto_axes(grads_fn, labels)(
      state['g'], state['d'], labels, key, alpha, _aug_p(state, hp))
  g_params, g_opt = _apply_adam(hp, state['g'], grads, state['g_opt'], lr)
  return dict(state, g=g_params, g_opt=g_opt), {'g/loss': loss}


@functools.partial(jax.jit, donate_argnames=('ema',))
def ema_update(ema, params, decay: jax.Array):
  """ema <- decay * ema + (1 - decay) * params (generator EMA, Gs).

  `decay` is `schedule.ema_beta` of the iteration: a half-life in images.
  """
  return jax.tree.map(lambda e, p: p + (e - p) * decay, ema, params)


def mirror(x: jax.Array, key: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2 (dataset mirroring)."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


def draw_batch(data: dict, j: jax.Array, key: jax.Array, *, batch_size: int,
               mirror_images: bool) -> tuple[jax.Array, jax.Array]:
  """The j-th minibatch of a dispatch: (reals, labels), batch-sharded.

  `data` is either a whole training split kept on the device,
  {'images': [N, R, R, C], 'labels': [N]} (replicated; optionally 'count',
  the number of real images at the front, the rest padding), from which
  `batch_size` images are drawn uniformly with replacement with `key`; or
  the dispatch's streamed batches {'image': [J, B, R, R, C], 'label':
  [J, B]}, of which the j-th is taken. Mirroring draws from `key` too.
  """
  kidx, kflip = jax.random.split(key)
  if 'images' in data:
    idx = jax.random.randint(kidx, (batch_size,), 0,
                             data.get('count', data['images'].shape[0]))
    reals, labels = data['images'][idx], data['labels'][idx]
    mesh = jax.typeof(data['images']).sharding.mesh
    if not mesh.empty:
      with jax.sharding.use_abstract_mesh(mesh):
        reals = jax.sharding.reshard(reals, P('data'))
        labels = jax.sharding.reshard(labels, P('data'))
  else:
    reals, labels = data['image'][j], data['label'][j]
  if mirror_images:
    reals = mirror(reals, kflip)
  return reals, labels


def _ada_accumulate(aug: dict, rt: jax.Array, n: int) -> dict:
  """Adds a critic batch's r_t (weighted by its n images) to the sums."""
  return dict(aug, rt_acc=aug['rt_acc'] + jnp.stack([rt * n,
                                                     jnp.float32(n)]))


def _ada_adjust(aug: dict, step: jax.Array, hp: Hparams) -> dict:
  """Every ada_interval G steps (after the critic steps), adjusts p once."""
  if not hp.ada_adjust:
    return aug
  p, emptied = augment.ada_update(aug['p'], aug['rt_acc'],
                                  target=hp.ada_target,
                                  speed_kimg=hp.ada_speed_kimg)
  now = (step + 1) % hp.ada_interval == 0
  return {'p': jnp.where(now, p, aug['p']),
          'rt_acc': jnp.where(now, emptied, aug['rt_acc'])}


@functools.partial(jax.jit, donate_argnames=('state',),
                   static_argnames=('g_graph', 'd_graph', 'stage', 'hp',
                                    'batch_size'))
def train_iterations(state: dict, data: dict, plan: dict, *, g_graph,
                     d_graph, stage: int, hp: Hparams,
                     batch_size: int) -> tuple[dict, dict]:
  """Runs `plan['n']` training iterations in one dispatch.

  One iteration: `hp.d_repeats` x (draw_batch, d_step), then g_step (on the
  last batch's labels), then ema_update; ADA's r_t accumulates and p is
  adjusted every `hp.ada_interval` iterations. `plan` (traced, so one
  compilation per stage and dispatch length K):
    n            int32, iterations to run, 1 <= n <= K
    step         int32, G step index of the first iteration
    alpha        float32 [K], fade-in weight of each iteration
    ema_beta     float32 [K], EMA decay of each iteration
    lr_d, lr_g   float32 learning rates
    key          PRNG key of the model (fold_in(key, step * (R + 1) + r))
    data_key     PRNG key of minibatches and flips (fold_in(., step*R + r))
  Returns the new state and the means over the n iterations of the d_step
  metrics (per critic step) and g_step metrics (per generator step), plus
  ADA's current p as 'aug/p'.
  """
  reps = hp.d_repeats
  kw = dict(g_graph=g_graph, d_graph=d_graph, stage=stage, hp=hp)

  def one(i, state):
    step = plan['step'] + i
    alpha = plan['alpha'][i]
    d_metrics = []
    for r in range(reps):
      reals, labels = draw_batch(
          data, i * reps + r, jax.random.fold_in(plan['data_key'],
                                                 step * reps + r),
          batch_size=batch_size, mirror_images=hp.mirror)
      k = jax.random.fold_in(plan['key'], step * (reps + 1) + r)
      state, m = d_step(state, reals, labels, k, alpha, plan['lr_d'], **kw)
      if hp.ada_policy:
        state = dict(state, aug=_ada_accumulate(state['aug'], m['aug/rt'],
                                                batch_size))
      d_metrics.append(m)
    if hp.ada_policy:  # once per G step, whatever d_repeats
      state = dict(state, aug=_ada_adjust(state['aug'], step, hp))
    k = jax.random.fold_in(plan['key'], step * (reps + 1) + reps)
    state, g_metrics = g_step(state, labels, k, alpha, plan['lr_g'], **kw)
    state = dict(state, g_ema=ema_update(state['g_ema'], state['g'],
                                         plan['ema_beta'][i]))
    d_mean = jax.tree.map(lambda *v: sum(v) / reps, *d_metrics)
    return state, {**d_mean, **g_metrics}

  def body(i, carry):
    state, sums = carry
    state, m = one(i, state)
    return state, jax.tree.map(jnp.add, sums, m)

  if plan['alpha'].shape[0] == 1:
    # K = 1: no loop. XLA:CPU runs convolutions inside a loop body many
    # times slower than outside one (jax-ml/jax#12868; 15x measured here),
    # so the CPU loop dispatches one fused iteration at a time.
    state, means = one(0, state)
  else:
    # Metric structure from an abstract evaluation of one iteration.
    shapes = jax.eval_shape(lambda s: one(0, s)[1], state)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state, sums = jax.lax.fori_loop(0, plan['n'], body, (state, zeros))
    means = jax.tree.map(lambda s: s / plan['n'], sums)
  if hp.ada_policy:
    means['aug/p'] = state['aug']['p']
  return state, means


@functools.partial(jax.jit, static_argnames=('g_graph', 'stage'))
def generate(g_params, z: jax.Array, labels: jax.Array, alpha: jax.Array, *,
             g_graph, stage: int) -> jax.Array:
  """Images in [-1, 1] (clipped) from given latents; batch-sharded over the
  mesh when z is (each device generates its slice: G has no batch
  statistics, so every image is the same on any device count)."""
  def run(g_params, z, labels, alpha):
    g = nnx.merge(g_graph, g_params)
    return jnp.clip(g(z, labels, alpha, stage=stage), -1.0, 1.0)
  spec = jax.typeof(z).sharding.spec
  if spec and spec[0] == 'data':
    run = sharding.auto_axes(run, z, out_spec=P('data'))
  return run(g_params, z, labels, alpha)
