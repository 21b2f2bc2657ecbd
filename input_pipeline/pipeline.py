"""grain input pipelines over a `PreparedData`.

    it = create_iterator(prepared, config.data, role='train', resolution=64,
                         batch_size=32, seed=0)
    batch = next(it)  # {'image': float32 [B,R,R,C] in [-1,1], 'label': int32}
    state = it.get_state(); ...; it.set_state(state)

Training: `MapDataset.source -> seed -> shuffle -> repeat -> map(Resize)
[-> mix with synthetic images] -> random_map(Augment) | map(ToFloat) ->
batch(drop_remainder=True) -> to_iter_dataset [-> mp_prefetch]`.
Each process reads its own slice of the split (jax.process_index/count).
"""

import os

from absl import flags
from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from input_pipeline import preprocess
from input_pipeline import transforms
from input_pipeline.dataset import PreparedData
from input_pipeline.errors import UserInputError


def _pick(value, default):
  return default if value is None else value


def _check_resolution(prepared: PreparedData, resolution: int) -> None:
  if not 1 <= resolution <= prepared.storage_size:
    raise UserInputError(
        f'resolution {resolution} must be in [1, config.data.storage_size='
        f'{prepared.storage_size}]')


def select_indices(prepared: PreparedData, fold: int, role: str,
                   class_filter: int) -> np.ndarray:
  """Record indices of `role` in `fold`, of one class if class_filter >= 0
  (UserInputError for a class_filter that names no class)."""
  idx = prepared.indices(fold, role)
  if not -1 <= class_filter < len(prepared.class_names):
    raise UserInputError(
        f'config.data.class_filter={class_filter} is not -1 or a label in '
        f'[0, {len(prepared.class_names)})')
  if class_filter >= 0:
    idx = idx[prepared.labels[idx] == class_filter]
  return idx


