"""`prepare(config.data, workdir)`: source -> cached TFDS dataset -> splits.

    prepared = prepare(config.data, workdir)
    prepared.source[i]  # {'image': uint8 [S,S,C], 'label': int, 'id': str}
    prepared.indices(fold=0, role='train')

The source folder is scanned and validated first (labels, files), then the
TFDS builder (`builder.py`) preprocesses every image once into array_record
under `data.tfds_dir`, keyed by a fingerprint of the files and parameters.
Duplicate groups come from hashes of a fixed-size rendering of each original
(`splits.image_hashes`, stored with the record), so they and the k-fold
manifest depend on the data and the split settings only, never on
`storage_size`; the manifest is written to `workdir/splits.json`. Volume
sources (nifti, dicom_series) give each slice its patient: folds are grouped
by patient too, and the manifest maps ids to patients (`patients`).
"""

import dataclasses
import hashlib
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import builder
from input_pipeline import files
from input_pipeline import sources
from input_pipeline import splits
from input_pipeline.errors import UserInputError

ROLES = ('train', 'val', 'test', 'all')
# Datasets up to this many stored bytes are also kept in memory: TFDS's
# per-record decoding (~0.4 ms) would otherwise bound the pipeline's rate.
_CACHE_BYTES = 2 << 30


def default_tfds_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'pggan_jax', 'tfds')


class Source:
  """Random access to the stored examples, in id order (picklable)."""

  def __init__(self, data_source, images: np.ndarray | None,
               labels: np.ndarray, ids: list[str]):
    self._ds = data_source
    self._images = images
    self._labels = labels
    self._ids = ids

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    image = (self._images[i] if self._images is not None
             else self._ds[i]['image'])
    return {'image': image, 'label': int(self._labels[i]), 'id': self._ids[i]}

  def __repr__(self) -> str:
    return f'Source(n={len(self)}, in_memory={self._images is not None})'


@dataclasses.dataclass
class PreparedData:
  """A prepared dataset and its split manifest (see module docstring)."""
  name: str
  source: Source
  ids: list[str]
  labels: np.ndarray  # int32 [N]
  class_names: list[str]
  channels: int
  storage_size: int
  manifest: dict
  # Per image, before preprocessing: width, height, Pillow mode.
  original: dict
  fingerprint: str  # of the source files and settings (the cache key)
  data_dir: str
  # sha256 of the ids, labels, class names and stored pixels.
  content_fingerprint: str = ''

  @property
  def split_fingerprint(self) -> str:
    return self.manifest['split_fingerprint']

  @property
  def dataset_key(self) -> str:
    """Names the images and labels (not their storage size or folder)."""
    return dataset_key(self.name, self.ids, self.labels, self.class_names)

  def with_split_seed(self, split_seed: int) -> 'PreparedData':
    """The same data with the folds of another `data.split_seed`.

    Repeated k-fold: each repeat draws its own folds; duplicate groups are
    the same (they depend on the images only).
    """
    m = self.manifest  # made with the same settings but the split seed
    patients = m.get('patients')
    manifest = splits.make_manifest(
        self.ids, self.labels, m['duplicate_groups'], m['num_folds'],
        m['val_fraction'], int(split_seed), m['duplicates_policy'],
        patients=[patients[i] for i in self.ids] if patients else None)
    manifest['fingerprint'] = self.fingerprint
    return dataclasses.replace(self, manifest=manifest)

  def indices(self, fold: int = 0, role: str = 'train') -> np.ndarray:
    """Source indices of `role` in fold `fold` (-1: every image is train)."""
    if role not in ROLES:
      raise UserInputError(f'role={role!r} is not one of {list(ROLES)}')
    n = len(self.ids)
    if role == 'all':
      return np.arange(n)
    if fold == -1:
      return np.arange(n) if role == 'train' else np.zeros(0, np.int64)
    num_folds = self.manifest['num_folds']
    if not 0 <= fold < num_folds:
      raise UserInputError(
          f'config.data.fold={fold} is not -1 or in [0, {num_folds})')
    pos = {i: k for k, i in enumerate(self.ids)}
    return np.array([pos[i] for i in self.manifest['folds'][fold][role]],
                    np.int64)


