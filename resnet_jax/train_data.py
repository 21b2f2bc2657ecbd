"""The classifier's training batches: drawn on the device, or streamed by grain.

`config.data_on_device`:
  'auto'  on the device when one process runs and the fold's training
          images and the arm's synthetic images (uint8) fit in
          `config.data_device_max_mb`;
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

Several steps run per dispatch (`train.train_steps`, a `fori_loop`), so a
fast accelerator is not waiting on Python; on the CPU one step per dispatch
(XLA:CPU runs convolutions inside a loop body much slower, jax-ml/jax#12868).
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


def choose_mode(config: ml_collections.ConfigDict, nbytes: int) -> str:
  """'device' or 'stream' from config.data_on_device (see the module doc);
  nbytes: the uint8 images the device would hold."""
  setting = config.get('data_on_device', 'no')
  if setting not in MODES:
    raise UserInputError(f'config.data_on_device={setting!r} is not one of '
                         f'{list(MODES)}')
  if setting == 'no':
    return 'stream'
  if jax.process_count() > 1:
    if setting == 'yes':
      raise UserInputError(
          'config.data_on_device=yes needs one process (each of the '
          f'{jax.process_count()} reads its own slice of the data): use no '
          'or auto')
    return 'stream'
  if setting == 'yes' or nbytes <= config.data_device_max_mb * 2**20:
    return 'device'
  return 'stream'


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """Steps per compiled call: config.steps_per_dispatch, 0 = auto (1 on the
  CPU, 16 elsewhere)."""
  if config.get('steps_per_dispatch', 0):
    return int(config.steps_per_dispatch)
  return 1 if jax.default_backend() == 'cpu' else 16


def _interleave(j: jax.Array, ratio: float):
  """Stream positions j -> (is_synthetic, real index, synthetic index).

  The indices count the real / synthetic positions before j, so for the
  position's own kind they are its index in that stream, and for B
  consecutive positions they lie in a window of B + 1 values.
  """
  if not ratio:
    return jnp.zeros(j.shape, bool), j, jnp.zeros_like(j)
  jf = j.astype(jnp.float32)
  before = jnp.floor(jf * ratio).astype(jnp.int32)  # synthetic before j
  upto = jnp.floor((jf + 1) * ratio).astype(jnp.int32)
  return upto > before, j - before, before


def _epoch_order(key: jax.Array, k: jax.Array, n: int, spans: int):
  """Index into n images of stream positions k (epochs of permutations).

  The positions lie within `spans` consecutive epochs from the first one's;
  only those epochs' permutations are drawn.
  """
  first = k.min() // n
  epochs = first + jnp.arange(spans)
  perms = jax.vmap(lambda e: jax.random.permutation(
      jax.random.fold_in(key, e), n))(epochs)
  return perms[k // n - first, k % n]


@dataclasses.dataclass(frozen=True)
class Draw:
  """Batch `step` of an arm's stream: a static (hashable) argument of
  `train.train_steps`; the images and the seed's key are its data."""
  batch_size: int
  num_real: int
  num_synthetic: int
  ratio: float
  # (flip_prob, rotate_deg, translate, zoom, brightness, contrast), or ()
  # for no classic augmentation.
  augment: tuple[float, ...]
  sharding: jax.sharding.NamedSharding

  def __call__(self, data: dict, step: jax.Array) -> dict:
    b = self.batch_size
    j = step * b + jnp.arange(b, dtype=jnp.int32)
    synthetic, k_real, k_synthetic = _interleave(j, self.ratio)
    key = data['key']
    # B + 1 consecutive indices span at most ceil(B / n) + 1 epochs.
    real = _epoch_order(jax.random.fold_in(key, _REAL), k_real,
                        self.num_real, math.ceil(b / self.num_real) + 1)
    images = data['real'][real]
    labels = data['real_labels'][real]
    if self.num_synthetic:
      fake = _epoch_order(jax.random.fold_in(key, _SYNTHETIC), k_synthetic,
                          self.num_synthetic,
                          math.ceil(b / self.num_synthetic) + 1)
      s = synthetic[:, None, None, None]
      images = jnp.where(s, data['synthetic'][fake], images)
      labels = jnp.where(synthetic, data['synthetic_labels'][fake], labels)
    x = images.astype(jnp.float32) * (1 / 127.5) - 1.0
    if self.augment:
      x = classic_augment(x, jax.vmap(lambda i: jax.random.fold_in(
          jax.random.fold_in(key, _AUGMENT), i))(j), self.augment)
    batch = {'image': x, 'label': labels.astype(jnp.int32)}
    return jax.sharding.reshard(batch, self.sharding)


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
                    params: tuple[float, ...]) -> jax.Array:
  """transforms.Augment on the device: NHWC float in [-1, 1], a key each."""
  u = jax.vmap(lambda k: jax.random.uniform(k, (7,)))(keys)
  return apply_classic(x, u, params)


