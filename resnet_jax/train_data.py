"""The classifier's training batches: drawn on the device, or streamed by grain.

`config.data_on_device`:
  'auto'  on the device when one process runs and the fold's training
          images (uint8, padded to a power of two) fit in
          `config.data_device_max_mb`; a 'gan' arm's synthetic images come
          on top, so all arms of a cell choose alike;
  'yes'   on the device (an error with several processes);
  'no'    streamed by the grain pipeline (`pipeline.create_iterator`).

On the device the images are loaded once (uint8, at the training
resolution, replicated over the mesh) and every batch is a pure function of
(seed, step), so a resumed run draws exactly what an uninterrupted one does
and the checkpoint needs no iterator state. The stream is the grain
pipeline's, drawn from keys instead of generators:
- real images come in epochs, each a fresh permutation
  (`fold_in(key_real, epoch)`);
- in a 'gan' arm a fraction r = synthetic_ratio of the stream positions is
  synthetic, interleaved evenly: position j is synthetic iff
  floor((j + 1) r) > floor(j r). Real images keep their order, so every
  arm of a cell sees the same real images in the same order (the paired
  design), and synthetic images come in epochs of permutations too;
- classic augmentation draws the parameters of `transforms.Augment` (flip,
  rotation and zoom about the centre, translation; bilinear, black outside;
  contrast about black, brightness, clip) from `fold_in(key_augment, j)`.

Several steps run per dispatch (`train_steps` of steps.bind, a
`fori_loop`), so a fast accelerator is not waiting on Python; on the CPU
one step per dispatch (XLA:CPU runs convolutions inside a loop body much
slower, jax-ml/jax#12868).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from input_pipeline import pipeline
from input_pipeline import sharding
from input_pipeline.errors import UserInputError
from pggan_jax import augment as augment_lib

MODES = ('auto', 'yes', 'no')
# Independent streams of one seed.
_REAL, _SYNTHETIC, _AUGMENT = 0, 1, 2


# Stream positions (steps x batch) must stay below 2**24, where float32
# stops counting integers exactly (`_interleave`).
MAX_POSITIONS = 2**24


def check_config(config: ml_collections.ConfigDict) -> None:
  """config.data_on_device and config.steps_per_dispatch, before any data
  is read."""
  setting = config.get('data_on_device', 'no')
  if setting not in MODES:
    raise UserInputError(f'config.data_on_device={setting!r} is not one of '
                         f'{list(MODES)}')
  if setting == 'yes' and jax.process_count() > 1:
    raise UserInputError(
        'config.data_on_device=yes needs one process (each of the '
        f'{jax.process_count()} reads its own slice of the data): use no '
        'or auto')
  if config.get('steps_per_dispatch', 0) < 0:
    raise UserInputError('config.steps_per_dispatch must be >= 0 (0 = auto)')


def choose_mode(config: ml_collections.ConfigDict, nbytes: int,
                positions: int = 0) -> str:
  """'device' or 'stream' from config.data_on_device (see the module doc);
  nbytes: the fold's training images on the device (`nbytes`); positions:
  the run's steps x batch size."""
  check_config(config)
  setting = config.get('data_on_device', 'no')
  if setting == 'no' or jax.process_count() > 1:
    return 'stream'
  if positions >= MAX_POSITIONS:
    if setting == 'yes':
      raise UserInputError(
          f'config.data_on_device=yes draws at most {MAX_POSITIONS} images '
          f'on the device, this run shows {positions}: use no or auto')
    return 'stream'
  if setting == 'yes' or nbytes <= config.data_device_max_mb * 2**20:
    return 'device'
  return 'stream'


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """Steps per compiled call: config.steps_per_dispatch, 0 = auto
  (sharding.dispatch_length)."""
  return sharding.dispatch_length(config.get('steps_per_dispatch', 0))


def _interleave(j: jax.Array, ratio: jax.Array):
  """Stream positions j -> (is_synthetic, real index, synthetic index).

  The indices count the real / synthetic positions before j, so for the
  position's own kind they are its index in that stream, and for B
  consecutive positions they lie in a window of B + 1 values. ratio 0:
  all real.
  """
  jf = j.astype(jnp.float32)
  before = jnp.floor(jf * ratio).astype(jnp.int32)  # synthetic before j
  upto = jnp.floor((jf + 1) * ratio).astype(jnp.int32)
  return upto > before, j - before, before


