"""The augmentation study: repeated k-fold x arms, then report.md and plots.

Design (true repeated k-fold): repeat r draws its own folds with split seed
`data.split_seed + r` and seeds its runs with `config.seed + r`. For each
(repeat, fold) *cell*: train a PGGAN per class (or one conditional PGGAN) on
the fold's training images only, sample synthetic images per class in
proportion to the fold's training prevalence, measure their quality against
the fold's held-out real images, train the ResNet in each arm ('none',
'classic', 'gan', 'classic+gan') and evaluate it on the fold's test images.
Then aggregate (`report.py`): the corrected resampled t-test over the
repeats x folds cells is the primary test.

Layout of the workdir W:
  W/splits.json                       the split manifest of repeat 0
  W/repeat{r}/fold{f}/manifest.json   train/val/test ids + the GANs' ids
  W/repeat{r}/fold{f}/gan/<class>/    PGGAN workdirs (orbax checkpoints)
  W/repeat{r}/fold{f}/samples/<class>/  synthetic PNGs (+ manifest.json)
  W/repeat{r}/fold{f}/quality/        synthetic-image metrics of the cell
  W/repeat{r}/fold{f}/arms/<arm>/     ResNet workdirs (results.json, ...)
  W/repeat{r}/fold{f}/done/*.json     markers, written atomically when a
                                      step finishes: a rerun skips them
  W/results.csv, W/report.md, W/roc.png, W/arms.png, W/samples.png

Resume is safe: each step's marker (and its working directory) carries the
hash of everything the step depends on (its resolved sub-config, the data
and split fingerprints, and the hashes of the steps it uses). A rerun with a
changed configuration stops with a message naming the step, or, with
`config.on_config_change='recompute'`, redoes exactly the steps whose hash
changed (and those that depend on them); finished and changed results are
never mixed. Paths are not part of a step's identity: a moved or copied
workdir (or moved data) resumes.

Everything runs in one process so jit caches are shared between cells; the
persistent compilation cache also carries compiled steps across runs.
"""

import collections
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from input_pipeline import files
from input_pipeline import sharding
from input_pipeline import workdir as workdir_lib
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
CELL_DATA_KEYS = ('fold', 'class_filter', 'synthetic_dir', 'split_seed')
HASH_FILE = '.study_config_hash'


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
  """Persistent XLA cache: repeated cells and reruns skip recompiling.

  '' = ~/.cache/pggan_jax/jax_cache (the study always uses one).
  """
  return sharding.setup_compilation_cache(
      cache_dir or os.path.join('~', '.cache', 'pggan_jax', 'jax_cache'),
      min_compile_secs)


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


def study_keys(message: str, block: str) -> str:
  """A sub-run's error message with its config keys named as the study's.

  A GAN, classifier or quality run names its own keys ('config.dtype'); in
  the study those are 'config.<block>.dtype'. Data keys keep their name
  (the study copies config.data into the GAN's and the classifier's runs,
  and the quality step reads it directly), except those the GAN and the
  classifier keep for themselves (CONSUMER_DATA_KEYS). Paths, file names
  and command-line flags that contain 'config.' are left alone.
  """
  def rename(m: re.Match) -> str:
    key = m.group(1)
    parts = key.split('.')
    if parts[0] == 'data' and (block == 'quality' or len(parts) > 1 and
                               parts[1] not in CONSUMER_DATA_KEYS):
      return m.group(0)
    return f'config.{block}.{key}'
  return re.sub(r'(?<![\w./\\-])config\.(?!json\b)'
                r'([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)', rename, message)


@contextlib.contextmanager
def _keys_of(block: str):
  """Re-raises a sub-run's UserInputError with study_keys(..., block)."""
  try:
    yield
  except UserInputError as e:
    raise type(e)(study_keys(str(e), block)) from e


def _in_block(block: str, fn):
  """fn, whose UserInputErrors name the study's keys (study_keys)."""
  def wrapped(*args, **kwargs):
    with _keys_of(block):
      return fn(*args, **kwargs)
  return wrapped