def _str(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def _write_json(obj, path: str) -> None:
  files.write_json(path, obj)


def _build(scan: sources.Scan, data, fp: str) -> tfds.core.DatasetBuilder:
  cfg = builder.ImagesConfig(
      name=f'{scan.name}-{fp}', storage_size=int(data.storage_size),
      channels=scan.channels, num_classes=len(scan.class_names))
  data_dir = data.tfds_dir or default_tfds_dir()
  b = builder.PreparedImages(scan=scan, config=cfg, data_dir=data_dir)
  if not b.is_prepared():
    logging.info('Preparing %s (%d images) into %s', data.name,
                 len(scan.items), b.data_dir)
  tfds.disable_progress_bar()
  try:
    b.download_and_prepare(file_format='array_record')
  except UserInputError:
    raise
  except Exception as e:  # TFDS may wrap errors raised by the generator.
    cause = e
    while cause is not None and not isinstance(cause, UserInputError):
      cause = cause.__cause__ or cause.__context__
    if cause is not None:
      raise cause from None
    # Another process may have prepared the same dataset concurrently (its
    # rename of incomplete.* won); then its complete copy is ours too.
    b = builder.PreparedImages(scan=scan, config=cfg, data_dir=data_dir)
    if not b.is_prepared():
      raise
    logging.info('Using %s, prepared concurrently', b.data_dir)
  return b


def prepare(data, workdir: str | None = None) -> PreparedData:
  """Validates, preprocesses (cached), splits; see the module docstring."""
  size = int(data.storage_size)
  if size < 4:
    raise UserInputError(f'config.data.storage_size={size} must be >= 4')
  scan = sources.scan(data)
  fp = sources.fingerprint(scan, size)
  b = _build(scan, data, fp)
  ds = b.as_data_source()['train']
  n = len(ds)
  if n != len(scan.items):
    raise RuntimeError(f'{b.data_dir}: {n} records, expected '
                       f'{len(scan.items)}; delete it and rerun')
  recs = [ds[i] for i in range(n)]
  ids = [_str(r['id']) for r in recs]
  expected = [it.id for it in scan.items]
  # disable_shuffling=True keeps generation order, which is id order.
  if ids != expected:
    raise RuntimeError(f'{b.data_dir}: stored ids are not the source ids in '
                       f'order; delete the folder and rerun')
  content = hashlib.sha256(dataset_key(scan.name, expected, [
      r['label'] for r in recs], scan.class_names).encode())
  for r in recs:  # the bytes of the stacked images, without stacking them
    content.update(np.ascontiguousarray(r['image']).tobytes())
  nbytes = sum(r['image'].nbytes for r in recs)
  # Kept in memory when small enough (the source reads records otherwise).
  in_memory = (np.stack([r['image'] for r in recs])
               if nbytes <= _CACHE_BYTES else None)
  shas = [_str(r['sha']) for r in recs]
  phashes = np.stack([np.asarray(r['phash'], np.uint8) for r in recs])
  labels = np.array([r['label'] for r in recs], np.int32)
  original = {'width': [int(r['orig_width']) for r in recs],
              'height': [int(r['orig_height']) for r in recs],
              'mode': [_str(r['orig_mode']) for r in recs]}
  del recs
  groups = splits.duplicate_groups(shas, phashes, expected,
                                   int(data.hash_threshold))
  warn_cross_class(groups, expected, labels, scan.class_names)
  # Volume sources: one patient per slice, kept in one role of every fold.
  patients = ([it.patient for it in scan.items]
              if any(it.patient for it in scan.items) else None)
  manifest = splits.make_manifest(
      expected, labels, groups, int(data.num_folds),
      float(data.val_fraction), int(data.split_seed), data.duplicates,
      patients=patients)
  manifest['fingerprint'] = fp
  if workdir:
    _write_json(manifest, os.path.join(workdir, 'splits.json'))
  return PreparedData(
      name=scan.name, source=Source(ds, in_memory, labels, expected),
      ids=expected, labels=labels, class_names=list(scan.class_names),
      channels=scan.channels, storage_size=size, manifest=manifest,
      original=original, fingerprint=fp, data_dir=str(b.data_dir),
      content_fingerprint=content.hexdigest()[:16])


def cross_class_groups(groups: list[list[str]], ids: list[str],
                       labels, class_names: list[str]) -> list[str]:
  """Duplicate groups whose images carry different labels, described as
  'a (class) = b (class)'."""
  label = dict(zip(ids, np.asarray(labels).tolist()))
  return [' = '.join(f'{i} ({class_names[label[i]]})' for i in g)
          for g in groups if len({label[i] for i in g}) > 1]


def warn_cross_class(groups, ids, labels, class_names) -> None:
  """One console warning per prepare: the same scan under two labels."""
  mixed = cross_class_groups(groups, ids, labels, class_names)
  if mixed:
    more = f'; and {len(mixed) - 5} more' if len(mixed) > 5 else ''
    logging.warning(
        '%d duplicate group(s) hold the same image under different labels '
        '(check the labels; data_report.md lists every group): %s%s',
        len(mixed), '; '.join(mixed[:5]), more)


def dataset_key(name: str, ids, labels, class_names) -> str:
  """Short sha256 of the source name, ids, labels and class names."""
  h = hashlib.sha256(f'{name}|{list(class_names)}'.encode())
  for i, y in zip(ids, np.asarray(labels).tolist()):
    h.update(f'|{i}:{y}'.encode())
  return h.hexdigest()[:16]
