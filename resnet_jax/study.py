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

This module runs the cells; the study's configuration (sub-run configs,
checks, key names) is in study_config.py, the hashed resumable steps in
study_steps.py, a cell's splits and leakage checks in study_cells.py, and
results.csv, the pooled gate and the report in study_outputs.py.
"""

import json
import os
import shutil
import sys
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from input_pipeline import sharding
from input_pipeline import workdir as workdir_lib
from input_pipeline.errors import UserInputError
from resnet_jax import study_cells
from resnet_jax import study_config
from resnet_jax import study_outputs
from resnet_jax import study_steps


def setup_compilation_cache(cache_dir: str, min_compile_secs: float) -> str:
  """Persistent XLA cache: repeated cells and reruns skip recompiling.

  '' = ~/.cache/pggan_jax/jax_cache (the study always uses one).
  """
  return sharding.setup_compilation_cache(
      cache_dir or os.path.join('~', '.cache', 'pggan_jax', 'jax_cache'),
      min_compile_secs)


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
  arms = study_config.check_config(config)
  if not config.merge:  # a merge trains nothing, maybe on other devices
    study_config.check_sub_configs(config, arms)
  shard_i, shard_n = study_config.parse_shard(config.shard)
  if config.shard and not config.merge:
    job = f'study shard {config.shard}'
    with workdir_lib.lock(workdir, job, shared=True), workdir_lib.lock(
        workdir, job, name=f'.lock-shard-{shard_i}-of-{shard_n}'):
      return _run_study(config, workdir)
  with workdir_lib.lock(workdir, 'study'):
    return _run_study(config, workdir)


def _run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  arms = study_config.check_config(config)
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
  folds = study_config.selected_folds(
      config, int(prepared0.manifest['num_folds']))
  os.makedirs(workdir, exist_ok=True)
  study_steps.write_json(os.path.join(workdir, 'splits.json'),
                         prepared0.manifest)
  # The study's own config, for the record; every step checks its own hash.
  study_steps.write_json(os.path.join(workdir, 'config.json'),
                         json.loads(config.to_json_best_effort()))
  # The first run's time (later runs read the cached dataset).
  prep_marker = os.path.join(workdir, 'data_prepared.json')
  if not os.path.exists(prep_marker):
    study_steps.write_json(prep_marker, {'seconds': prep_seconds})
  prep_seconds = study_steps.read_json(prep_marker)['seconds']
  names = list(prepared0.class_names)
  use_gan = any('gan' in a for a in arms)
  use_quality = use_gan and bool(config.quality.enabled)
  gan_units = ((len(names) if config.gan_mode == 'per_class' else 1) + 1
               + int(use_quality))
  # Cells (repeat, fold) are independent: shard i of N runs every N-th
  # cell, so a job array of N tasks runs one study and no GAN twice.
  shard_i, shard_n = study_config.parse_shard(config.shard)
  cells = [(r, f) for r in repeats for f in folds]
  mine = set(cells if config.merge else cells[shard_i::shard_n])
  progress = study_steps.Progress(
      len(mine) * (len(arms) + (gan_units if use_gan else 0)))
  steps = study_steps.Steps(progress,
                            config.on_config_change == 'recompute',
                            check_only=bool(config.merge))
  dup_groups = prepared0.manifest.get('duplicate_groups', [])
  # What the stored pixels are, not how they were made: a cache-version
  # bump that leaves them unchanged does not invalidate finished steps.
  data_fp = prepared0.content_fingerprint

  ignore = study_steps.RESUME_IGNORED_KEYS
  train_gan = study_config.in_block('gan', lambda c, d: _metrics(
      pggan_train.train_and_evaluate(c, d, resume_ignore=ignore)))
  train_arm = study_config.in_block(
      'classifier', lambda c, d, cell_arm: {'row': study_outputs.result_row(
          *cell_arm, resnet_train.train_and_evaluate(
              c, d, resume_ignore=ignore))})
  # The quality markers the report may read (a stale one never enters it).
  quality_hashes = {}

  def run_cell(repeat: int, fold: int, backend: str | None) -> None:
    """Runs (merge: checks) one cell's steps; `backend` names the JAX
    backend their hashes are taken for (None: this process's)."""

    def cell_hash(*parts, ignore=()):
      return study_steps.config_hash(*parts, ignore=ignore, backend=backend)

    prep = prepared[repeat]
    seed = int(config.seed) + repeat
    cell = study_cells.cell_dir(workdir, repeat, fold)
    done = os.path.join(cell, 'done')
    tag = f'repeat {repeat} fold {fold}'
    manifest = study_cells.cell_manifest(prep, fold, seed, repeat)
    study_cells.check_leakage(manifest, dup_groups,
                              prep.manifest.get('patients'))
    study_cells.write_manifest(os.path.join(cell, 'manifest.json'),
                               manifest, steps.recompute)
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
        sub = study_config.sub_config(config.gan, config.data, seed=seed,
                                      data__class_filter=label,
                                      **cell_data)
        if config.gan_mode == 'conditional':
          study_config.set_conditional(sub)
        # A key added since (pggan_train.LEGACY_ABSENT) hashes as before
        # at the value that computes what older GANs did.
        gan_hashes[name] = cell_hash('gan', base, _without(
            sub, [k for k, v in pggan_train.LEGACY_ABSENT.items()
                  if sub.get(k) == v]), ignore=study_steps.GAN_LOG_KEYS)
        steps.run(os.path.join(done, f'gan_{name}.json'),
                  f'{tag} GAN {name}', gan_hashes[name], train_gan, sub,
                  gan_dir, dirs=(gan_dir,))
      counts = study_cells.synthetic_counts(
          manifest, config.num_synthetic_per_class * len(names),
          config.synthetic_class_balance)
      samples_hash = cell_hash(
          'samples', base, gan_hashes, counts, config.gan_mode)
      steps.run(os.path.join(done, 'samples.json'), f'{tag} sampling',
                samples_hash, _sample, sample_lib, config,
                {n: d for n, (d, _) in gans.items()}, names, counts,
                samples_dir, seed, manifest)
      if use_quality:
        quality_hashes[(repeat, fold)] = cell_hash('quality', samples_hash,
                                                   config.quality)
        steps.run(os.path.join(done, 'quality.json'),
                  f'{tag} synthetic-image quality',
                  quality_hashes[(repeat, fold)],
                  study_config.in_block('quality', _quality), config,
                  prep, fold, samples_dir, os.path.join(cell, 'quality'),
                  seed, dirs=(os.path.join(cell, 'quality'),))

    for arm in arms:
      sub = study_config.sub_config(
          config.classifier, config.data, seed=seed, arm=arm,
          data__class_filter=-1,
          data__synthetic_dir=samples_dir if 'gan' in arm else '',
          **cell_data)
      arm_dir = os.path.join(cell, 'arms', study_cells.ARM_DIRS[arm])
      # The synthetic images are named by samples_hash and their folder
      # by its place in the workdir, so a moved or copied workdir resumes.
      # Markers written before hashed the absolute path (`legacy`).
      keyed = sub.copy_and_resolve_references()
      legacy = []
      if keyed.data.synthetic_dir:
        keyed.data.synthetic_dir = os.path.relpath(samples_dir, workdir)
        legacy.append(cell_hash('arm', base, sub, samples_hash))
      h = cell_hash('arm', base, keyed, samples_hash if 'gan' in arm else '')
      # Arms finished before the classifier's keys in
      # resnet_train.LEGACY_ABSENT existed streamed their batches by grain:
      # data_on_device='no' computes what they did.
      if sub.get('data_on_device') == 'no':
        legacy.append(cell_hash(
            'arm', base, _without(keyed, resnet_train.LEGACY_ABSENT),
            samples_hash if 'gan' in arm else ''))
        if keyed.data.synthetic_dir:
          legacy.append(cell_hash(
              'arm', base, _without(sub, resnet_train.LEGACY_ABSENT),
              samples_hash))
      steps.run(os.path.join(done, f'arm_{study_cells.ARM_DIRS[arm]}.json'),
                f'{tag} arm {arm}', h,
                train_arm, sub, arm_dir, (repeat, fold, seed, arm),
                dirs=(arm_dir,), also=tuple(legacy))

  # Repeat-major: every fold of the first repeat finishes before the next
  # repeat starts, so a partial run already covers all folds.
  merge_missing = []
  for repeat in repeats:
    for fold in folds:
      if (repeat, fold) not in mine:
        continue
      if not config.merge:
        run_cell(repeat, fold, None)
        continue
      # A merge trains nothing, maybe on another backend than the
      # shards' (a CPU login node after GPU jobs): a cell counts as
      # finished when all its steps hold one backend's hashes.
      tried = []
      backends = study_steps.hash_backends()
      for backend in backends:
        steps.missing = []
        run_cell(repeat, fold, backend)
        if not steps.missing:
          if backend != backends[0]:
            logging.info('repeat %d fold %d: finished on backend %s',
                         repeat, fold, backend)
          break
        tried.append(steps.missing)
      else:
        # As the backend with the fewest unfinished steps sees them.
        merge_missing.extend(min(tried, key=len))
  steps.missing = merge_missing
  progress.bar.close()
  if config.merge and steps.missing:
    raise study_steps.StepsMissing(
        f'config.merge=True: {len(steps.missing)} step(s) of the study in '
        f'{workdir} are not finished (e.g. {", ".join(steps.missing[:3])}); '
        'run the study (or its missing shards, --config.shard=i/N) first')
  if shard_n > 1 and not config.merge:
    others = [c for c in cells if c not in mine]
    unfinished = [c for c in others if not _cell_finished(
        study_cells.cell_dir(workdir, *c), arms)]
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
    # (under this shard's locks). In a rerun with recompute, other shards'
    # cells may still hold steps of the old configuration (their shards
    # still recomputing): the report is left to a later shard or a merge,
    # said loudly. Otherwise stale steps are an error (shards started
    # with different settings).
    try:
      return _run_study(study_config.as_merge(config), workdir)
    except study_steps.StepsMissing as e:
      if not steps.recompute:
        raise
      logging.warning('shard %d/%d done; report not written: %s', shard_i,
                      shard_n, e)
      print(f'shard {shard_i}/{shard_n} finished its {len(mine)} cell(s); '
            f'the report is not written yet: {e}', file=sys.stderr,
            flush=True)
      return {}

  t = time.time()
  written = study_outputs.write_outputs(
      config, workdir, prepared, folds, repeats, arms, prep_seconds, wall0,
      split_seeds, quality_hashes)
  logging.info('report in %.1f s: %s', time.time() - t, sorted(written))
  print(f"study report: {os.path.join(workdir, 'report.md')}", flush=True)
  return written


def _without(config: ml_collections.ConfigDict,
             keys) -> ml_collections.ConfigDict:
  """A copy of `config` without `keys` (dotted paths: 'model.upsample')."""
  out = config.copy_and_resolve_references()
  for k in keys:
    *parents, leaf = k.split('.')
    node = out
    for p in parents:
      node = node[p] if isinstance(node, ml_collections.ConfigDict) and (
          p in node) else None
    if isinstance(node, ml_collections.ConfigDict) and leaf in node:
      with node.unlocked():
        del node[leaf]
  return out


def _cell_finished(cell: str, arms: list[str]) -> bool:
  done = os.path.join(cell, 'done')
  return all(os.path.exists(
      os.path.join(done, f'arm_{study_cells.ARM_DIRS[a]}.json'))
             for a in arms)


def _metrics(out: Any) -> dict:
  """JSON-safe copy of a train_and_evaluate result."""
  return {'metrics': json.loads(json.dumps(
      out or {}, default=study_steps.json_default))}


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
  top = study_steps.read_json(path) if os.path.exists(path) else {}
  top.update({'repeat': manifest['repeat'], 'fold': manifest['fold'],
              'seed': seed, 'class_names': names, 'per_class': counts,
              'class_balance': config.synthetic_class_balance,
              'gan_mode': config.gan_mode,
              'split_fingerprint': manifest['split_fingerprint'],
              'gan_train_ids': manifest['gan_train_ids']})
  study_steps.write_json(path, top)
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
    study_steps.write_json(os.path.join(sub_dir, 'gan_metrics.json'), m)
    results[name] = json.loads(json.dumps(m, default=study_steps.json_default))
  return {'metrics': results}


