"""The augmentation study: k folds x seeds x arms, then report.md and plots.

For each (fold, seed) *cell*: train a PGGAN per class (or one conditional
PGGAN) on the fold's training images only, sample M images per class, train
the ResNet in each arm ('none', 'classic', 'gan', 'classic+gan') and evaluate
it on the fold's held-out test images. Then aggregate (`report.py`).

Layout of the workdir W:
  W/splits.json                      the split manifest (input_pipeline)
  W/fold{f}/seed{s}/manifest.json    train/val/test ids + the GANs' ids
  W/fold{f}/seed{s}/gan/<class>/     PGGAN workdirs (orbax checkpoints)
  W/fold{f}/seed{s}/samples/<class>/ synthetic PNGs (+ manifest.json)
  W/fold{f}/seed{s}/arms/<arm>/      ResNet workdirs (results.json, ...)
  W/fold{f}/seed{s}/done/*.json      markers, written atomically when a step
                                     finishes: a rerun skips those steps
  W/results.csv, W/report.md, W/roc.png, W/arms.png, W/samples.png

Everything runs in one process so jit caches are shared between cells; the
persistent compilation cache also carries compiled steps across runs.
"""

import collections
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from input_pipeline import files
from input_pipeline.errors import UserInputError
from resnet_jax import report

ARMS = report.ARMS
# Arm -> directory name (no '+' in paths).
ARM_DIRS = {'none': 'none', 'classic': 'classic', 'gan': 'gan',
            'classic+gan': 'classic_gan'}
_ARM_OF_DIR = {v: k for k, v in ARM_DIRS.items()}
# config.data keys a sub-run keeps from its own config (they depend on the
# model); all other keys come from the study's shared data block, and the
# per-cell keys are set by the study.
CONSUMER_DATA_KEYS = ('resolution', 'augment', 'synthetic_ratio')
CELL_DATA_KEYS = ('fold', 'class_filter', 'synthetic_dir')


def _write_json(path: str, obj: Any) -> None:
  """Atomic: a marker either exists complete or not at all."""
  files.write_json(path, obj, default=_json_default)


def _json_default(x):
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if hasattr(x, 'item'):  # jax arrays
    return np.asarray(x).tolist()
  return str(x)


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def setup_compilation_cache(cache_dir: str, min_compile_secs: float) -> str:
  """Persistent XLA cache: repeated cells and reruns skip recompiling."""
  cache_dir = os.path.expanduser(
      cache_dir or os.path.join('~', '.cache', 'pggan_jax', 'jax_cache'))
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:  # read-only home: run without the cache
    logging.warning('no compilation cache (%s): %s', cache_dir, e)
    return ''
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_secs))
  return cache_dir


def sub_config(block: ml_collections.ConfigDict,
               shared_data: ml_collections.ConfigDict,
               **fields: Any) -> ml_collections.ConfigDict:
  """A sub-run's config: `block` with the study's data block copied in.

  Keys of `shared_data` other than CONSUMER_DATA_KEYS/CELL_DATA_KEYS replace
  the block's own `data` keys; `fields` then set top-level keys, and keys
  named 'data.xxx' (written data__xxx) set the per-cell data keys.
  """
  sub = block.copy_and_resolve_references()
  with sub.unlocked():
    for key in shared_data:
      if key in CONSUMER_DATA_KEYS or key in CELL_DATA_KEYS:
        continue
      value = shared_data[key]
      if isinstance(value, ml_collections.ConfigDict):
        value = value.copy_and_resolve_references()
      sub.data[key] = value
    for key, value in fields.items():
      if key.startswith('data__'):
        sub.data[key[len('data__'):]] = value
      else:
        sub[key] = value
  return sub


def cell_manifest(prepared, fold: int, seed: int) -> dict[str, Any]:
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
      'fold': fold, 'seed': seed,
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
                  duplicate_groups: list[list[str]]) -> None:
  """Raises RuntimeError if test images could reach a GAN or classifier."""
  train, val, test = (set(manifest[r]) for r in ('train', 'val', 'test'))
  where = f'fold {manifest["fold"]} seed {manifest["seed"]}'
  if train & test or val & test or train & val:
    raise RuntimeError(f'{where}: train/val/test ids overlap')
  for name, gan_ids in manifest['gan_train_ids'].items():
    if not set(gan_ids) <= train:
      raise RuntimeError(f'{where}: GAN {name} trained on non-train ids')
  role = {i: r for r, s in (('train', train), ('val', val), ('test', test))
          for i in s}
  for group in duplicate_groups:
    roles = {role[i] for i in group if i in role}
    if 'test' in roles and len(roles) > 1:
      raise RuntimeError(f'{where}: duplicate group {group} straddles test')