def check_sub_configs(config: ml_collections.ConfigDict,
                      arms: list[str]) -> None:
  """The GAN's, the quality metrics' and the classifier's own keys, before
  anything trains.

  Otherwise a bad value there (say config.gan.dtype) would stop the study
  only when the first GAN or arm starts, possibly hours in.
  """
  from pggan_jax import train as pggan_train  # pylint: disable=g-import-not-at-top
  from resnet_jax import gan_metrics  # pylint: disable=g-import-not-at-top
  from resnet_jax import train as resnet_train  # pylint: disable=g-import-not-at-top
  if any('gan' in a for a in arms):
    sub = sub_config(config.gan, config.data, seed=config.seed,
                     data__class_filter=-1)
    if config.gan_mode == 'conditional':
      _set_conditional(sub)
    with _keys_of('gan'):
      pggan_train.check_config(sub)
    if config.quality.enabled:
      with _keys_of('quality'):
        gan_metrics.check_config(config.quality.metrics)
  with _keys_of('classifier'):
    for arm in arms:
      resnet_train.check_config(sub_config(
          config.classifier, config.data, seed=config.seed, arm=arm))


def _check_config(config: ml_collections.ConfigDict) -> list[str]:
  arms = list(config.arms)
  bad = [a for a in arms if a not in ARMS]
  if bad or not arms:
    raise UserInputError(f'config.arms={arms} must be a non-empty subset '
                         f'of {list(ARMS)}')
  if config.gan_mode not in ('per_class', 'conditional'):
    raise UserInputError(f'config.gan_mode={config.gan_mode!r} must be '
                         "'per_class' or 'conditional'")
  if config.num_repeats < 1:
    raise UserInputError(
        f'config.num_repeats={config.num_repeats} must be >= 1')
  if config.num_synthetic_per_class < 1:
    raise UserInputError('config.num_synthetic_per_class must be >= 1')
  if config.synthetic_class_balance not in ('prevalence', 'equal'):
    raise UserInputError(
        f'config.synthetic_class_balance={config.synthetic_class_balance!r}'
        " must be 'prevalence' or 'equal'")
  if config.on_config_change not in ('error', 'recompute'):
    raise UserInputError(
        f'config.on_config_change={config.on_config_change!r} must be '
        "'error' or 'recompute'")
  parse_shard(config.shard)
  return arms


def _folds(config, num_folds: int) -> list[int]:
  folds = list(config.folds) if config.folds else list(range(num_folds))
  bad = [f for f in folds if not 0 <= f < num_folds]
  if bad:
    raise UserInputError(f'config.folds={folds}: folds must lie in '
                         f'[0, {num_folds}) (config.data.num_folds)')
  return folds


# Bump when a change to the study's code changes what a finished step would
# produce: every step's hash includes it, so old results are not reused.
STUDY_CODE_VERSION = 1
# Keys that do not change a step's result (besides workdir.IGNORED_KEYS):
# where data comes from is named by the data's content fingerprint, and
# progress grids / tick metrics are only logged.
PATH_KEYS = ('data.dir', 'data.labels_csv', 'data.patient_labels_csv')
HASH_IGNORED_KEYS = (*PATH_KEYS, 'grid_size', 'metrics.*', 'sched.tick_kimg',
                     'sched.tick_kimg_dict')
# What a GAN's or classifier's own resume check ignores inside a study:
# the step hash has already pinned what these paths hold (the data's
# content, the samples' place in the workdir), so a partial sub-run resumes
# after the data or the whole workdir moved.
RESUME_IGNORED_KEYS = (*PATH_KEYS, 'data.synthetic_dir')


