"""Which real images a GAN saw, and the check that keeps them out of test.

A GAN trained on a fold's test images leaks them into any classifier that
mixes in its samples. The chain that prevents it across single runs:

1. PGGAN training writes `W/training_data.json` (`write_training_record`):
   the dataset key, the split fingerprint, fold, class filter and the ids of
   every real image the GAN trains on.
2. The sampler copies that record into `O/manifest.json` (per class).
3. The classifier (`check_synthetic`) reads it and refuses synthetic images
   whose GAN saw any of its fold's validation or test images, or a
   near-duplicate of one, naming the count.

Ids are paths relative to the dataset root, the same at every storage size,
so the check holds between runs at different resolutions.
"""

import json
import os
from typing import Any

from absl import logging
import numpy as np

from input_pipeline import files
from input_pipeline.errors import UserInputError

RECORD = 'training_data.json'
MANIFEST = 'manifest.json'


def training_ids(prepared, fold: int, class_filter: int) -> list[str]:
  """Ids of the real images a GAN with these data settings trains on."""
  idx = prepared.indices(fold, 'train')
  if class_filter >= 0:
    idx = idx[np.asarray(prepared.labels)[idx] == class_filter]
  return [prepared.ids[i] for i in idx]


def training_record(prepared, data) -> dict[str, Any]:
  """The record of `write_training_record` (see module docstring)."""
  fold, class_filter = int(data.fold), int(data.class_filter)
  return {
      'data_name': prepared.name,
      'dataset_key': prepared.dataset_key,
      'split_fingerprint': prepared.split_fingerprint,
      'split_seed': int(prepared.manifest['split_seed']),
      'fold': fold,
      'class_filter': class_filter,
      'class_name': (prepared.class_names[class_filter]
                     if class_filter >= 0 else None),
      'train_ids': training_ids(prepared, fold, class_filter),
  }


def write_training_record(workdir: str, prepared, data) -> dict[str, Any]:
  record = training_record(prepared, data)
  files.write_json(os.path.join(workdir, RECORD), record)
  return record


