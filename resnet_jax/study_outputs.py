"""The study's outputs: results.csv rows, the pooled gate, the report.

`write_outputs` gathers the finished cells' markers (rows, predictions,
quality metrics, timings) and writes results.csv, report.md, the plots and
summary.json through `report.py`.
"""

import collections
import os
import time

import numpy as np

from input_pipeline import files
from resnet_jax import report
from resnet_jax import study_cells
from resnet_jax import study_config
from resnet_jax import study_steps


def result_row(repeat: int, fold: int, seed: int, arm: str, out: dict) -> dict:
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


def _pool(rows: list[dict]) -> dict:
  """One class's measurements pooled over cells: C2ST accuracy weighted by
  its test size, exact copies summed, the nearest-neighbour ratio and the
  MS-SSIMs averaged."""

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
  # An exact interval only where the judgements are independent: with
  # several repeats the same real test images come back in each.
  if pooled['c2st_n'] and len({q.get('repeat') for q in rows}) == 1:
    from resnet_jax import gan_classifiers  # pylint: disable=g-import-not-at-top
    pooled['c2st_ci_low'], pooled['c2st_ci_high'] = (
        gan_classifiers.clopper_pearson(
            round(pooled['c2st_accuracy'] * pooled['c2st_n']),
            pooled['c2st_n']))
  return pooled


def pooled_gate(quality: list[dict], metrics_config,
                max_failed_fraction: float = 0.25) -> dict | None:
  """The study's quality gate: each class pooled over the cells, and how
  many GANs fail on their own.

  Each class's synthetic images are judged against that class's held-out
  images (its own GAN, in the per-class mode), and so are both classes
  together ('all'); the all-class MS-SSIM alone would hide one class's
  collapse among the cross-class pairs. A cell's measurement tests on 20-odd
  held-out images a class, so for each class (and 'all') the cells are
  pooled (`_pool`) and `gan_metrics.quality_gate` applies the thresholds of
  config.quality.metrics to the pooled figures: the study passes only where
  every one of them does, and where at most `max_failed_fraction` of the
  per-class measurements (cell x class) fail the gate on their own. A decent
  GAN fails one such measurement now and then by chance (at a true C2ST
  accuracy of 0.75, 19 of 20 correct has probability 0.024; at 0.8, 0.069),
  so a few failures among dozens are expected; more than a quarter are not.
  Per-cell judgements stay in the report's table.

  Returns gan_metrics.quality_gate's {'passed', 'reasons', 'skipped'} plus
  'pooled' (all classes), 'classes' ({class: its pooled figures and
  verdict}), 'failed' ([[repeat, fold, class]] that failed on their own)
  and 'num_measurements' (per-class measurements); None without quality
  rows.
  """
  from resnet_jax import gan_metrics  # pylint: disable=g-import-not-at-top
  by_class = collections.defaultdict(list)
  for q in quality:
    by_class[q.get('class')].append(q)
  if not by_class:
    return None
  reasons, skipped, classes = [], set(), {}
  for cls in sorted(by_class, key=lambda c: (c != 'all', str(c))):
    rows = by_class[cls]
    pooled = _pool(rows)
    judged = gan_metrics.quality_gate(pooled, metrics_config)
    what = 'all classes' if cls == 'all' else f'class {cls!r}'
    classes[cls] = {**pooled, 'passed': judged['passed'], 'cells': len(rows)}
    cells = f'{len(rows)} cell' + ('s' if len(rows) != 1 else '')
    reasons += [f'{what}, pooled over {cells}: {r}'
                for r in judged['reasons']]
    skipped.update(judged.get('skipped', ()))
  per_class = [q for q in quality if q.get('class') != 'all'
               and 'passed' in q]
  failed = [q for q in per_class if not q['passed']]
  if failed and len(failed) > max_failed_fraction * len(per_class):
    reasons.append(
        f'{len(failed)} of the {len(per_class)} per-class measurements '
        f'failed on their own (more than {max_failed_fraction:.0%}: '
        'config.report.gate_max_failed_fraction), e.g. ' + ', '.join(
            f"repeat {q.get('repeat')} fold {q.get('fold')} {q.get('class')}"
            for q in failed[:3]))
  return {'passed': not reasons, 'reasons': reasons,
          'skipped': sorted(skipped),
          'pooled': classes.get('all'), 'classes': classes,
          'failed': [[q.get('repeat'), q.get('fold'), q.get('class')]
                     for q in failed],
          'num_measurements': len(per_class)}


