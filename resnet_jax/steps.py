"""The classifier's model, optimiser, schedule and jitted steps.

`create_model` / `create_optimizer` / `schedule` build what `init_state`
and the steps take; `bind` gives a model's jitted steps: `train_step` runs
one step on a batch from the host, `train_steps` several per dispatch on
batches drawn on the device (train_data.Draw); `predict` gives
P(positive) for a set of images.
Training a fold around them: resnet_jax/train.py.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from flax import struct

from input_pipeline import sharding
from input_pipeline.errors import UserInputError
from resnet_jax import models

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
OPTIMIZERS = ('sgd', 'adamw')


# ------------------------------------------------------------------ model/opt


def create_model(config: ml_collections.ConfigDict, num_channels: int,
                 num_classes: int = 2, *, seed: int | None = None,
                 registry=None, key: str = 'config') -> nnx.Module:
  """config.model from `registry` (models.MODELS) at config.dtype, seeded
  with `seed` (default config.seed); `key` names the config block in the
  one-line errors."""
  registry = models.MODELS if registry is None else registry
  check_model_keys(config, registry, key)
  return registry[config.model](
      num_classes=num_classes, num_filters=config.num_filters,
      num_channels=num_channels, dtype=_DTYPES[config.dtype],
      # 1x1 convs as dots: same parameters and maths, faster on XLA:CPU.
      pointwise_dot=config.get('pointwise_dot', True),
      stem_pad_channels=config.get('stem_pad_channels', 0),
      max_pool=config.get('max_pool', 'window'),
      rngs=nnx.Rngs(config.seed if seed is None else seed))


def check_model_keys(config: ml_collections.ConfigDict, registry,
                     key: str) -> None:
  """config.model in `registry` and config.dtype known; `key` names the
  config block in the one-line errors."""
  if config.model not in registry:
    raise UserInputError(f'{key}.model={config.model!r} is not one of '
                         f'{sorted(registry)}')
  if config.dtype not in _DTYPES:
    raise UserInputError(f'{key}.dtype={config.dtype!r} is not one of '
                         f'{sorted(_DTYPES)}')


def check_optimizer(config: ml_collections.ConfigDict) -> None:
  if config.optimizer not in OPTIMIZERS:
    raise UserInputError(f'config.optimizer={config.optimizer!r} is not '
                         f'one of {list(OPTIMIZERS)}')


def create_optimizer(
    config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD-Nesterov or AdamW at unit learning rate; weight decay on kernels.

  The learning rate, linear warmup + cosine decay, multiplies the updates
  inside the step (`learning_rate`), from `schedule(config, total_steps)`
  passed as an argument: so its length and peak are traced values, and
  equal optimiser settings give the same (cached) object whatever the
  length. `bind` caches the jitted steps by it, so every run of one process
  with equal model and optimiser settings (a study's arms, folds and
  repeats) reuses one compiled step. The optimiser state keeps its
  schedule step count, so checkpoints keep their layout.
  """
  check_optimizer(config)
  return _optimizer(str(config.optimizer), float(config.momentum),
                    float(config.weight_decay))


@functools.lru_cache(maxsize=32)
def _optimizer(optimizer: str, momentum: float,
               weight_decay: float) -> optax.GradientTransformation:
  unit = lambda count: 1.0  # scaled by `learning_rate` in the step
  # Decay conv/dense kernels, not BatchNorm scales/biases or the head bias.
  mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if optimizer == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        optax.sgd(unit, momentum=momentum, nesterov=True))
  return optax.adamw(unit, weight_decay=weight_decay, mask=mask)


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> dict:
  """The learning-rate schedule's arguments for `total_steps` steps:
  peak config.learning_rate after a linear warmup over
  config.warmup_fraction of the steps, then cosine decay to 0."""
  total_steps = int(total_steps)
  warmup = min(int(round(config.warmup_fraction * total_steps)),
               total_steps - 1)
  return {'peak': np.float32(config.learning_rate),
          'warmup': np.int32(max(warmup, 0)),
          'decay': np.int32(max(total_steps, warmup + 1) - max(warmup, 0))}


def learning_rate(step: jax.Array, sched: dict) -> jax.Array:
  """optax.warmup_cosine_decay_schedule(0, peak, warmup, warmup + decay)
  at `step`, with traced arguments."""
  s = step.astype(jnp.float32)
  warmup = sched['warmup'].astype(jnp.float32)
  decay = sched['decay'].astype(jnp.float32)
  rise = sched['peak'] * s / jnp.maximum(warmup, 1.0)
  t = jnp.clip(s - warmup, 0.0, decay) / decay
  fall = sched['peak'] * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  return jnp.where(s < warmup, rise, fall)


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree, saved by orbax)."""
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
  """-> (graphdef for training, graphdef for eval, TrainState)."""
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats,
                     tx.init(params))
  return graphdef, eval_graphdef, state


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with smoothed one-hot targets.

  targets = (1 - s) * onehot(labels) + s / K ;  loss = -sum(targets * logp).
  """
  k = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def _step(state: TrainState, batch: dict, sched: dict,
          graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
          label_smoothing: float) -> tuple[TrainState, dict]:
  def loss_fn(params, batch_stats):
    # copy=True: fresh Variables at this trace level (BN writes its stats).
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(batch['image'])
    loss = cross_entropy(logits, batch['label'], label_smoothing)
    return loss, (logits, nnx.state(model, nnx.BatchStat))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params, state.batch_stats)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(state.step, sched)
  updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
  return new_state, {'loss': loss, 'accuracy': accuracy}