def apply_classic(x: jax.Array, u: jax.Array,
                  params: tuple[float, ...]) -> jax.Array:
  """transforms.Augment's maps for its uniform draws u [N, 7].

  Flip with probability flip_prob; rotation uniform in +-rotate_deg, zoom
  uniform in 1 +- zoom and translation uniform in +-translate of the side,
  about the centre (bilinear, -1 outside); contrast about -1 uniform in
  1 +- contrast, then brightness uniform in +-brightness, clipped.
  """
  flip_prob, rotate_deg, translate, zoom, brightness, contrast = params
  n, h, w, _ = x.shape
  sym = 2 * u - 1
  prm = augment_lib.identity_params(n)._replace(
      flip=(u[:, 0] < flip_prob).astype(jnp.float32),
      rotate_pre=sym[:, 1] * math.radians(rotate_deg),
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


def nbytes(prepared, config: ml_collections.ConfigDict,
           data_kwargs: dict) -> int:
  """The uint8 bytes of the arm's real and synthetic training images."""
  data = config.data
  count = len(pipeline.select_indices(prepared, int(data.fold), 'train',
                                      int(data.class_filter)))
  if _uses_synthetic(data_kwargs):
    count += sum(len(v) for v in pipeline.synthetic_files(
        data_kwargs['synthetic_dir'], prepared.class_names,
        _classes(prepared, data)).values())
  return count * int(data.resolution) ** 2 * prepared.channels


def load(prepared, config: ml_collections.ConfigDict,
         data_kwargs: dict) -> dict:
  """Host arrays of the arm's stream: {'real', 'real_labels', 'synthetic',
  'synthetic_labels'}, uint8 images at config.data.resolution."""
  data = config.data
  images, labels, _ = pipeline.load_arrays(
      prepared, data, role='train', uint8=True)
  out = {'real': images, 'real_labels': labels}
  if _uses_synthetic(data_kwargs):
    synth = pipeline.load_synthetic(
        data_kwargs['synthetic_dir'], prepared.class_names,
        _classes(prepared, data), int(data.resolution), prepared.channels)
    out['synthetic'] = np.stack([e['image'] for e in synth])
    out['synthetic_labels'] = np.array([e['label'] for e in synth], np.int32)
  else:  # never read: Draw.num_synthetic = 0
    out['synthetic'] = images[:1]
    out['synthetic_labels'] = labels[:1]
  return out


def to_device(host: dict, seed: int, mesh) -> dict:
  """The arrays replicated over `mesh`, with the seed's key."""
  rep = sharding.replicated(mesh)
  out = {k: jax.device_put(v, rep) for k, v in host.items()}
  out['key'] = jax.device_put(jax.random.key(seed), rep)
  return out


def make_draw(config: ml_collections.ConfigDict, host: dict,
              data_kwargs: dict, mesh) -> Draw:
  ratio = (float(data_kwargs['synthetic_ratio'])
           if _uses_synthetic(data_kwargs) else 0.0)
  return Draw(batch_size=int(config.batch_size),
              num_real=len(host['real']),
              num_synthetic=len(host['synthetic']) if ratio else 0,
              ratio=ratio,
              augment=augment_params(data_kwargs['augment']),
              sharding=sharding.data_sharding(mesh))