class _Subset:
  """A picklable random-access view of `source` at `indices`."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    ex = self._source[self._indices[i]]
    return {'image': ex['image'], 'label': ex['label']}


def synthetic_files(synthetic_dir: str, class_names: list[str],
                    labels: list[int]) -> dict[int, list[str]]:
  """label -> sorted PNG paths in DIR/<class_name>/, for each of `labels`.

  Some classes may have no folder (one GAN per class, sampled for some
  classes only): they get []. A folder that exists but holds no PNG, or no
  images for any of `labels`, is an error naming the folder.
  """
  if not os.path.isdir(synthetic_dir):
    raise UserInputError(
        f'config.data.synthetic_dir: {synthetic_dir} is not a directory')
  out = {}
  for label in labels:
    name = class_names[label]
    folder = os.path.join(synthetic_dir, name)
    if not os.path.isdir(folder):
      out[label] = []
      continue
    names = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith('.png') and not f.startswith('.'))
    if not names:
      raise UserInputError(f'config.data.synthetic_dir: {folder} (class '
                           f'{name!r}) has no PNG images')
    out[label] = [os.path.join(folder, f) for f in names]
  if not any(out.values()):
    wanted = ', '.join(repr(class_names[label]) for label in labels)
    raise UserInputError(
        f'config.data.synthetic_dir: {synthetic_dir} has no class folder '
        f'with PNG images (looked for {wanted}: DIR/<class name>/*.png, as '
        'configs/sample.py writes for a one-class or conditional GAN)')
  return out


def load_synthetic(synthetic_dir: str, class_names: list[str],
                   labels: list[int], resolution: int,
                   channels: int) -> list[dict]:
  """Reads DIR/<class_name>/*.png for `labels` -> uint8 examples.

  Classes without a folder contribute nothing (see `synthetic_files`).
  Warns once if images smaller than `resolution` are upsampled.
  """
  out = []
  small = []
  for label, paths in synthetic_files(synthetic_dir, class_names,
                                      labels).items():
    for path in paths:
      x, meta = preprocess.load_square(path, resolution)
      if max(meta['width'], meta['height']) < resolution:
        small.append((path, meta['width'], meta['height']))
      if channels > 1:
        x = np.repeat(x, channels, axis=-1)
      out.append({'image': x, 'label': np.int32(label)})
  if small:
    path, w, h = small[0]
    logging.warning(
        '%d of %d synthetic images in %s are smaller than the training '
        'resolution %dx%d and are upsampled (e.g. %s is %dx%d): sample a '
        'GAN trained to >= config.data.resolution, or lower it',
        len(small), len(out), synthetic_dir, resolution, resolution, path,
        w, h)
  return out


def synthetic_shares(prepared: PreparedData, synthetic_dir: str,
                     ratio: float, *, fold: int,
                     class_filter: int = -1) -> dict:
  """Per class: synthetic images, their share of the synthetic stream, and
  the expected fraction of that class's training images that are synthetic.

  A fraction `ratio` of the training stream is synthetic, drawn uniformly
  from the synthetic images; so for class c with real share p_c of the
  fold's training images and synthetic share q_c, the fraction of class-c
  training images that are synthetic is r q_c / (r q_c + (1 - r) p_c).
  """
  names = prepared.class_names
  labels = ([class_filter] if class_filter >= 0 else range(len(names)))
  files = synthetic_files(synthetic_dir, names, list(labels))
  total = sum(len(v) for v in files.values())
  real = np.asarray(prepared.labels)[select_indices(prepared, fold, 'train',
                                             class_filter)]
  images, stream, fraction = {}, {}, {}
  for label, paths in files.items():
    q = len(paths) / total
    p = float(np.mean(real == label)) if len(real) else 0.0
    mass = ratio * q + (1 - ratio) * p
    images[names[label]] = len(paths)
    stream[names[label]] = round(q, 4)
    fraction[names[label]] = round(ratio * q / mass, 4) if mass else 0.0
  return {'dir': os.path.abspath(synthetic_dir), 'ratio': float(ratio),
          'images': images, 'share_of_synthetic_stream': stream,
          'synthetic_fraction_per_class': fraction}


def create_iterator(prepared: PreparedData,
                    data: ml_collections.ConfigDict,
                    *,
                    role: str = 'train',
                    resolution: int | None = None,
                    batch_size: int,
                    seed: int = 0,
                    train: bool = True,
                    fold: int | None = None,
                    class_filter: int | None = None,
                    augment: ml_collections.ConfigDict | None = None,
                    synthetic_dir: str | None = None,
                    synthetic_ratio: float | None = None,
                    num_workers: int | None = None) -> grain.DatasetIterator:
  """A grain iterator of numpy batches; see the module docstring.

  train=True shuffles, repeats forever, augments (if augment.enabled), mixes
  synthetic images (if synthetic_dir and synthetic_ratio > 0; DIR/<class>/
  for some or all classes, see `synthetic_shares` for what each class gets)
  and drops the last partial batch; train=False reads the split once, in id
  order, with the last batch possibly smaller. `None` keywords come from `data`.
  `batch_size` is per process.
  """
  resolution = int(_pick(resolution, data.resolution))
  fold = int(_pick(fold, data.fold))
  class_filter = int(_pick(class_filter, data.class_filter))
  augment = _pick(augment, data.augment)
  synthetic_dir = _pick(synthetic_dir, data.synthetic_dir)
  synthetic_ratio = float(_pick(synthetic_ratio, data.synthetic_ratio))
  num_workers = int(_pick(num_workers, data.num_workers))
  _check_resolution(prepared, resolution)
  if batch_size < 1:
    raise UserInputError(f'batch_size={batch_size} must be >= 1')
  if not 0 <= synthetic_ratio < 1:
    raise UserInputError(
        f'config.data.synthetic_ratio={synthetic_ratio} must be in [0, 1)')
  if train and synthetic_ratio > 0 and not synthetic_dir:
    raise UserInputError(
        f'config.data.synthetic_ratio={synthetic_ratio} needs '
        f'config.data.synthetic_dir')
  idx = select_indices(prepared, fold, role, class_filter)
  if jax.process_count() > 1:  # each process reads its own slice
    n = len(idx)
    idx = idx[jax.process_index()::jax.process_count()]
    logging.info('process %d/%d reads %d of the %d %s images',
                 jax.process_index(), jax.process_count(), len(idx), n, role)
  if len(idx) == 0:
    raise UserInputError(
        f'no images for role={role!r}, config.data.fold={fold}, '
        f'config.data.class_filter={class_filter}')
  ds = grain.MapDataset.source(_Subset(prepared.source, idx))
  if train:
    ds = ds.seed(seed).shuffle().repeat()
  ds = ds.map(transforms.Resize(resolution))
  if train and synthetic_dir and synthetic_ratio > 0:
    labels = ([class_filter] if class_filter >= 0
              else list(range(len(prepared.class_names))))
    synth = load_synthetic(synthetic_dir, prepared.class_names, labels,
                           resolution, prepared.channels)
    sds = grain.MapDataset.source(synth).seed(seed + 1).shuffle().repeat()
    ds = grain.MapDataset.mix([ds, sds],
                              weights=[1 - synthetic_ratio, synthetic_ratio])
  if train and augment.enabled:
    ds = ds.random_map(transforms.Augment(augment), seed=seed + 2)
  else:
    ds = ds.map(transforms.ToFloat())
  ds = ds.batch(batch_size, drop_remainder=train)
  # Elements here are whole batches: grain's default read-ahead (500
  # elements) would prepare thousands of images before the first batch.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=2 if num_workers == 0 else 1, prefetch_buffer_size=2))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; outside main.py (tests, notebooks)
      # nothing has parsed them.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def load_arrays(prepared: PreparedData,
                data: ml_collections.ConfigDict,
                *,
                role: str = 'test',
                resolution: int | None = None,
                fold: int | None = None,
                class_filter: int | None = None,
                uint8: bool = False
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """A whole split, in id order: (float32 [N,R,R,C] in [-1,1], int32 [N], ids).

  uint8=True: the images as stored, uint8 [N,R,R,C]. Not sharded by process
  (evaluation sets are small).
  """
  resolution = int(_pick(resolution, data.resolution))
  fold = int(_pick(fold, data.fold))
  class_filter = int(_pick(class_filter, data.class_filter))
  _check_resolution(prepared, resolution)
  idx = select_indices(prepared, fold, role, class_filter)
  c = prepared.channels
  images = np.zeros((len(idx), resolution, resolution, c),
                    np.uint8 if uint8 else np.float32)
  for k, i in enumerate(idx):
    x = preprocess.resize_square(prepared.source[i]['image'], resolution)
    images[k] = x if uint8 else transforms.to_float(x)
  labels = prepared.labels[idx].astype(np.int32)
  return images, labels, [prepared.ids[i] for i in idx]