def _steps(state: TrainState, data: Any, n: jax.Array, sched: dict, *,
           graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
           label_smoothing: float, draw, length: int
           ) -> tuple[TrainState, dict]:
  """n <= length steps in one dispatch, each on `draw(data, state.step)`.

  `draw` is a hashable callable (train_data.Draw): the batch of a step is
  a function of the data on the device and the step, so nothing crosses
  from the host. Returns the state and the steps' metrics, [length] arrays
  whose first n entries are set. length = 1 runs no loop (XLA:CPU runs
  convolutions inside a loop body much slower, jax-ml/jax#12868).
  """
  if length == 1:
    state, m = _step(state, draw(data, state.step), sched, graphdef, tx,
                     label_smoothing)
    return state, jax.tree.map(lambda v: v[None], m)

  def body(i, carry):
    state, ms = carry
    state, m = _step(state, draw(data, state.step), sched, graphdef, tx,
                     label_smoothing)
    return state, jax.tree.map(lambda a, v: a.at[i].set(v), ms, m)

  zeros = {'loss': jnp.zeros((length,)), 'accuracy': jnp.zeros((length,))}
  return jax.lax.fori_loop(0, n, body, (state, zeros))


class Steps(NamedTuple):
  """A model's jitted training steps, its graph and optimiser bound
  (`bind`).

  train_step(state, {'image','label'}, schedule(...)) -> (state, metrics):
    one step on a batch from the host.
  train_steps(state, data, n, schedule(...), *, draw, length)
    -> (state, metrics of [length] arrays): n <= length steps in one
    dispatch, each on `draw(data, state.step)` (`draw` and `length` are
    static).
  Both donate `state`.
  """
  train_step: Callable[..., tuple[TrainState, dict]]
  train_steps: Callable[..., tuple[TrainState, dict]]


@functools.lru_cache(maxsize=16)
def bind(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
         label_smoothing: float) -> Steps:
  """The training steps of the model `graphdef` with optimiser `tx`.

  The graph, optimiser and label smoothing are bound here, once per run,
  rather than passed to jax.jit as static arguments: jax.jit hashes its
  static arguments at every call, and hashing ResNet-50's graph takes
  1.0-1.5 ms on the 2-core CPU, where the whole dispatch of a step from
  the host takes 2.0-2.3 ms bound (fastest calls; benchmarks/resnet_step.py
  --jit_call prints the median, `ms a call`). On an H200 the call with
  static arguments cost 1.2-1.7 ms a step more than the compiled program.
  Equal arguments give the same (cached) Steps, so every run of one
  process with equal model and optimiser settings (a study's arms, folds
  and repeats) reuses its compiled steps.
  """
  def train_step(state, batch, sched):
    return _step(state, batch, sched, graphdef, tx, label_smoothing)

  def train_steps(state, data, n, sched, *, draw, length):
    return _steps(state, data, n, sched, graphdef=graphdef, tx=tx,
                  label_smoothing=label_smoothing, draw=draw, length=length)

  return Steps(
      train_step=jax.jit(train_step, donate_argnames=('state',)),
      train_steps=jax.jit(train_steps, donate_argnames=('state',),
                          static_argnames=('draw', 'length')))


@functools.partial(jax.jit, static_argnames=('graphdef',))
def predict_step(params, batch_stats, images: jax.Array, *,
                 graphdef: nnx.GraphDef) -> jax.Array:
  """Eval-mode P(positive) for a batch of images."""
  model = nnx.merge(graphdef, params, batch_stats)
  return jax.nn.softmax(model(images), axis=-1)[:, 1]


def predict(state: TrainState, eval_graphdef, images: np.ndarray,
            batch_size: int, mesh) -> np.ndarray:
  """P(positive) for all images, padding the last batch (no recompiles).

  Every process passes all `images` and gets all probabilities (with
  several processes, each computes its devices' share, then they gather).
  """
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    x = jax.device_put(sharding.pad_rows(chunk, batch_size),
                       sharding.data_sharding(mesh))
    p = predict_step(state.params, state.batch_stats, x,
                     graphdef=eval_graphdef)
    if jax.process_count() > 1:
      p = multihost_utils.process_allgather(p, tiled=True)
    out.append(np.asarray(p)[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)
