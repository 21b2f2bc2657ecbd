"""The PGGAN loop's training images: kept on the device, or streamed by grain.

`config.data_on_device`:
  'auto'  on the device when the training split at the final resolution
          (float32) fits in `config.data_device_max_mb` and needs nothing
          only grain does (classic augmentation, synthetic-image mixing);
  'yes'   on the device (an error when grain is needed);
  'no'    streamed.

On the device the split is loaded once per stage at that stage's resolution
(`pipeline.load_arrays`, the same resize as grain's), padded to a power-of-
two count (so GANs of folds and classes with a few images more or less
share compiled programs and the persistent compilation cache; the real
count is an argument), replicated over the mesh, and `steps.draw_batch`
draws minibatches among the real images (uniform, with replacement)
and mirror flips from `fold_in(data_key, d_step)`, so a resumed run draws
exactly what an uninterrupted one does. Streamed, each dispatch pulls its
`n * d_repeats` batches from a grain iterator (per-process slices, its state
in the checkpoint) and ships them as one [K * d_repeats, B, R, R, C] array.
"""

import grain
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import config as data_config
from input_pipeline import pipeline
from input_pipeline import sharding
from input_pipeline.errors import UserInputError

MODES = ('auto', 'yes', 'no')


def choose_mode(prepared, cfg: ml_collections.ConfigDict,
                num_train: int) -> str:
  """'device' or 'stream' from `config.data_on_device` (see module doc);
  num_train: the training split's image count."""
  setting = cfg.data_on_device
  if setting not in MODES:
    raise UserInputError(f'config.data_on_device={setting!r} is not one of '
                         f'{MODES}')
  needs_grain = [name for name, on in (
      ('config.data.augment.enabled', cfg.data.augment.enabled),
      ('config.data.synthetic_ratio', cfg.data.synthetic_ratio > 0)) if on]
  if setting == 'yes' and needs_grain:
    raise UserInputError(f'config.data_on_device=yes, but {needs_grain[0]} '
                         'needs the grain pipeline')
  if setting == 'no' or needs_grain:
    return 'stream'
  if setting == 'yes':
    return 'device'
  n = sharding.padded_count(num_train)
  r = cfg.model.resolution
  nbytes = n * r * r * prepared.channels * 4
  return 'device' if nbytes <= cfg.data_device_max_mb * 2**20 else 'stream'


class TrainData:
  """Per-stage training data and the arguments of each dispatch."""

  def __init__(self, prepared, cfg: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh, k_max: int):
    self.prepared, self.cfg, self.mesh = prepared, cfg, mesh
    self.num_train = len(pipeline.select_indices(
        prepared, cfg.data.fold, 'train', cfg.data.class_filter))
    self.mode = choose_mode(prepared, cfg, self.num_train)
    self.reps = cfg.d_repeats
    self.k_max = k_max
    self.res = self.batch = None
    self.it = None          # grain iterator (stream)
    self.arrays = None      # {'images', 'labels'} on the device (device)
    self.host = None        # the same images in host memory (device)
    self._swd_cache = {}

  def _replicated(self, x: np.ndarray) -> jax.Array:
    return jax.make_array_from_callback(
        x.shape, sharding.replicated(self.mesh), lambda i: x[i])

  def set_stage(self, res: int, batch: int) -> None:
    """Loads the split at `res` (device) or a fresh iterator (stream)."""
    if (res, batch) == (self.res, self.batch):
      return
    if self.mode == 'device':
      if res != self.res:
        images, labels, _ = pipeline.load_arrays(
            self.prepared, self.cfg.data, role='train', resolution=res,
            fold=self.cfg.data.fold, class_filter=self.cfg.data.class_filter)
        self.host = images
        n = sharding.padded_count(len(images))  # the padding is never drawn
        self.arrays = {
            'images': self._replicated(sharding.pad_rows(images, n)),
            'labels': self._replicated(sharding.pad_rows(labels, n)),
            'count': self._replicated(np.int32(len(images)))}
    else:
      self.it = pipeline.create_iterator(
          self.prepared, self.cfg.data, role='train', resolution=res,
          batch_size=batch // jax.process_count(),
          seed=self.cfg.seed + int(np.log2(res)) - 2, train=True)
    self.res, self.batch = res, batch

  def spec(self, res: int, batch: int) -> dict:
    """Abstract dispatch data at (res, batch), for compiling ahead."""
    c = self.prepared.channels
    if self.mode == 'device':
      n = sharding.padded_count(self.num_train)
      rep = sharding.replicated(self.mesh)
      return {'images': jax.ShapeDtypeStruct((n, res, res, c), np.float32,
                                             sharding=rep),
              'labels': jax.ShapeDtypeStruct((n,), np.int32, sharding=rep),
              'count': jax.ShapeDtypeStruct((), np.int32, sharding=rep)}
    j = self.k_max * self.reps
    sh = NamedSharding(self.mesh, P(None, 'data'))
    return {'image': jax.ShapeDtypeStruct((j, batch, res, res, c),
                                          np.float32, sharding=sh),
            'label': jax.ShapeDtypeStruct((j, batch), np.int32, sharding=sh)}

  def dispatch_args(self, n: int) -> dict:
    """The `data` argument of `steps.train_iterations` for n iterations."""
    if self.mode == 'device':
      return self.arrays
    batches = [next(self.it) for _ in range(n * self.reps)]
    out = {}
    for k in ('image', 'label'):
      # Padded to K iterations, never read: the loop runs n.
      x = sharding.pad_rows(np.stack([np.asarray(b[k]) for b in batches]),
                            self.k_max * self.reps)
      out[k] = jax.make_array_from_process_local_data(
          NamedSharding(self.mesh, P(None, 'data')), x)
    return out

  def save_arg(self):
    if self.mode == 'device':
      return ocp.args.JsonSave({'mode': 'device'})
    return grain.checkpoint.CheckpointSave(self.it)

  def restore_arg(self):
    return grain.checkpoint.CheckpointRestore(self.it)

  def restored(self, it) -> None:
    self.it = it

  def swd_reals(self, res: int, num: int) -> np.ndarray:
    """A fixed set of up to `num` training images at `res` (no flips)."""
    if res not in self._swd_cache:
      n = self.num_train
      m = min(num, n)
      if self.mode == 'device' and res == self.res:
        rng = np.random.default_rng(self.cfg.seed)
        images = self.host[np.sort(rng.permutation(n)[:m])]
      else:
        it = pipeline.create_iterator(
            self.prepared, self.cfg.data, role='train', resolution=res,
            batch_size=m, seed=self.cfg.seed, train=True,
            augment=data_config.get_augment_config(False),
            synthetic_ratio=0.0)
        images = np.asarray(next(it)['image'])
      self._swd_cache = {res: images}
    return self._swd_cache[res]