def data_summary(prepared, data: ml_collections.ConfigDict) -> dict[str, Any]:
  """Counts per class, per fold and role, and duplicate groups."""
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
      'folds': [{r: counts(prepared.indices(f, r))
                 for r in ('train', 'val', 'test')}
                for f in range(int(prepared.manifest['num_folds']))],
      'duplicate_groups': len(groups),
      'duplicate_images': int(sum(len(g) for g in groups)),
  }


def _check_config(config: ml_collections.ConfigDict) -> list[str]:
  arms = list(config.arms)
  bad = [a for a in arms if a not in ARMS]
  if bad or not arms:
    raise UserInputError(f'config.arms={arms} must be a non-empty subset '
                         f'of {list(ARMS)}')
  if config.gan_mode not in ('per_class', 'conditional'):
    raise UserInputError(f'config.gan_mode={config.gan_mode!r} must be '
                         "'per_class' or 'conditional'")
  if config.num_seeds < 1:
    raise UserInputError(f'config.num_seeds={config.num_seeds} must be >= 1')
  if config.num_synthetic_per_class < 1:
    raise UserInputError('config.num_synthetic_per_class must be >= 1')
  return arms


def _folds(config, num_folds: int) -> list[int]:
  folds = list(config.folds) if config.folds else list(range(num_folds))
  bad = [f for f in folds if not 0 <= f < num_folds]
  if bad:
    raise UserInputError(f'config.folds={folds}: folds must lie in '
                         f'[0, {num_folds}) (config.data.num_folds)')
  return folds


