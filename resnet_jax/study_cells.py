"""A study cell (repeat, fold): its folders, splits and leakage checks.

`cell_manifest` records the ids of the cell's train/val/test splits and of
the images each GAN trains on; `check_leakage` refuses a cell where test
images (or a duplicate group, or a patient) could reach a GAN or
classifier; `synthetic_counts` splits the synthetic images between classes.
"""

import os
from typing import Any

import ml_collections
import numpy as np

from input_pipeline.errors import UserInputError
from resnet_jax import study_steps


# Arm -> directory name (no '+' in paths).
ARM_DIRS = {'none': 'none', 'classic': 'classic', 'gan': 'gan',
            'classic+gan': 'classic_gan'}
ARM_OF_DIR = {v: k for k, v in ARM_DIRS.items()}


def cell_dir(workdir: str, repeat: int, fold: int) -> str:
  """W/repeat{r}/fold{f}: the cell's GANs, samples, quality and arms."""
  return os.path.join(workdir, f'repeat{repeat}', f'fold{fold}')


def cell_manifest(prepared, fold: int, seed: int,
                  repeat: int = 0) -> dict[str, Any]:
  """Ids of a cell's splits, and the ids the GANs are trained on per class.

  The GAN ids are computed exactly as the pipeline selects them: the fold's
  'train' role, filtered by class (a conditional GAN sees them all).
  """
  ids = np.asarray(prepared.ids)
  role_idx = {r: np.asarray(prepared.indices(fold, r), np.int64)
              for r in ('train', 'val', 'test')}
  labels = np.asarray(prepared.labels)
  train = role_idx['train']
  return {
      'repeat': repeat, 'fold': fold, 'seed': seed,
      'split_seed': int(prepared.manifest['split_seed']),
      'split_fingerprint': prepared.manifest.get('split_fingerprint'),
      'class_names': list(prepared.class_names),
      **{r: ids[i].tolist() for r, i in role_idx.items()},
      'gan_train_ids': {
          prepared.class_names[c]: ids[train[labels[train] == c]].tolist()
          for c in range(len(prepared.class_names))},
      # Images are scaled to [-1, 1] by a fixed map; no statistic of any
      # split is used for normalisation.
      'normalisation': 'fixed uint8 -> [-1, 1], no dataset statistics',
  }


def check_leakage(manifest: dict[str, Any],
                  duplicate_groups: list[list[str]],
                  patients: dict[str, str] | None = None) -> None:
  """Raises RuntimeError if test images could reach a GAN or classifier.

  patients: {id: patient} of volume sources (the split manifest's
  'patients'; default: the cell manifest's, if any): no patient may have
  images in two roles.
  """
  train, val, test = (set(manifest[r]) for r in ('train', 'val', 'test'))
  where = (f'repeat {manifest.get("repeat", 0)} fold {manifest["fold"]} '
           f'seed {manifest["seed"]}')
  if train & test or val & test or train & val:
    raise RuntimeError(f'{where}: train/val/test ids overlap')
  for name, gan_ids in manifest['gan_train_ids'].items():
    if not set(gan_ids) <= train:
      raise RuntimeError(f'{where}: GAN {name} trained on non-train ids')
  role = {i: r for r, s in (('train', train), ('val', val), ('test', test))
          for i in s}
  for group in duplicate_groups:
    roles = {role[i] for i in group if i in role}
    if len(roles) > 1:
      raise RuntimeError(f'{where}: duplicate group {group} straddles '
                         f'{sorted(roles)}')
  patients = manifest.get('patients') if patients is None else patients
  seen = {}
  for i, r in role.items():
    if patients and i in patients:
      first = seen.setdefault(patients[i], r)
      if first != r:
        raise RuntimeError(f'{where}: patient {patients[i]!r} is in both '
                           f'{first} and {r}')


def data_summary(prepared, data: ml_collections.ConfigDict,
                 split_seeds: list[int] | None = None) -> dict[str, Any]:
  """Counts per class, per fold and role (repeat 0), and duplicate groups."""
  names = list(prepared.class_names)
  labels = np.asarray(prepared.labels)

  def counts(idx):
    c = np.bincount(labels[np.asarray(idx, np.int64)], minlength=len(names))
    return {n: int(c[i]) for i, n in enumerate(names)}

  groups = [g for g in prepared.manifest.get('duplicate_groups', [])
            if len(g) > 1]
  return {
      'name': data.name, 'dir': data.dir, 'class_names': names,
      'counts': counts(np.arange(len(labels))),
      'split_seed': prepared.manifest.get('split_seed', data.split_seed),
      'split_seeds': split_seeds or [prepared.manifest.get('split_seed')],
      'folds': [{r: counts(prepared.indices(f, r))
                 for r in ('train', 'val', 'test')}
                for f in range(int(prepared.manifest['num_folds']))],
      'duplicate_groups': len(groups),
      'duplicate_images': int(sum(len(g) for g in groups)),
  }


def synthetic_counts(manifest: dict, total: int,
                     balance: str) -> dict[str, int]:
  """Synthetic images per class: `total` split by training prevalence.

  'prevalence' keeps the class prior of the real training split (so mixing
  synthetic images in does not shift it); 'equal' gives each class the same
  number. Largest-remainder rounding, at least one image per class.
  """
  names = list(manifest['class_names'])
  n = np.array([len(manifest['gan_train_ids'][c]) for c in names],
               np.float64)
  share = (n / n.sum() if balance == 'prevalence'
           else np.full(len(names), 1.0 / len(names)))
  exact = share * total
  counts = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - counts))[:total - counts.sum()]:
    counts[i] += 1
  return {c: max(1, int(k)) for c, k in zip(names, counts)}


def write_manifest(path: str, manifest: dict, recompute: bool) -> None:
  """Writes a cell manifest once; a rerun must find the same splits."""
  if os.path.exists(path):
    old = study_steps.read_json(path)
    if {k: old.get(k) for k in manifest} == manifest:
      return
    if not recompute:
      raise UserInputError(
          f'{path} holds other splits than config.data gives now (data or '
          'split options changed?): use a new --workdir, or set '
          '--config.on_config_change=recompute')
  study_steps.write_json(path, manifest)