def read_training_record(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _manifests(synthetic_dir: str) -> list[tuple[str, dict]]:
  """(path, manifest) of synthetic_dir/manifest.json and of each class dir."""
  out = []
  candidates = [os.path.join(synthetic_dir, MANIFEST)] + sorted(
      os.path.join(synthetic_dir, d, MANIFEST)
      for d in os.listdir(synthetic_dir)
      if os.path.isdir(os.path.join(synthetic_dir, d)))
  for path in candidates:
    if os.path.isfile(path):
      try:
        with open(path) as f:
          out.append((path, json.load(f)))
      except (OSError, ValueError) as e:
        raise UserInputError(f'{path}: cannot read ({e})') from None
  return out


def _entries(synthetic_dir: str) -> list[tuple[str, str, dict]]:
  """(manifest path, entry, record): entry is a class folder or 'all'."""
  return [(path, entry, rec) for path, m in _manifests(synthetic_dir)
          for entry, rec in m.get('gan_training', {}).items()]


def _unrecorded_folders(synthetic_dir: str, entries) -> list[str]:
  """Class folders with images that no GAN record covers.

  A record keyed 'all' (a conditional or all-class GAN) covers every folder;
  otherwise each folder needs its own record, so PNGs copied in by hand or
  left from an earlier sampling are not vouched for by another GAN's record.
  """
  keys = {e for _, e, _ in entries}
  if 'all' in keys:
    return []
  out = []
  for d in sorted(os.listdir(synthetic_dir)):
    folder = os.path.join(synthetic_dir, d)
    if (os.path.isdir(folder) and d not in keys and any(
        f.lower().endswith('.png') for f in os.listdir(folder))):
      out.append(folder)
  return out


def gan_runs(synthetic_dir: str) -> list[dict[str, Any]]:
  """The GAN behind each class folder of synthetic_dir, from its manifests.

  [{'entry', 'workdir', 'checkpoint_step', 'kimg', 'resolution',
  'num_images'}], one per sampling run ('entry' is the class folder, or
  'all'); [] if there is no manifest.
  """
  keys = ('workdir', 'checkpoint_step', 'kimg', 'resolution', 'num_images')
  out = []
  for _, m in _manifests(synthetic_dir):
    # Older manifests hold one run at the top level.
    runs = m.get('runs') or ({'all': m} if 'workdir' in m else {})
    for entry, run in sorted(runs.items()):
      out.append({'entry': entry, **{k: run.get(k) for k in keys}})
  return out


def check_synthetic(synthetic_dir: str, prepared, fold: int, *,
                    allow_unverified: bool = False) -> dict[str, Any]:
  """Refuses synthetic images whose GAN saw this fold's val/test images.

  Near-duplicates count: a GAN that saw one image of a duplicate group saw
  them all. Returns a summary {'gans': n, 'dataset_match': bool, ...}.
  Raises UserInputError naming the count (or the missing manifest unless
  `allow_unverified`).
  """
  if not os.path.isdir(synthetic_dir):
    raise UserInputError(
        f'config.data.synthetic_dir={synthetic_dir!r} is not a directory')
  entries = _entries(synthetic_dir)
  records = [(path, rec) for path, _, rec in entries]
  unrecorded = _unrecorded_folders(synthetic_dir, entries) if records else []
  if unrecorded and not allow_unverified:
    raise UserInputError(
        f'{unrecorded[0]}: no GAN training record in the manifest.json of '
        f'{synthetic_dir} covers this folder, so leakage into this fold '
        'cannot be ruled out; sample it with configs/sample.py from a GAN '
        'trained on this fold, or set '
        'config.data.allow_unverified_synthetic=True')
  if not records:
    msg = (f'config.data.synthetic_dir={synthetic_dir!r}: no manifest.json '
           'records which real images its GAN trained on, so leakage into '
           'this fold cannot be ruled out; sample it with configs/sample.py '
           'from a GAN trained on this fold, or set '
           'config.data.allow_unverified_synthetic=True')
    if not allow_unverified:
      raise UserInputError(msg)
    logging.warning('%s', msg)
    return {'gans': 0, 'verified': False}
  held_out = set()
  if fold >= 0:
    for role in ('val', 'test'):
      held_out.update(prepared.ids[i] for i in prepared.indices(fold, role))
  else:
    held_out = set()
  for group in prepared.manifest.get('duplicate_groups', []):
    if held_out & set(group):
      held_out.update(group)
  key = prepared.dataset_key
  summary = {'gans': len(records), 'verified': True, 'dataset_match': True}
  for path, rec in records:
    if rec.get('dataset_key') != key:
      # Trained on other data (another source name, folder or subset): ids
      # cannot be compared, so leakage cannot be ruled out. Fail closed.
      msg = (f'{path}: its GAN trained on another dataset (key '
             f'{rec.get("dataset_key")}) than this classifier\'s ({key}: '
             f'{prepared.name}, {len(prepared.ids)} images), so the leakage '
             'check by image id cannot rule out that it saw this fold\'s '
             'validation/test images; train the GAN on the same data '
             'settings, or set config.data.allow_unverified_synthetic=True '
             '(e.g. a GAN trained on external data)')
      if not allow_unverified:
        raise UserInputError(msg)
      summary['dataset_match'] = False
      logging.warning('%s', msg)
      continue
    seen = held_out & set(rec.get('train_ids', []))
    if seen:
      raise UserInputError(
          f'{path}: its GAN trained on {len(seen)} of the validation/test '
          f'images (or their duplicates) of config.data.fold={fold} '
          f'(split {prepared.split_fingerprint}; the GAN used split '
          f'{rec.get("split_fingerprint")} fold {rec.get("fold")}): '
          f'e.g. {sorted(seen)[:3]}; train the GAN on this fold '
          f'(--config.data.fold={fold}) with the same split settings')
  return summary


def gan_train_ids(synthetic_dir: str) -> set[str]:
  """Ids of every real image the GANs behind synthetic_dir trained on.

  The union over its manifests' training records; empty where no manifest
  records a GAN's training data (hand-made folders, old samplers).
  """
  return {i for _, _, rec in _entries(synthetic_dir)
          for i in rec.get('train_ids', [])}