class _Progress:
  """tqdm over the study's steps; logs 'skipping finished cell ...'."""

  def __init__(self, total: int):
    self.bar = tqdm.tqdm(total=total, desc='study', unit='step',
                         dynamic_ncols=True)

  def skip(self, what: str):
    logging.info('skipping finished cell %s', what)
    self.bar.update(1)

  def start(self, what: str):
    logging.info('running %s', what)
    self.bar.set_postfix_str(what)

  def done(self, what: str, seconds: float):
    logging.info('finished %s in %.1f s', what, seconds)
    self.bar.update(1)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study and writes the report; see module."""
  if not workdir:
    raise UserInputError('--workdir is required for config.task=study')
  arms = _check_config(config)
  # Imported here: the study module (and its report) stays importable
  # without the training stacks, e.g. to rebuild a report.
  from input_pipeline import dataset
  from pggan_jax import sample as sample_lib
  from pggan_jax import train as pggan_train
  from resnet_jax import train as resnet_train

  wall0 = time.time()
  cache = setup_compilation_cache(config.jax_cache_dir,
                                  config.jax_cache_min_compile_secs)
  logging.info('study in %s; compilation cache %s', workdir, cache or 'off')

  t = time.time()
  # Bad data or config values stop here, before anything is written.
  prepared = dataset.prepare(config.data)
  prep_seconds = time.time() - t
  folds = _folds(config, int(prepared.manifest['num_folds']))
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'splits.json'), prepared.manifest)
  config_path = os.path.join(workdir, 'config.json')
  config_now = json.loads(config.to_json_best_effort())
  if os.path.exists(config_path) and _read_json(config_path) != config_now:
    logging.warning('%s differs from the current config: finished cells '
                    'are kept as they are', config_path)
  _write_json(config_path, config_now)
  # The first run's time (later runs read the cached dataset).
  prep_marker = os.path.join(workdir, 'data_prepared.json')
  if not os.path.exists(prep_marker):
    _write_json(prep_marker, {'seconds': prep_seconds})
  prep_seconds = _read_json(prep_marker)['seconds']
  names = list(prepared.class_names)
  seeds = [config.seed + i for i in range(config.num_seeds)]
  use_gan = any('gan' in a for a in arms)
  gan_units = (len(names) if config.gan_mode == 'per_class' else 1) + 1
  progress = _Progress(len(folds) * len(seeds) *
                       (len(arms) + (gan_units if use_gan else 0)))
  dup_groups = prepared.manifest.get('duplicate_groups', [])

  def step(marker: str, what: str, fn, *args) -> dict:
    """Runs fn(*args) unless its marker exists; the marker keeps the time."""
    if os.path.exists(marker):
      progress.skip(what)
      return _read_json(marker)
    progress.start(what)
    t0 = time.time()
    out = fn(*args) or {}
    out['seconds'] = time.time() - t0
    _write_json(marker, out)
    progress.done(what, out['seconds'])
    return out

  train_gan = lambda c, d: _metrics(pggan_train.train_and_evaluate(c, d))
  # Seed-major: every fold of the first seed finishes before the next seed
  # starts, so a partial run already covers all folds.
  for seed in seeds:
    for fold in folds:
      cell = os.path.join(workdir, f'fold{fold}', f'seed{seed}')
      done = os.path.join(cell, 'done')
      tag = f'fold {fold} seed {seed}'
      manifest = cell_manifest(prepared, fold, seed)
      check_leakage(manifest, dup_groups)
      _write_manifest(os.path.join(cell, 'manifest.json'), manifest)
      samples_dir = os.path.join(cell, 'samples')

      if use_gan:
        # {name: (workdir, data.class_filter)}; a conditional GAN sees all.
        gans = ({n: (os.path.join(cell, 'gan', n), label)
                 for label, n in enumerate(names)}
                if config.gan_mode == 'per_class' else
                {'conditional': (os.path.join(cell, 'gan', 'conditional'),
                                 -1)})
        for name, (gan_dir, label) in gans.items():
          sub = sub_config(config.gan, config.data, seed=seed,
                           data__fold=fold, data__class_filter=label)
          if config.gan_mode == 'conditional':
            _set_conditional(sub)
          step(os.path.join(done, f'gan_{name}.json'), f'{tag} GAN {name}',
               train_gan, sub, gan_dir)
        step(os.path.join(done, 'samples.json'), f'{tag} sampling',
             _sample, sample_lib, config, {n: d for n, (d, _) in gans.items()},
             names, samples_dir, seed, manifest)

      for arm in arms:
        sub = sub_config(
            config.classifier, config.data, seed=seed, arm=arm,
            data__fold=fold, data__class_filter=-1,
            data__synthetic_dir=samples_dir if 'gan' in arm else '')
        arm_dir = os.path.join(cell, 'arms', ARM_DIRS[arm])
        step(os.path.join(done, f'arm_{ARM_DIRS[arm]}.json'),
             f'{tag} arm {arm}',
             lambda c, d, a: {'row': _row(
                 fold, seed, a, resnet_train.train_and_evaluate(c, d))},
             sub, arm_dir, arm)
  progress.bar.close()

  t = time.time()
  written = _write_outputs(config, workdir, prepared, folds, seeds, arms,
                           prep_seconds, wall0)
  logging.info('report in %.1f s: %s', time.time() - t, sorted(written))
  return written


def _write_manifest(path: str, manifest: dict) -> None:
  """Writes a cell manifest once; a rerun must find the same splits."""
  if os.path.exists(path):
    old = _read_json(path)
    if {k: old.get(k) for k in manifest} != manifest:
      raise UserInputError(
          f'{path} holds other splits than config.data gives now (data or '
          'split options changed?): use a new --workdir')
    return
  _write_json(path, manifest)


def _set_conditional(sub: ml_collections.ConfigDict) -> None:
  """Switches a PGGAN config to its class-conditional variant."""
  for path in ('conditional', 'model.conditional'):
    node, *rest = path.split('.')
    parent = sub
    if rest:
      if node not in sub:
        continue
      parent, node = sub[node], rest[0]
    if node in parent:
      parent[node] = True
      return
  raise UserInputError("config.gan_mode='conditional' but config.gan has no "
                       "'conditional' switch")


def _metrics(out: Any) -> dict:
  """JSON-safe copy of a train_and_evaluate result."""
  return {'metrics': json.loads(json.dumps(out or {}, default=_json_default))}


def _sample(sample_lib, config, gan_dirs: dict[str, str], names: list[str],
            samples_dir: str, seed: int, manifest: dict) -> dict:
  """Writes M images per class to samples_dir/<class>/ (+ manifest.json)."""
  # A crash mid-sampling leaves partial folders: start them afresh.
  shutil.rmtree(samples_dir, ignore_errors=True)
  m = int(config.num_synthetic_per_class)
  per_class = {}
  if config.gan_mode == 'per_class':
    for label, name in enumerate(names):
      per_class[name] = sample_lib.sample(
          gan_dirs[name], m, os.path.join(samples_dir, name),
          seed=seed * 1000 + label)
  else:
    per_class['conditional'] = sample_lib.sample(
        gan_dirs['conditional'], m, samples_dir, seed=seed * 1000)
  top = {'fold': manifest['fold'], 'seed': seed, 'class_names': names,
         'num_per_class': m, 'gan_mode': config.gan_mode,
         'gan_train_ids': manifest['gan_train_ids'],
         'per_class': per_class}
  # Replaces a conditional sampler's own manifest.json (kept in per_class).
  _write_json(os.path.join(samples_dir, 'manifest.json'), top)
  return {'num_per_class': m}


def _row(fold: int, seed: int, arm: str, out: dict) -> dict:
  """results.csv row: test metrics, then extras.

  Extras: tuned_* (test at the threshold chosen on val), val_*, threshold.
  Undefined metrics (None in results.json) become NaN.
  """
  if 'test' not in out:
    raise RuntimeError(f'resnet train_and_evaluate returned no test '
                       f'metrics for fold {fold} arm {arm}: {sorted(out)}')
  row = {'fold': fold, 'seed': seed, 'arm': arm}
  for split, prefix in (('test', ''), ('test_at_val_threshold', 'tuned_'),
                        ('val', 'val_')):
    for k, v in (out.get(split) or {}).items():
      if isinstance(v, (int, float, np.number)) and k != 'n':
        row[prefix + k] = float(v)
  if isinstance(out.get('threshold'), (int, float)):
    row['threshold'] = float(out['threshold'])
  for m in report.METRICS:
    if row.get(m) is None:
      row[m] = float('nan')
  return row


def _write_outputs(config, workdir, prepared, folds, seeds, arms,
                   prep_seconds, wall0) -> dict[str, str]:
  """Rows, predictions, samples and timings from the markers -> report."""
  rows, preds = [], collections.defaultdict(list)
  stage = collections.defaultdict(float)
  first_samples = samples_title = ''
  # Seed-major: every fold of the first seed finishes before the next seed
  # starts, so a partial run already covers all folds.
  for seed in seeds:
    for fold in folds:
      cell = os.path.join(workdir, f'fold{fold}', f'seed{seed}')
      done = os.path.join(cell, 'done')
      for name in sorted(os.listdir(done)) if os.path.isdir(done) else []:
        if not name.endswith('.json'):
          continue
        sec = float(_read_json(os.path.join(done, name)).get('seconds', 0))
        key = ('GAN training' if name.startswith('gan_') else
               'sampling' if name.startswith('samples') else
               'classifier, arm ' + _ARM_OF_DIR.get(name[4:-5], name))
        stage[key] += sec
      if not first_samples and os.path.exists(os.path.join(done,
                                                           'samples.json')):
        first_samples = os.path.join(cell, 'samples')
        samples_title = f'synthetic samples, fold {fold} seed {seed}'
      for arm in arms:
        marker = _read_json(
            os.path.join(done, f'arm_{ARM_DIRS[arm]}.json'))
        rows.append(marker['row'])
        pred = os.path.join(cell, 'arms', ARM_DIRS[arm],
                            'test_predictions.csv')
        if os.path.exists(pred):
          preds[arm].append(report.read_predictions(pred))
  m0 = _read_json(os.path.join(workdir, f'fold{folds[0]}',
                               f'seed{seeds[0]}', 'manifest.json'))
  order = ['GAN training', 'sampling'] + [
      f'classifier, arm {a}' for a in ARMS]
  stage = {k: stage[k] for k in sorted(
      stage, key=lambda k: order.index(k) if k in order else len(order))}
  timings = {'data preparation (first run)': prep_seconds, **stage,
             'compute, all runs (sum of the above)': prep_seconds
             + sum(stage.values()),
             'wall time of this run (before the report)':
                 time.time() - wall0}
  samples = (report.load_samples(first_samples, prepared.class_names,
                                 config.report.samples_per_class)
             if first_samples else None)
  kwargs = dict(primary_metric=config.report.primary_metric,
                confidence=config.report.confidence,
                test_train_ratio=len(m0['test']) / max(len(m0['train']), 1),
                seed=config.seed)
  written = report.write_report(
      workdir, report.sort_rows(rows), predictions=dict(preds),
      samples=samples, samples_title=samples_title,
      config_json=config.to_json_best_effort(indent=2),
      data_summary=data_summary(prepared, config.data), timings=timings,
      title=config.report.title, **kwargs)
  path = os.path.join(workdir, 'summary.json')
  files.write_text(path, report.summary_json(rows, **kwargs))
  written['summary.json'] = path
  return written