def smoke_note(config, arms) -> str:
  """config.report.smoke_note, plus a warning when the study's GANs are
  too short to test GAN augmentation (config.report.smoke_gan_kimg)."""
  note = config.report.smoke_note
  kimg = float(config.gan.total_kimg)
  if (any('gan' in a for a in arms)
      and kimg <= float(config.report.get('smoke_gan_kimg', 0.0))):
    note = ' '.join(filter(None, [note, (
        f'Its GANs train {kimg:g} kimg each, far too short for PGGAN, so '
        'its `gan` arms are a smoke test of the machinery, not a test of '
        'GAN augmentation; `configs/study.py:cpu32` (32x32) and '
        '`configs/study.py:gpu` train GANs that can pass the quality '
        'gate.')]))
  return note


def describe_design(config) -> str:
  """The report's one-paragraph description of the study's design."""
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


def write_outputs(config, workdir, prepared, folds, repeats, arms,
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
      cell = study_cells.cell_dir(workdir, repeat, fold)
      done = os.path.join(cell, 'done')
      markers = {}
      for name in sorted(os.listdir(done)) if os.path.isdir(done) else []:
        if not name.endswith('.json'):
          continue
        marker = markers[name] = study_steps.read_json(os.path.join(done, name))
        sec = float(marker.get('seconds', 0))
        key = ('GAN training' if name.startswith('gan_') else
               'sampling' if name.startswith('samples') else
               'synthetic-image quality' if name.startswith('quality') else
               'classifier, arm ' + study_cells.ARM_OF_DIR.get(name[4:-5],
                                                               name))
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
      m = study_steps.read_json(os.path.join(cell, 'manifest.json'))
      ratios.append(len(m['test']) / max(len(m['train']), 1))
      for arm in arms:
        rows.append(markers[f'arm_{study_cells.ARM_DIRS[arm]}.json']['row'])
        pred = os.path.join(cell, 'arms', study_cells.ARM_DIRS[arm],
                            'test_predictions.csv')
        if os.path.exists(pred):
          preds[arm].append(report.read_predictions(pred))
  order = ['GAN training', 'sampling', 'synthetic-image quality'] + [
      f'classifier, arm {a}' for a in report.ARMS]
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
    gan_sub = study_config.sub_config(
        config.gan, config.data, seed=config.seed, data__fold=f0,
        data__class_filter=label, data__split_seed=split_seeds[r0])
    if config.gan_mode == 'conditional':
      study_config.set_conditional(gan_sub)
    sub_configs[f'GAN (repeat {r0}, fold {f0}, class filter {label})'] = (
        gan_sub.to_json_best_effort(indent=2))
  arm = arms[-1]
  cls_sub = study_config.sub_config(
      config.classifier, config.data, seed=config.seed, arm=arm,
      data__fold=f0, data__class_filter=-1, data__split_seed=split_seeds[r0],
      data__synthetic_dir=(
          os.path.join(study_cells.cell_dir(workdir, r0, f0), 'samples')
          if 'gan' in arm else ''))
  sub_configs[f'classifier (arm {arm}, repeat {r0}, fold {f0})'] = (
      cls_sub.to_json_best_effort(indent=2))
  kwargs = dict(primary_metric=config.report.primary_metric,
                confidence=config.report.confidence,
                test_train_ratio=float(np.mean(ratios)))
  gate = pooled_gate(quality, config.quality.metrics,
                     config.report.gate_max_failed_fraction)
  written = report.write_report(
      workdir, report.sort_rows(rows), predictions=dict(preds),
      samples=samples, samples_title=samples_title,
      config_json=config.to_json_best_effort(indent=2),
      data_summary=study_cells.data_summary(prepared0, config.data,
                                            split_seeds),
      timings=timings, title=config.report.title,
      smoke_note=smoke_note(config, arms), gate=gate,
      gan_quality=quality or None, design=describe_design(config),
      sub_configs=sub_configs, provenance=config.report.provenance,
      **kwargs)
  path = os.path.join(workdir, 'summary.json')
  files.write_text(path, report.summary_json(rows, gate=gate, **kwargs))
  written['summary.json'] = path
  return written