def config_hash(*parts: Any) -> str:
  """Short sha256 of JSON-able parts (ConfigDicts flattened to dotted keys).

  Keys that do not change results (workdir.IGNORED_KEYS, HASH_IGNORED_KEYS)
  are left out, so moving the data or the caches, or logging more often,
  keeps finished steps; the code version and JAX backend are included.
  """
  from input_pipeline import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  patterns = (*workdir_lib.IGNORED_KEYS, *HASH_IGNORED_KEYS)
  norm = [STUDY_CODE_VERSION, jax.default_backend()]
  for p in parts:
    if isinstance(p, ml_collections.ConfigDict):
      p = {k: v for k, v in workdir_lib.flatten(p).items()
           if not any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
    norm.append(p)
  blob = json.dumps(norm, sort_keys=True, default=_json_default)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


class _Steps:
  """Runs study steps once, keyed by a hash of what they depend on."""

  def __init__(self, progress: _Progress, recompute: bool,
               check_only: bool = False):
    self.progress = progress
    self.recompute = recompute
    # Merge mode: run nothing, collect the steps that are missing or stale.
    self.check_only = check_only
    self.missing = []

  def _mismatch(self, what: str, where: str, old: str | None, new: str):
    if not self.recompute:
      raise UserInputError(
          f'{where}: {what} was run with another configuration (hash '
          f'{old}, now {new}); use a new --workdir, restore the old '
          'settings, or set --config.on_config_change=recompute to redo the '
          'steps whose configuration changed')
    logging.warning('%s: configuration changed (%s -> %s); recomputing %s',
                    where, old, new, what)

  def _guard_dir(self, path: str, h: str, what: str,
                 also: tuple[str, ...] = ()) -> None:
    """A step's working dir belongs to one configuration hash."""
    hash_path = os.path.join(path, HASH_FILE)
    if os.path.isdir(path) and os.listdir(path):
      old = (open(hash_path).read().strip() if os.path.isfile(hash_path)
             else None)
      if old in (h, *also):
        return  # a partial run of the same step: it resumes
      self._mismatch(what, path, old, h)
      shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    files.write_text(hash_path, h)

  def run(self, marker: str, what: str, h: str, fn, *args,
          dirs: tuple[str, ...] = (), also: tuple[str, ...] = ()) -> dict:
    """fn(*args) unless `marker` holds hash h; the marker keeps the time.

    `also`: hashes an earlier version of this code gave the same step.
    """
    if os.path.exists(marker):
      old = _read_json(marker)
      if old.get('config_hash') in (h, *also):
        self.progress.skip(what)
        return old
      if self.check_only:
        self.missing.append(f'{what} (finished with another configuration)')
        return {}
      self._mismatch(what, marker, old.get('config_hash'), h)
      os.remove(marker)
    if self.check_only:
      self.missing.append(what)
      return {}
    for d in dirs:
      self._guard_dir(d, h, what, also)
    self.progress.start(what)
    t0 = time.time()
    out = fn(*args) or {}
    out['seconds'] = time.time() - t0
    out['config_hash'] = h
    _write_json(marker, out)
    self.progress.done(what, out['seconds'])
    return out


def parse_shard(shard: str) -> tuple[int, int]:
  """'i/N' -> (i, N); '' -> (0, 1)."""
  if not shard:
    return 0, 1
  try:
    i, n = (int(x) for x in shard.split('/'))
  except ValueError:
    i, n = -1, 0
  if not 0 <= i < n:
    raise UserInputError(f'config.shard={shard!r} must be i/N with '
                         '0 <= i < N, e.g. 0/4')
  return i, n


def cell_dir(workdir: str, repeat: int, fold: int) -> str:
  return os.path.join(workdir, f'repeat{repeat}', f'fold{fold}')


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study and writes the report; see module.

  Locks the workdir (input_pipeline/workdir.py): a whole-study or merge
  run holds W/.lock exclusively; a shard (config.shard=i/N) holds it
  shared, so shards run side by side but not beside a whole-study run,
  and holds W/.lock-shard-i-of-N, so the same shard cannot run twice. A
  second run refuses at once, naming the holder; a killed run leaves no
  lock held. Each GAN and classifier also locks its own workdir.
  """
  if not workdir:
    raise UserInputError('--workdir is required for config.task=study')
  arms = _check_config(config)
  if not config.merge:  # a merge trains nothing, maybe on other devices
    check_sub_configs(config, arms)
  shard_i, shard_n = parse_shard(config.shard)
  if config.shard and not config.merge:
    job = f'study shard {config.shard}'
    with workdir_lib.lock(workdir, job, shared=True), workdir_lib.lock(
        workdir, job, name=f'.lock-shard-{shard_i}-of-{shard_n}'):
      return _run_study(config, workdir)
  with workdir_lib.lock(workdir, 'study'):
    return _run_study(config, workdir)


def _run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
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
  prepared0 = dataset.prepare(config.data)
  repeats = list(range(int(config.num_repeats)))
  split_seeds = [int(config.data.split_seed) + r for r in repeats]
  prepared = {r: prepared0 if r == 0 else prepared0.with_split_seed(
      split_seeds[r]) for r in repeats}
  prep_seconds = time.time() - t
  folds = _folds(config, int(prepared0.manifest['num_folds']))
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'splits.json'), prepared0.manifest)
  # The study's own config, for the record; every step checks its own hash.
  _write_json(os.path.join(workdir, 'config.json'),
              json.loads(config.to_json_best_effort()))
  # The first run's time (later runs read the cached dataset).
  prep_marker = os.path.join(workdir, 'data_prepared.json')
  if not os.path.exists(prep_marker):
    _write_json(prep_marker, {'seconds': prep_seconds})
  prep_seconds = _read_json(prep_marker)['seconds']
  names = list(prepared0.class_names)
  use_gan = any('gan' in a for a in arms)
  use_quality = use_gan and bool(config.quality.enabled)
  gan_units = ((len(names) if config.gan_mode == 'per_class' else 1) + 1
               + int(use_quality))
  # Cells (repeat, fold) are independent: shard i of N runs every N-th
  # cell, so a job array of N tasks runs one study and no GAN twice.
  shard_i, shard_n = parse_shard(config.shard)
  cells = [(r, f) for r in repeats for f in folds]
  mine = set(cells if config.merge else cells[shard_i::shard_n])
  progress = _Progress(len(mine) *
                       (len(arms) + (gan_units if use_gan else 0)))
  steps = _Steps(progress, config.on_config_change == 'recompute',
                 check_only=bool(config.merge))
  dup_groups = prepared0.manifest.get('duplicate_groups', [])
  # What the stored pixels are, not how they were made: a cache-version
  # bump that leaves them unchanged does not invalidate finished steps.
  data_fp = prepared0.content_fingerprint

  train_gan = _in_block('gan', lambda c, d: _metrics(
      pggan_train.train_and_evaluate(c, d,
                                     resume_ignore=RESUME_IGNORED_KEYS)))
  train_arm = _in_block('classifier', lambda c, d, cell_arm: {'row': _row(
      *cell_arm, resnet_train.train_and_evaluate(
          c, d, resume_ignore=RESUME_IGNORED_KEYS))})
  # The quality markers the report may read (a stale one never enters it).
  quality_hashes = {}
  # Repeat-major: every fold of the first repeat finishes before the next
  # repeat starts, so a partial run already covers all folds.
  for repeat in repeats:
    prep = prepared[repeat]
    seed = int(config.seed) + repeat
    for fold in folds:
      if (repeat, fold) not in mine:
        continue
      cell = cell_dir(workdir, repeat, fold)
      done = os.path.join(cell, 'done')
      tag = f'repeat {repeat} fold {fold}'
      manifest = cell_manifest(prep, fold, seed, repeat)
      check_leakage(manifest, dup_groups, prep.manifest.get('patients'))
      _write_manifest(os.path.join(cell, 'manifest.json'), manifest,
                      steps.recompute)
      # Every step of the cell depends on the data and this split.
      base = (data_fp, prep.split_fingerprint, fold, seed)
      cell_data = dict(data__fold=fold,
                       data__split_seed=split_seeds[repeat])
      samples_dir = os.path.join(cell, 'samples')
      samples_hash = ''

      if use_gan:
        # {name: (workdir, data.class_filter)}; a conditional GAN sees all.
        gans = ({n: (os.path.join(cell, 'gan', n), label)
                 for label, n in enumerate(names)}
                if config.gan_mode == 'per_class' else
                {'conditional': (os.path.join(cell, 'gan', 'conditional'),
                                 -1)})
        gan_hashes = {}
        for name, (gan_dir, label) in gans.items():
          sub = sub_config(config.gan, config.data, seed=seed,
                           data__class_filter=label, **cell_data)
          if config.gan_mode == 'conditional':
            _set_conditional(sub)
          gan_hashes[name] = config_hash('gan', base, sub)
          steps.run(os.path.join(done, f'gan_{name}.json'),
                    f'{tag} GAN {name}', gan_hashes[name], train_gan, sub,
                    gan_dir, dirs=(gan_dir,))
        counts = synthetic_counts(manifest, config.num_synthetic_per_class
                                  * len(names),
                                  config.synthetic_class_balance)
        samples_hash = config_hash('samples', base, gan_hashes, counts,
                                   config.gan_mode)
        steps.run(os.path.join(done, 'samples.json'), f'{tag} sampling',
                  samples_hash, _sample, sample_lib, config,
                  {n: d for n, (d, _) in gans.items()}, names, counts,
                  samples_dir, seed, manifest)
        if use_quality:
          qcfg = config.quality
          quality_hashes[(repeat, fold)] = config_hash(
              'quality', samples_hash, qcfg)
          steps.run(os.path.join(done, 'quality.json'),
                    f'{tag} synthetic-image quality',
                    quality_hashes[(repeat, fold)],
                    _in_block('quality', _quality), config, prep, fold,
                    samples_dir, os.path.join(cell, 'quality'), seed,
                    dirs=(os.path.join(cell, 'quality'),))

      for arm in arms:
        sub = sub_config(
            config.classifier, config.data, seed=seed, arm=arm,
            data__class_filter=-1,
            data__synthetic_dir=samples_dir if 'gan' in arm else '',
            **cell_data)
        arm_dir = os.path.join(cell, 'arms', ARM_DIRS[arm])
        # The synthetic images are named by samples_hash and their folder
        # by its place in the workdir, so a moved or copied workdir resumes.
        # Markers written before hashed the absolute path (`legacy`).
        keyed = sub.copy_and_resolve_references()
        legacy = ()
        if keyed.data.synthetic_dir:
          keyed.data.synthetic_dir = os.path.relpath(samples_dir, workdir)
          legacy = (config_hash('arm', base, sub, samples_hash),)
        h = config_hash('arm', base, keyed,
                        samples_hash if 'gan' in arm else '')
        steps.run(os.path.join(done, f'arm_{ARM_DIRS[arm]}.json'),
                  f'{tag} arm {arm}', h,
                  train_arm, sub, arm_dir, (repeat, fold, seed, arm),
                  dirs=(arm_dir,), also=legacy)
  progress.bar.close()
  if config.merge and steps.missing:
    raise UserInputError(
        f'config.merge=True: {len(steps.missing)} step(s) of the study in '
        f'{workdir} are not finished (e.g. {", ".join(steps.missing[:3])}); '
        'run the missing shards (--config.shard=i/N) first')
  if shard_n > 1 and not config.merge:
    others = [c for c in cells if c not in mine]
    unfinished = [c for c in others if not _cell_finished(
        cell_dir(workdir, *c), arms)]
    if unfinished:
      logging.info('shard %d/%d done; %d cell(s) of other shards not '
                   'finished yet: the last shard to finish (or '
                   '--config.merge=True) writes the report', shard_i,
                   shard_n, len(unfinished))
      print(f'shard {shard_i}/{shard_n} finished its {len(mine)} cell(s); '
            f'{len(unfinished)} cell(s) of other shards are not finished: '
            'the report is written by the last shard to finish or by '
            '--config.merge=True', flush=True)
      return {}
    # The last shard to finish: check every step's hash, then report
    # (under this shard's locks).
    return _run_study(_as_merge(config), workdir)

  t = time.time()
  written = _write_outputs(config, workdir, prepared, folds, repeats, arms,
                           prep_seconds, wall0, split_seeds, quality_hashes)
  logging.info('report in %.1f s: %s', time.time() - t, sorted(written))
  return written


def _cell_finished(cell: str, arms: list[str]) -> bool:
  done = os.path.join(cell, 'done')
  return all(os.path.exists(os.path.join(done, f'arm_{ARM_DIRS[a]}.json'))
             for a in arms)


def _as_merge(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  merged = config.copy_and_resolve_references()
  with merged.unlocked():
    merged.merge = True
    merged.shard = ''
  return merged


def _write_manifest(path: str, manifest: dict, recompute: bool) -> None:
  """Writes a cell manifest once; a rerun must find the same splits."""
  if os.path.exists(path):
    old = _read_json(path)
    if {k: old.get(k) for k in manifest} == manifest:
      return
    if not recompute:
      raise UserInputError(
          f'{path} holds other splits than config.data gives now (data or '
          'split options changed?): use a new --workdir, or set '
          '--config.on_config_change=recompute')
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
            counts: dict[str, int], samples_dir: str, seed: int,
            manifest: dict) -> dict:
  """Writes counts[c] images of class c to samples_dir/<c>/ (+ manifest).

  The sampler writes each class folder and merges the GANs' training
  records into samples_dir/manifest.json; the classifier checks them.
  """
  # A crash mid-sampling leaves partial folders: start them afresh.
  shutil.rmtree(samples_dir, ignore_errors=True)
  for label, name in enumerate(names):
    if config.gan_mode == 'per_class':
      sample_lib.sample(gan_dirs[name], counts[name], samples_dir,
                        seed=seed * 1000 + label)
    else:
      sample_lib.sample(gan_dirs['conditional'], counts[name], samples_dir,
                        seed=seed * 1000, label=label)
  path = os.path.join(samples_dir, 'manifest.json')
  top = _read_json(path) if os.path.exists(path) else {}
  top.update({'repeat': manifest['repeat'], 'fold': manifest['fold'],
              'seed': seed, 'class_names': names, 'per_class': counts,
              'class_balance': config.synthetic_class_balance,
              'gan_mode': config.gan_mode,
              'split_fingerprint': manifest['split_fingerprint'],
              'gan_train_ids': manifest['gan_train_ids']})
  _write_json(path, top)
  return {'per_class': counts}


def _quality(config, prep, fold: int, samples_dir: str, out_dir: str,
             seed: int) -> dict:
  """Synthetic-image metrics of a cell against its held-out real images.

  Reference sets: the fold's real training images (feature network, TRTR,
  nearest neighbours) and its test images (held out from every GAN and
  classifier of the cell). Per class and for all classes together.
  """
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import transforms  # pylint: disable=g-import-not-at-top
  from resnet_jax import gan_metrics  # pylint: disable=g-import-not-at-top
  res = int(config.gan.model.resolution)
  names = list(prep.class_names)
  real = {}
  for role in ('train', 'test'):
    real[role] = pipeline.load_arrays(prep, config.data, role=role,
                                      resolution=res, fold=fold,
                                      class_filter=-1)[:2]
  synth = pipeline.load_synthetic(samples_dir, names,
                                  list(range(len(names))), res,
                                  prep.channels)
  syn_x = np.stack([transforms.to_float(e['image']) for e in synth])
  syn_y = np.array([int(e['label']) for e in synth], np.int32)
  results = {}
  # Per class (each class's GAN against that class's real images), then
  # all classes together (feature network trained on the labels, TSTR).
  for c, name in [*enumerate(names), (-1, 'all')]:
    pick = lambda x, y: (x, y) if c < 0 else (x[y == c], y[y == c])
    tr, ho, sy = (pick(*real['train']), pick(*real['test']),
                  pick(syn_x, syn_y))
    sub_dir = os.path.join(out_dir, name)
    m = gan_metrics.evaluate(tr[0], tr[1], ho[0], ho[1], sy[0], sy[1],
                             config=config.quality.metrics, seed=seed,
                             workdir=sub_dir)
    m['gate'] = gan_metrics.quality_gate(m, config.quality.metrics)
    _write_json(os.path.join(sub_dir, 'gan_metrics.json'), m)
    results[name] = json.loads(json.dumps(m, default=_json_default))
  return {'metrics': results}


def _row(repeat: int, fold: int, seed: int, arm: str, out: dict) -> dict:
  """results.csv row: test metrics, then extras.

  Extras: tuned_* (test at the threshold chosen on val), val_*, threshold,
  n_train / n_test and steps. Undefined metrics (None in results.json)
  become NaN.
  """
  if 'test' not in out:
    raise RuntimeError(f'resnet train_and_evaluate returned no test '
                       f'metrics for fold {fold} arm {arm}: {sorted(out)}')
  row = {'repeat': repeat, 'fold': fold, 'seed': seed, 'arm': arm}
  for split, prefix in (('test', ''), ('test_at_val_threshold', 'tuned_'),
                        ('val', 'val_')):
    for k, v in (out.get(split) or {}).items():
      if isinstance(v, (int, float, np.number)) and k != 'n':
        row[prefix + k] = float(v)
  for k, col in (('threshold', 'threshold'), ('num_train', 'n_train'),
                 ('num_test', 'n_test'), ('steps', 'steps')):
    if isinstance(out.get(k), (int, float)):
      row[col] = float(out[k])
  for m in report.METRICS:
    if row.get(m) is None:
      row[m] = float('nan')
  return row


def _gate(quality: list[dict], metrics_config) -> dict | None:
  """The study's quality gate, on metrics pooled over the cells.

  One cell's C2ST tests on a few dozen images, so a single judgement is
  noisy and an AND over dozens of them fails decent GANs by chance. The gate
  therefore pools each cell's all-class judgement: C2ST accuracy weighted by
  its test size, exact copies summed, the nearest-neighbour ratio and the
  MS-SSIMs averaged; `gan_metrics.quality_gate` then applies the thresholds
  of config.quality.metrics. Per-cell judgements stay in the report's table.
  """
  from resnet_jax import gan_metrics  # pylint: disable=g-import-not-at-top
  rows = [q for q in quality if q.get('class') == 'all']
  if not rows:
    return None

  def mean(key):
    v = [float(q[key]) for q in rows if q.get(key) is not None]
    return float(np.mean(v)) if v else None

  n = [(q.get('c2st_accuracy'), q.get('c2st_n') or 0) for q in rows]
  n = [(a, k) for a, k in n if a is not None and k]
  pooled = {
      'c2st_accuracy': (sum(a * k for a, k in n) / sum(k for _, k in n)
                        if n else mean('c2st_accuracy')),
      'c2st_n': sum(k for _, k in n),
      'nn_distance_ratio': mean('nn_distance_ratio'),
      'num_exact_copies': sum(int(q.get('num_exact_copies') or 0)
                              for q in rows),
      'num_synthetic': sum(int(q.get('num_synthetic') or 0) for q in rows),
      'ms_ssim_synthetic': mean('ms_ssim_synthetic'),
      'ms_ssim_real': mean('ms_ssim_real'),
  }
  gate = gan_metrics.quality_gate(pooled, metrics_config)
  gate['pooled'] = pooled
  gate['reasons'] = [f'pooled over {len(rows)} cells: {r}'
                     for r in gate['reasons']]
  return gate


def _design(config) -> str:
  mode = config.classifier.get('synthetic_mode', 'add')
  ratio = config.classifier.data.synthetic_ratio
  n_rep, k = int(config.num_repeats), int(config.data.num_folds)
  gan = ('one unconditional PGGAN per class' if config.gan_mode ==
         'per_class' else 'one class-conditional PGGAN')
  how = ('the `gan` arms see the same real images as `none` / `classic` '
         f'plus synthetic ones (a fraction {ratio} of each batch is '
         f'synthetic and the run is 1/(1-{ratio}) times longer): '
         '"add GAN samples", as in Frid-Adar et al. 2018 and Han et al. '
         '2019. Besides the synthetic images themselves, these arms also '
         'take more optimiser steps (a longer cosine schedule) and their '
         'BatchNorm statistics are partly synthetic: a difference to '
         '`none` / `classic` can come from any of the three'
         if mode == 'add' else
         'all arms take the same number of steps, so in the `gan` arms a '
         f'fraction {ratio} of every batch is synthetic *instead* of real: '
         '"replace part of each batch with GAN samples at equal compute"')
  balance = ('in proportion to the class prevalence of the real training '
             'split' if config.synthetic_class_balance == 'prevalence'
             else 'in equal numbers per class (this shifts the class prior '
             'of the training batches)')
  return (f'Repeated stratified {k}-fold cross-validation, {n_rep} '
          f'repeat(s), each with its own split seed; per (repeat, fold) '
          f'cell, {gan} trained on that fold\'s training images only, '
          f'{config.num_synthetic_per_class * 2} synthetic images per cell '
          f'(for two classes) sampled {balance}, and the four arms trained '
          'from the same initialisation and real-data order. '
          f'Design of the synthetic arms: {how}.')


def _write_outputs(config, workdir, prepared, folds, repeats, arms,
                   prep_seconds, wall0, split_seeds,
                   quality_hashes) -> dict[str, str]:
  """Rows, predictions, samples, quality and timings -> report."""
  rows, preds = [], collections.defaultdict(list)
  stage = collections.defaultdict(float)
  quality = []
  first_samples = samples_title = ''
  ratios = []
  for repeat in repeats:
    for fold in folds:
      cell = cell_dir(workdir, repeat, fold)
      done = os.path.join(cell, 'done')
      markers = {}
      for name in sorted(os.listdir(done)) if os.path.isdir(done) else []:
        if not name.endswith('.json'):
          continue
        marker = markers[name] = _read_json(os.path.join(done, name))
        sec = float(marker.get('seconds', 0))
        key = ('GAN training' if name.startswith('gan_') else
               'sampling' if name.startswith('samples') else
               'synthetic-image quality' if name.startswith('quality') else
               'classifier, arm ' + _ARM_OF_DIR.get(name[4:-5], name))
        stage[key] += sec
        if (name == 'quality.json' and marker.get('config_hash') ==
            quality_hashes.get((repeat, fold))):
          for cls, m in marker['metrics'].items():
            quality.append({'repeat': repeat, 'fold': fold, 'class': cls,
                            **{k: v for k, v in m.items()
                               if not isinstance(v, (dict, list))},
                            'passed': m['gate']['passed'],
                            'reasons': m['gate']['reasons']})
      if not first_samples and os.path.exists(os.path.join(done,
                                                           'samples.json')):
        first_samples = os.path.join(cell, 'samples')
        samples_title = f'synthetic samples, repeat {repeat} fold {fold}'
      m = _read_json(os.path.join(cell, 'manifest.json'))
      ratios.append(len(m['test']) / max(len(m['train']), 1))
      for arm in arms:
        rows.append(markers[f'arm_{ARM_DIRS[arm]}.json']['row'])
        pred = os.path.join(cell, 'arms', ARM_DIRS[arm],
                            'test_predictions.csv')
        if os.path.exists(pred):
          preds[arm].append(report.read_predictions(pred))
  order = ['GAN training', 'sampling', 'synthetic-image quality'] + [
      f'classifier, arm {a}' for a in ARMS]
  stage = {k: stage[k] for k in sorted(
      stage, key=lambda k: order.index(k) if k in order else len(order))}
  timings = {'data preparation (first run)': prep_seconds, **stage,
             'compute, all runs (sum of the above)': prep_seconds
             + sum(stage.values()),
             'wall time of this run (before the report)':
                 time.time() - wall0}
  prepared0 = prepared[repeats[0]]
  samples = (report.load_samples(first_samples, prepared0.class_names,
                                 config.report.samples_per_class)
             if first_samples else None)
  r0, f0 = repeats[0], folds[0]
  sub_configs = {}
  if any('gan' in a for a in arms):
    label = 0 if config.gan_mode == 'per_class' else -1
    gan_sub = sub_config(config.gan, config.data, seed=config.seed,
                         data__fold=f0, data__class_filter=label,
                         data__split_seed=split_seeds[r0])
    if config.gan_mode == 'conditional':
      _set_conditional(gan_sub)
    sub_configs[f'GAN (repeat {r0}, fold {f0}, class filter {label})'] = (
        gan_sub.to_json_best_effort(indent=2))
  arm = arms[-1]
  cls_sub = sub_config(
      config.classifier, config.data, seed=config.seed, arm=arm,
      data__fold=f0, data__class_filter=-1, data__split_seed=split_seeds[r0],
      data__synthetic_dir=(os.path.join(cell_dir(workdir, r0, f0), 'samples')
                           if 'gan' in arm else ''))
  sub_configs[f'classifier (arm {arm}, repeat {r0}, fold {f0})'] = (
      cls_sub.to_json_best_effort(indent=2))
  kwargs = dict(primary_metric=config.report.primary_metric,
                confidence=config.report.confidence,
                test_train_ratio=float(np.mean(ratios)))
  gate = _gate(quality, config.quality.metrics)
  written = report.write_report(
      workdir, report.sort_rows(rows), predictions=dict(preds),
      samples=samples, samples_title=samples_title,
      config_json=config.to_json_best_effort(indent=2),
      data_summary=data_summary(prepared0, config.data, split_seeds),
      timings=timings, title=config.report.title,
      smoke_note=config.report.smoke_note, gate=gate,
      gan_quality=quality or None, design=_design(config),
      sub_configs=sub_configs, provenance=config.report.provenance,
      **kwargs)
  path = os.path.join(workdir, 'summary.json')
  files.write_text(path, report.summary_json(rows, gate=gate, **kwargs))
  written['summary.json'] = path
  return written