def _epoch_order(key: jax.Array, k: jax.Array, n: jax.Array, size: int,
                 spans: int):
  """Index into the first n of `size` images of stream indices k, in
  epochs of permutations (n traced).

  The indices lie within `spans` consecutive epochs from the first one's;
  only those epochs' permutations are drawn (a sort of random keys, the
  padding's sorted last).
  """
  first = k.min() // n

  def order(e):
    u = jax.random.uniform(jax.random.fold_in(key, e), (size,))
    return jnp.argsort(jnp.where(jnp.arange(size) < n, u, 2.0))

  perms = jax.vmap(order)(first + jnp.arange(spans))
  return perms[k // n - first, k % n]


def _spans(batch_size: int, n: int) -> int:
  """Epochs that B + 1 consecutive indices into n images can span."""
  return math.ceil(batch_size / max(n, 1)) + 1


@dataclasses.dataclass(frozen=True)
class Draw:
  """Batch `step` of an arm's stream: a static (hashable) argument of
  `train_steps` (steps.bind). Everything an arm or fold changes (images,
  counts, synthetic ratio, augmentation) is in its data, so the arms and
  folds of a study share compiled programs (one with synthetic images, one
  without)."""
  batch_size: int
  real_spans: int
  synthetic_spans: int
  sharding: jax.sharding.NamedSharding

  def __call__(self, data: dict, step: jax.Array) -> dict:
    b = self.batch_size
    j = step * b + jnp.arange(b, dtype=jnp.int32)
    synthetic, k_real, k_synthetic = _interleave(j, data['ratio'])
    key = data['key']
    real = _epoch_order(jax.random.fold_in(key, _REAL), k_real,
                        data['num_real'], data['real'].shape[0],
                        self.real_spans)
    fake = _epoch_order(jax.random.fold_in(key, _SYNTHETIC), k_synthetic,
                        data['num_synthetic'], data['synthetic'].shape[0],
                        self.synthetic_spans)
    s = synthetic[:, None, None, None]
    images = jnp.where(s, data['synthetic'][fake], data['real'][real])
    labels = jnp.where(synthetic, data['synthetic_labels'][fake],
                       data['real_labels'][real])
    keys = jax.vmap(lambda i: jax.random.fold_in(
        jax.random.fold_in(key, _AUGMENT), i))(j)
    # Split over the devices before augmenting: each warps its own share
    # (in 'auto' axes, where the compiler propagates the batch sharding).
    images, labels, keys = jax.sharding.reshard(
        (images, labels, keys), self.sharding)

    def augmented(x, keys, params, on):
      x = x.astype(jnp.float32) * (1 / 127.5) - 1.0
      return jax.lax.cond(on, classic_augment, lambda x, *_: x, x, keys,
                          params)

    x = sharding.auto_axes(augmented, images, self.sharding.spec)(
        images, keys, data['augment'], data['augment_on'])
    return {'image': x, 'label': labels.astype(jnp.int32)}


def stream(host: dict, *, batch_size: int, ratio: float,
           augment: tuple[float, ...], seed: int, mesh) -> tuple[Draw, dict]:
  """(Draw, its data on the device) for host uint8 arrays {'real',
  'real_labels'} and, when ratio > 0, {'synthetic', 'synthetic_labels'};
  augment: `augment_params`, () for none."""
  n = len(host['real'])
  pad = lambda x: sharding.pad_rows(x, sharding.padded_count(len(x)))
  if ratio:
    m = len(host['synthetic'])
    synthetic, synthetic_labels = host['synthetic'], host['synthetic_labels']
  else:  # never read
    m, synthetic, synthetic_labels = 1, host['real'][:1], host['real_labels'][:1]
  data = {'real': pad(host['real']), 'real_labels': pad(host['real_labels']),
          'num_real': np.int32(n),
          'synthetic': pad(synthetic),
          'synthetic_labels': pad(synthetic_labels),
          'num_synthetic': np.int32(m), 'ratio': np.float32(ratio),
          'augment': np.array(augment or (0.0,) * 6, np.float32),
          'augment_on': np.bool_(bool(augment))}
  rep = sharding.replicated(mesh)
  data = jax.device_put(data, rep)
  data['key'] = jax.device_put(jax.random.key(seed), rep)
  # Usually 2 each (n >= B), whatever the fold.
  draw = Draw(batch_size=batch_size, real_spans=_spans(batch_size, n),
              synthetic_spans=_spans(batch_size, m) if ratio else 2,
              sharding=sharding.data_sharding(mesh))
  return draw, data


@dataclasses.dataclass(frozen=True)
class IndexDraw:
  """Batch `step` of index and flip arrays made on the host: data =
  {'images' [N, H, W, C], 'labels' [N], 'idx' [S, B], 'flip' [S, B]}."""
  sharding: jax.sharding.NamedSharding

  def __call__(self, data: dict, step: jax.Array) -> dict:
    idx, flip = data['idx'][step], data['flip'][step]
    x = data['images'][idx]
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    batch = {'image': x, 'label': data['labels'][idx]}
    return jax.sharding.reshard(batch, self.sharding)


def classic_augment(x: jax.Array, keys: jax.Array,
                    params: jax.Array) -> jax.Array:
  """transforms.Augment on the device: NHWC float in [-1, 1], a key each;
  params: `augment_params` (traced or not)."""
  u = jax.vmap(lambda k: jax.random.uniform(k, (7,)))(keys)
  return apply_classic(x, u, params)


def apply_classic(x: jax.Array, u: jax.Array, params) -> jax.Array:
  """transforms.Augment's maps for its uniform draws u [N, 7].

  Flip with probability flip_prob; rotation uniform in +-rotate_deg, zoom
  uniform in 1 +- zoom and translation uniform in +-translate of the side,
  about the centre (bilinear, -1 outside); contrast about -1 uniform in
  1 +- contrast, then brightness uniform in +-brightness, clipped.
  """
  flip_prob, rotate_deg, translate, zoom, brightness, contrast = (
      params[i] for i in range(6))
  n, h, w, _ = x.shape
  sym = 2 * u - 1
  prm = augment_lib.identity_params(n)._replace(
      flip=(u[:, 0] < flip_prob).astype(jnp.float32),
      rotate_pre=sym[:, 1] * (rotate_deg * (math.pi / 180)),
      scale=1 + sym[:, 2] * zoom,
      xfrac=sym[:, 3:5] * translate * jnp.array([w, h], jnp.float32))
  x = augment_lib.warp(x, prm, fill=-1.0)
  c = (1 + sym[:, 5] * contrast)[:, None, None, None]
  b = (sym[:, 6] * brightness)[:, None, None, None]
  return jnp.clip((x + 1) * c - 1 + b, -1.0, 1.0)


def augment_params(augment: ml_collections.ConfigDict) -> tuple[float, ...]:
  """Draw.augment for config.data.augment: () when it is off."""
  if not augment.enabled:
    return ()
  return tuple(float(augment[k]) for k in (
      'flip_prob', 'rotate_deg', 'translate', 'zoom', 'brightness',
      'contrast'))


def _uses_synthetic(data_kwargs: dict) -> bool:
  return bool(data_kwargs['synthetic_dir']) and (
      data_kwargs['synthetic_ratio'] > 0)


def _classes(prepared, data: ml_collections.ConfigDict) -> list[int]:
  return ([int(data.class_filter)] if data.class_filter >= 0
          else list(range(len(prepared.class_names))))


def nbytes(prepared, config: ml_collections.ConfigDict) -> int:
  """The device bytes of the fold's training images (uint8, padded).

  Synthetic images are not counted, so every arm of a cell makes the same
  choice and the arms stay paired (same real images, same order).
  """
  data = config.data
  count = len(pipeline.select_indices(prepared, int(data.fold), 'train',
                                      int(data.class_filter)))
  return (sharding.padded_count(count) * int(data.resolution) ** 2
          * prepared.channels)


def load(prepared, config: ml_collections.ConfigDict,
         data_kwargs: dict) -> dict:
  """Host arrays of the arm's stream, uint8 images at config.data.resolution:
  {'real', 'real_labels'}, and {'synthetic', 'synthetic_labels'} when the
  arm mixes synthetic images in."""
  data = config.data
  images, labels, _ = pipeline.load_arrays(
      prepared, data, role='train', uint8=True)
  if not len(images):
    raise UserInputError(
        f'no images for role=\'train\', config.data.fold={data.fold}, '
        f'config.data.class_filter={data.class_filter}')
  out = {'real': images, 'real_labels': labels}
  if _uses_synthetic(data_kwargs):
    synth = pipeline.load_synthetic(
        data_kwargs['synthetic_dir'], prepared.class_names,
        _classes(prepared, data), int(data.resolution), prepared.channels)
    out['synthetic'] = np.stack([e['image'] for e in synth])
    out['synthetic_labels'] = np.array([e['label'] for e in synth], np.int32)
  return out


def make_stream(config: ml_collections.ConfigDict, host: dict,
                data_kwargs: dict, mesh) -> tuple[Draw, dict]:
  """`stream` for an arm: config.batch_size and seed, the arm's ratio and
  classic augmentation."""
  ratio = (float(data_kwargs['synthetic_ratio'])
           if _uses_synthetic(data_kwargs) else 0.0)
  return stream(host, batch_size=int(config.batch_size), ratio=ratio,
                augment=augment_params(data_kwargs['augment']),
                seed=int(config.seed), mesh=mesh)
