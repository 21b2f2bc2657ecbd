"""The study's outputs from its rows: results.csv, report.md and plots.

Pure functions of the per-cell results (one row per repeat x fold x arm), the
pooled test predictions and the synthetic samples; nothing here trains or
reads a checkpoint, so the report of a finished study can be rebuilt (or
unit-tested) in a second. The design is repeated k-fold cross-validation: a
cell is one (repeat, fold) pair, and arms are compared on the same cells
(see `stats` for the tests). The figures are drawn by `plots`.
"""

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from input_pipeline import files
from resnet_jax import plots
from resnet_jax import stats

METRICS = ('accuracy', 'sensitivity', 'specificity', 'balanced_accuracy',
           'f1', 'auc')
# A cell is (repeat, fold); seed is the cell's training seed.
KEY_COLUMNS = ('repeat', 'fold', 'seed', 'arm')
# results.csv starts with exactly these columns; extra ones follow.
COLUMNS = KEY_COLUMNS + METRICS
_INT_COLUMNS = ('repeat', 'fold', 'seed')
ARMS = ('none', 'classic', 'gan', 'classic+gan')
# The two pre-specified primary comparisons (A, B): A - B over the cells both
# arms ran on; Holm-adjusted together on the primary metric.
COMPARISONS = (('classic+gan', 'classic'), ('gan', 'none'))
# Synthetic-image quality keys, in the order of the report's table.
QUALITY_KEYS = ('swd', 'fd', 'kid', 'precision', 'recall', 'c2st_accuracy',
                'c2st_ci_low', 'c2st_ci_high', 'tstr_accuracy',
                'trtr_accuracy', 'nn_distance_ratio', 'ms_ssim_synthetic',
                'ms_ssim_real', 'spectral_excess', 'spectral_excess_null95',
                'spectral_excess_p', 'spectral_deficit', 'spectral_deficit_p')

Row = Mapping[str, Any]

# The figures live in `plots`; these names keep `report.<name>` working.
plot_roc = plots.plot_roc
plot_arms = plots.plot_arms
plot_samples = plots.plot_samples
load_samples = plots.load_samples


def write_results_csv(rows: Sequence[Row], path: str) -> None:
  """One line per row: COLUMNS first, then any extra keys (sorted)."""
  for row in rows:
    missing = [c for c in COLUMNS if c not in row]
    if missing:
      raise ValueError(f'result row {dict(row)} lacks columns {missing}')
  extra = sorted({k for row in rows for k in row} - set(COLUMNS))
  columns = list(COLUMNS) + extra
  with files.atomic_open(path, newline='') as f:
    writer = csv.DictWriter(f, columns, restval='', lineterminator='\n')
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row.get(k, '') for k in columns})


def read_results_csv(path: str) -> list[dict[str, Any]]:
  """Inverse of `write_results_csv`: ints for repeat/fold/seed, else floats."""
  rows = []
  with open(path, newline='') as f:
    for raw in csv.DictReader(f):
      row: dict[str, Any] = {}
      for k, v in raw.items():
        if k in _INT_COLUMNS:
          row[k] = int(v)
        elif k == 'arm':
          row[k] = v
        else:
          try:
            row[k] = float(v)
          except ValueError:
            row[k] = v
      rows.append(row)
  return rows


def sort_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
  """Rows sorted by (repeat, fold, arm order) for stable CSV output."""
  order = {a: i for i, a in enumerate(ARMS)}
  return sorted((dict(r) for r in rows),
                key=lambda r: (r['repeat'], r['fold'],
                               order.get(r['arm'], len(order)), r['arm'],
                               r.get('seed', 0)))


def _arms_present(rows: Sequence[Row]) -> list[str]:
  seen = {r['arm'] for r in rows}
  return [a for a in ARMS if a in seen] + sorted(seen - set(ARMS))


def arm_summaries(rows: Sequence[Row], *, confidence: float = 0.95,
                  test_train_ratio: float | None = None
                  ) -> dict[str, dict[str, dict[str, float]]]:
  """{arm: {metric: stats.logit_interval(...)}} over that arm's cells.

  n, mean, sd and a range-respecting interval (ci_low, ci_high) of the mean,
  with the corrected variance sd² (1/n + test_train_ratio) when the ratio
  n_test/n_train is given (else sd²/n, which ignores the dependence).
  """
  out = {}
  for arm in _arms_present(rows):
    sel = [r for r in rows if r['arm'] == arm]
    out[arm] = {
        m: stats.logit_interval([float(r[m]) for r in sel], confidence,
                                test_train_ratio=test_train_ratio)
        for m in METRICS}
  return out


def _by_cell(rows: Sequence[Row]) -> dict[tuple[int, int, str], Row]:
  """{(repeat, fold, arm): row}; a cell may hold one row per arm."""
  out = {}
  for r in rows:
    key = (r['repeat'], r['fold'], r['arm'])
    if key in out:
      raise ValueError(f'two result rows for repeat {key[0]} fold {key[1]} '
                       f'arm {key[2]!r}')
    out[key] = r
  return out


def paired_comparisons(
    rows: Sequence[Row], *, pairs: Sequence[tuple[str, str]] = COMPARISONS,
    confidence: float = 0.95, test_train_ratio: float | None = None,
    primary_metric: str = 'auc'
) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
  """{(A, B): {metric: stats.paired_comparison(A, B)}} on (repeat, fold).

  Pairs whose arms are missing from `rows` are left out. The primary metric
  of each comparison also gets holm_p: Holm's adjustment of corrected_p over
  the comparisons in `pairs` that are present (the pre-specified family).
  """
  by_key = _by_cell(rows)
  out = {}
  for a, b in pairs:
    cells = sorted({(r, f) for r, f, arm in by_key if arm == a}
                   & {(r, f) for r, f, arm in by_key if arm == b})
    if not cells:
      continue
    out[(a, b)] = {
        m: stats.paired_comparison(
            [float(by_key[(r, f, a)][m]) for r, f in cells],
            [float(by_key[(r, f, b)][m]) for r, f in cells],
            confidence=confidence, test_train_ratio=test_train_ratio)
        for m in METRICS}
  adjusted = stats.holm([c[primary_metric]['corrected_p']
                         for c in out.values()])
  for c, p in zip(out.values(), adjusted):
    c[primary_metric]['holm_p'] = p
  return out


def group_means(rows: Sequence[Row], metric: str, by: str = 'fold'
                ) -> dict[str, dict[int, dict[str, float]]]:
  """{arm: {value of `by`: {n, mean, sd}}} of `metric`; descriptive only.

  by='fold' averages each fold index over the repeats, by='repeat' each
  repeat over its folds (one complete k-fold estimate per repeat).
  """
  out = {}
  for arm in _arms_present(rows):
    sel = [r for r in rows if r['arm'] == arm]
    out[arm] = {}
    for g in sorted({r[by] for r in sel}):
      s = stats.t_interval([float(r[metric]) for r in sel if r[by] == g])
      out[arm][g] = {'n': s['n'], 'mean': s['mean'], 'sd': s['sd']}
  return out


def _f(x: float, digits: int = 3) -> str:
  return 'n/a' if x is None or not math.isfinite(x) else f'{x:.{digits}f}'


def _p(x: float) -> str:
  if x is None or not math.isfinite(x):
    return 'n/a'
  return '<0.001' if x < 0.001 else f'{x:.3f}'


def _interval(lo: float, hi: float, clipped_low: bool = False,
              clipped_high: bool = False) -> str:
  """[lo, hi]; a bound clipped to the metric's range is marked with *."""
  return (f'[{_f(lo)}{"*" if clipped_low else ""}, '
          f'{_f(hi)}{"*" if clipped_high else ""}]')


def _ci(c: Mapping[str, Any]) -> str:
  """The interval of a `stats.paired_comparison` result."""
  return _interval(c['ci_low'], c['ci_high'], c['clipped_low'],
                   c['clipped_high'])


def _num(x: Any) -> str:
  """A quality figure: 3 decimals, fewer for large values, n/a if missing."""
  if isinstance(x, (bool, np.bool_)):
    return 'yes' if x else 'no'
  if not isinstance(x, (int, float, np.number)) or not math.isfinite(x):
    return 'n/a'
  return f'{x:.3f}' if abs(x) < 100 else f'{x:.1f}'


def _quote(text: str) -> list[str]:
  return ['> ' + line if line else '>' for line in text.strip().splitlines()]


def format_duration(seconds: float) -> str:
  seconds = float(seconds)
  if seconds < 60:
    return f'{seconds:.1f} s'
  if seconds < 3600:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.2f} h'


_FIGURES = {
    'arms.png': 'mean and interval of every metric per arm (as the table '
                'above).',
    'roc.png': 'ROC per arm, test predictions pooled over cells '
               '(descriptive; inference uses the per-cell tests).',
    'samples.png': 'synthetic images per class from one cell.',
}


def render_markdown(rows: Sequence[Row], *, config_json: str = '',
                    data_summary: Mapping[str, Any] | None = None,
                    timings: Mapping[str, float] | None = None,
                    primary_metric: str = 'auc', confidence: float = 0.95,
                    test_train_ratio: float | None = None,
                    title: str = 'PGGAN augmentation study',
                    smoke_note: str = '',
                    gate: Mapping[str, Any] | None = None,
                    gan_quality: Sequence[Mapping[str, Any]] | None = None,
                    design: str = '',
                    sub_configs: Mapping[str, str] | None = None,
                    provenance: str = '',
                    figures: Sequence[str] = ()) -> str:
  """report.md from the result rows (see module docstring).

  Args:
    rows: one per repeat x fold x arm (KEY_COLUMNS + METRICS).
    config_json: the study's resolved config.
    data_summary: `study_cells.data_summary()`: counts, folds, duplicates.
    timings: {stage: seconds}.
    primary_metric: the metric of the two primary comparisons.
    confidence: level of every interval.
    test_train_ratio: n_test/n_train, mean over folds, for the corrected
      resampled t-test and the corrected intervals.
    title: the report's title.
    smoke_note: if set, a warning quoted right under the title (e.g. a
      ':tiny' run whose numbers test the machinery, not a finding).
    gate: {'passed': bool, 'reasons': [str]} of the GAN quality gate; a
      failure is stated before any table.
    gan_quality: rows {'repeat', 'fold', 'class', QUALITY_KEYS..., 'passed'}
      for the 'Synthetic image quality' table.
    design: one paragraph describing the design, printed under the header.
    sub_configs: {name: JSON of a sub-run's resolved config}, each shown
      under its own heading in the Configuration section.
    provenance: text of a 'How the defaults were chosen' section, verbatim.
    figures: names of the written figures (keys of _FIGURES) to describe.
  """
  if primary_metric not in METRICS:
    raise ValueError(f'primary_metric {primary_metric!r} not in {METRICS}')
  pct = f'{confidence:.0%}'
  repeats = sorted({r['repeat'] for r in rows})
  folds = sorted({r['fold'] for r in rows})
  lines = [f'# {title}', '']
  if smoke_note:
    lines += _quote(f'**Warning:** {smoke_note}') + ['']
  if gate is not None and not gate.get('passed', False):
    reasons = ('; '.join(str(r) for r in gate.get('reasons', ()))
               or 'no reason given')
    lines += _quote(
        '**The `gan` arms do not test GAN augmentation**: the GANs failed '
        f'the quality gate ({reasons}). Those arms train on synthetic images '
        'that did not pass it, so their results say nothing about what '
        'good synthetic images would add.') + ['']
  elif gate is not None:
    lines += [_gate_passed_line(gate, gan_quality), '']
  elif any('gan' in r['arm'] for r in rows):
    lines += _quote(
        '**GAN quality was not measured** (`config.quality.enabled` off): '
        'nothing here shows whether the synthetic images were good enough '
        'for the `gan` arms to test GAN augmentation.') + ['']
  lines += [f'{len(rows)} results: {len(repeats)} repeat(s) x {len(folds)} '
            f'fold(s) x {len(_arms_present(rows))} arms, each evaluated on '
            'its cell\'s held-out test images.', '']
  if design:
    lines += [design.strip(), '']
  lines += _metric_lines(rows, pct, confidence, test_train_ratio)
  lines += _comparison_lines(rows, pct, confidence, test_train_ratio,
                             primary_metric)
  lines += _group_lines(rows, primary_metric)
  if gan_quality:
    lines += _quality_lines(gan_quality, gate)
  if figures:
    lines += ['## Figures', '']
    lines += [f'- `{name}`: {_FIGURES.get(name, "")}' for name in figures]
    lines.append('')
  if data_summary:
    lines += ['## Data', '', *_data_lines(data_summary), '']
  if timings:
    lines += ['## Time', '', '| stage | time |', '|---|---|']
    for stage, sec in timings.items():
      lines.append(f'| {stage} | {format_duration(sec)} |')
    lines.append('')
  if provenance:
    lines += ['## How the defaults were chosen', '', provenance.strip(), '']
  if config_json or sub_configs:
    lines += ['## Configuration', '']
  if config_json:
    lines += ['```json', config_json.rstrip(), '```', '']
  for name, text in (sub_configs or {}).items():
    lines += [f'### {name}', '', '```json', text.rstrip(), '```', '']
  return '\n'.join(lines)


def _variance_text(test_train_ratio: float | None) -> str:
  if test_train_ratio is None:
    return ('the plain variance sd²/n, because n_test/n_train was not '
            'given: it treats the cells as independent, so the intervals '
            'are too narrow')
  return ('the corrected variance sd² · (1/n + n_test/n_train) of the '
          f'resampled t-test, n_test/n_train = {test_train_ratio:.3f} (mean '
          'over folds)')


def _metric_lines(rows, pct, confidence, test_train_ratio) -> list[str]:
  lines = ['## Metrics per arm', '',
           'Mean ± sd over the repeat x fold cells. The '
           f'**{pct} CI** of the mean uses '
           f'{_variance_text(test_train_ratio)}; it is computed on the logit '
           'scale and mapped back (logit-transformed Wald interval, mean '
           f'clipped to [{stats.EPS}, {1 - stats.EPS}]), so it stays within '
           '[0, 1] and is asymmetric near a bound.', '',
           f'| arm | metric | n | mean ± sd | {pct} CI |',
           '|---|---|---|---|---|']
  table = arm_summaries(rows, confidence=confidence,
                        test_train_ratio=test_train_ratio)
  for arm, by_metric in table.items():
    for m in METRICS:
      s = by_metric[m]
      lines.append(
          f'| {arm} | {m} | {s["n"]} | {_f(s["mean"])} ± {_f(s["sd"])} | '
          f'{_interval(s["ci_low"], s["ci_high"])} |')
  return lines + ['']


def _comparison_lines(rows, pct, confidence, test_train_ratio,
                      primary_metric) -> list[str]:
  comps = paired_comparisons(rows, confidence=confidence,
                             test_train_ratio=test_train_ratio,
                             primary_metric=primary_metric)
  family = ', '.join(f'{a} vs {b}' for a, b in COMPARISONS)
  lines = [
      '## Paired comparisons', '',
      'Differences A − B over the (repeat, fold) cells both arms ran on. '
      '**Primary test: the corrected resampled t-test** (Nadeau & Bengio '
      '2003, as formulated by Bouckaert & Frank 2004) on '
      f'**{primary_metric}**: t = mean(d) / sqrt((1/(k·r) + n_test/n_train) '
      '· s²) with df = k·r − 1, which allows for the training sets the '
      'cells share. '
      + ('n_test/n_train is not given, so it is not computed. '
         if test_train_ratio is None else
         f'n_test/n_train = {test_train_ratio:.3f}, the mean over folds. ')
      + f'The **{pct} CI** is the matching corrected interval of the mean '
      'difference, clipped to [−1, 1] (a clipped bound is marked *). '
      f'The two pre-specified primary comparisons ({family}) on '
      f'{primary_metric} are adjusted for multiplicity with Holm\'s method '
      '(**Holm p**). All other metrics are exploratory: their p-values are '
      'uncorrected. *t-test p* (paired t-test, scipy.stats.ttest_rel) and '
      '*Wilcoxon p* (signed-rank, scipy.stats.wilcoxon) ignore the '
      'dependence between cells and are anti-conservative; they are shown '
      'for reference only. With n pairs the smallest two-sided Wilcoxon p '
      'is 2/2^n.', '']
  if not comps:
    return lines + ['(no pair of arms to compare)', '']
  lines += [f'Primary results (Holm over {len(comps)} comparison(s)):', '']
  for (a, b), by_metric in comps.items():
    c = by_metric[primary_metric]
    lines.append(f'- {a} vs {b}: {primary_metric} difference '
                 f'{_f(c["mean_diff"])}, {pct} CI {_ci(c)}, corrected p '
                 f'{_p(c["corrected_p"])}, Holm p {_p(c["holm_p"])}')
  lines.append('')
  for (a, b), by_metric in comps.items():
    lines += [f'### {a} vs {b}', '',
              f'| metric | n | mean diff | {pct} CI | corrected p | Holm p | '
              't-test p (indep.) | Wilcoxon p (indep.) |',
              '|---|---|---|---|---|---|---|---|']
    for m in METRICS:
      c = by_metric[m]
      name = f'**{m}** (primary)' if m == primary_metric else m
      holm = _p(c['holm_p']) if 'holm_p' in c else '—'
      lines.append(
          f'| {name} | {c["n"]} | {_f(c["mean_diff"])} | '
          f'{_ci(c)} | '
          f'{_p(c["corrected_p"])} | {holm} | {_p(c["t_p"])} | '
          f'{_p(c["wilcoxon_p"])} |')
    lines.append('')
  return lines


def _group_lines(rows, metric) -> list[str]:
  lines = []
  for by, head, text in (
      ('fold', 'Per-fold means (descriptive)',
       f'Mean ± sd of {metric} over the repeats, per fold index. '
       'Descriptive only: each repeat draws its own split, so fold i of two '
       'repeats holds different images; inference uses the per-cell tests '
       'above.'),
      ('repeat', 'Per-repeat means (descriptive)',
       f'Mean ± sd of {metric} over the folds of each repeat (one complete '
       'k-fold estimate per repeat). Descriptive only.')):
    table = group_means(rows, metric, by)
    keys = sorted({g for per in table.values() for g in per})
    lines += [f'## {head}', '', text, '',
              '| arm | ' + ' | '.join(f'{by} {g}' for g in keys) + ' |',
              '|---|' + '---|' * len(keys)]
    for arm, per in table.items():
      cells = [f'{_f(per[g]["mean"])} ± {_f(per[g]["sd"])}' if g in per
               else '' for g in keys]
      lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return lines


def _gate_passed_line(gate: Mapping[str, Any],
                      quality: Sequence[Mapping[str, Any]] | None) -> str:
  """'The GANs passed ...' with each class's pooled C2ST and any per-class
  measurement that failed on its own (the gate allows a few)."""
  line = 'The GANs passed the synthetic-image quality gate'
  per_class_gate = bool(gate.get('classes'))
  classes = dict(gate.get('classes') or {})
  if not classes and gate.get('pooled'):  # a gate on all classes only
    classes = {'all': gate['pooled']}
  c2st = []
  for cls, pooled in classes.items():
    if pooled.get('c2st_accuracy') is None or not pooled.get('c2st_n'):
      continue
    ci = ''
    if pooled.get('c2st_ci_low') is not None:
      ci = f" [{pooled['c2st_ci_low']:.2f}, {pooled['c2st_ci_high']:.2f}]"
    c2st.append(f"{'all classes' if cls == 'all' else cls} "
                f"{pooled['c2st_accuracy']:.2f}{ci} (n = {pooled['c2st_n']})")
  if c2st:
    exact = any(p.get('c2st_ci_low') is not None for p in classes.values())
    line += ((', judged per class and on all classes together'
              if per_class_gate else ', judged on all classes together')
             + ' against held-out real images, pooled over the cells: C2ST '
             'accuracy ' + ', '.join(c2st)
             + (' (exact 95% intervals)' if exact else '')
             + '; 0.5 = indistinguishable from held-out real images')
  per_class = [q for q in quality or () if q.get('class') != 'all'
               and 'passed' in q]
  failed = [q for q in per_class if not q['passed']]
  if failed:
    line += (f'. {len(failed)} of the {len(per_class)} per-class '
             'measurements failed it on their own'
             + (' (each on its cell\'s held-out images alone; the gate '
                'allows a few)' if per_class_gate else '')
             + (', e.g.' if len(failed) > 5 else ':') + ' '
             + ', '.join(f"repeat {q.get('repeat')} fold {q.get('fold')} "
                         f"{q.get('class')}" for q in failed[:5]))
  return line + '.'


def _quality_lines(quality: Sequence[Mapping[str, Any]],
                   gate: Mapping[str, Any] | None) -> list[str]:
  keys = [k for k in QUALITY_KEYS if any(k in q for q in quality)]
  has_passed = any('passed' in q for q in quality)
  head = ['repeat', 'fold', 'class'] + keys + (['passed'] if has_passed
                                               else [])
  lines = ['## Synthetic image quality', '',
           'Per (repeat, fold) cell and class (\'all\' = both classes '
           'together), synthetic images measured against that cell\'s '
           'held-out real test images, which no GAN or classifier of the '
           'cell trained on; the feature network, TRTR and the nearest-'
           'neighbour reference use the cell\'s real training images. '
           'swd: multi-scale sliced Wasserstein distance (x1e3, PGGAN); fd / '
           'kid: Frechet and kernel distances on features of a ResNet '
           'trained on the real training images (not Inception: not FID); '
           'c2st: accuracy of a CNN telling real from synthetic (0.5 = '
           'indistinguishable); nn ratio: median synthetic-to-train over '
           'held-out-to-train nearest-neighbour distance (< 1: closer to '
           'training images than new patients are); ms-ssim: mean pairwise '
           'MS-SSIM (synthetic far above real: mode collapse); spectral '
           'excess / deficit: the largest / most negative log10 ratio of '
           'synthetic to held-out power at high spatial frequencies (0.3 = '
           'twice the power; excess: upsampling stripes and grids, deficit: '
           'blur), beside the 95th percentile of the excess over random '
           'splits of the pooled images (null95) and permutation p-values; '
           'reported, not part of the gate. The mean row counts p-values '
           'at most 0.05 instead of averaging them. n/a where not measured.'
           + ('' if gate is None else
              ' Quality gate: ' + ('passed.' if gate.get('passed') else
                                   'FAILED (' + '; '.join(
                                       str(r) for r in gate.get(
                                           'reasons', ())) + ').')), '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for q in quality:
    cells = [str(q.get(k, 'n/a')) for k in ('repeat', 'fold', 'class')]
    cells += [_num(q.get(k)) for k in keys]
    if has_passed:
      cells.append(_num(q.get('passed')))
    lines.append('| ' + ' | '.join(cells) + ' |')
  means = []
  for k in keys:
    v = [float(q[k]) for q in quality
         if isinstance(q.get(k), (int, float, np.number))
         and not isinstance(q.get(k), bool) and math.isfinite(q[k])]
    if k.endswith('_p'):   # p-values are not averaged: how many are small
      means.append(f'{sum(x <= 0.05 for x in v)}/{len(v)} <= 0.05' if v
                   else 'n/a')
    else:
      means.append(_num(float(np.mean(v))) if v else 'n/a')
  if has_passed:
    means.append(f'{sum(bool(q.get("passed")) for q in quality)}/'
                 f'{len(quality)}')
  lines.append('| **mean** | | | ' + ' | '.join(means) + ' |')
  return lines + ['']


def _data_lines(summary: Mapping[str, Any]) -> list[str]:
  """Markdown for study_cells.data_summary(): counts, folds, duplicates.

  Folds come per repeat as 'repeats': [{'split_seed', 'folds'}], or as
  'folds': [{role: {class: count}}] of the first repeat, whose split seed is
  'split_seed' (all repeats' seeds may be listed in 'split_seeds').
  """
  lines = []
  classes = list(summary.get('class_names', []))
  if 'name' in summary:
    lines.append(f'Source: `{summary["name"]}`'
                 + (f' ({summary["dir"]})' if summary.get('dir') else '')
                 + '.')
  counts = summary.get('counts', {})
  if counts:
    lines.append('Images per class: ' + ', '.join(
        f'{c} {counts[c]}' for c in classes or counts) +
                 f' (total {sum(counts.values())}).')
  if 'duplicate_groups' in summary:
    lines.append(
        f'Near-duplicate groups: {summary["duplicate_groups"]} '
        f'({summary.get("duplicate_images", 0)} images), each kept within '
        'one split.')
  repeats = summary.get('repeats')
  if repeats is None and summary.get('folds'):
    repeats = [{'split_seed': summary.get('split_seed', '?'),
                'folds': summary['folds']}]
  if not repeats:
    return lines
  if 'repeats' not in summary and len(summary.get('split_seeds') or ()) > 1:
    lines.append('Split seeds of the repeats: ' + ', '.join(
        str(x) for x in summary['split_seeds']) + '; the table shows the '
                 'first repeat.')
  seeds = ', '.join(str(r.get('split_seed', '?')) for r in repeats)
  lines += ['', f'{len(repeats)} repeat(s) of {len(repeats[0]["folds"])} '
            f'stratified folds (split seed(s) {seeds}); images per role and '
            'class:', '',
            '| repeat | fold | ' + ' | '.join(
                f'{role} ({"/".join(classes)})'
                for role in ('train', 'val', 'test')) + ' |',
            '|---|---|---|---|---|']
  for i, rep in enumerate(repeats):
    for j, fold in enumerate(rep['folds']):
      cells = ['/'.join(str(fold.get(role, {}).get(c, 0)) for c in classes)
               for role in ('train', 'val', 'test')]
      lines.append(f'| {i} | {j} | ' + ' | '.join(cells) + ' |')
  return lines


def read_predictions(path: str) -> tuple[np.ndarray, np.ndarray]:
  """test_predictions.csv (id,label,prob) -> (labels int, probs float)."""
  labels, probs = [], []
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      labels.append(int(float(row['label'])))
      probs.append(float(row['prob']))
  return np.asarray(labels, np.int32), np.asarray(probs, np.float64)


def write_report(workdir: str, rows: Sequence[Row], *,
                 predictions: Mapping[str, Sequence[tuple[np.ndarray,
                                                          np.ndarray]]]
                 | None = None,
                 samples: Mapping[str, np.ndarray] | None = None,
                 samples_title: str = '',
                 **markdown_kwargs) -> dict[str, str]:
  """Writes results.csv, report.md, arms.png, roc.png, samples.png.

  roc.png needs `predictions`, samples.png needs `samples`; the others only
  need rows. `markdown_kwargs` go to `render_markdown` (smoke_note, gate,
  gan_quality, design, sub_configs, provenance, test_train_ratio, ...).
  Returns {name: path} of what was written.
  """
  written = {}
  written['results.csv'] = os.path.join(workdir, 'results.csv')
  write_results_csv(rows, written['results.csv'])
  conf = markdown_kwargs.get('confidence', 0.95)
  written['arms.png'] = os.path.join(workdir, 'arms.png')
  plot_arms(arm_summaries(
      rows, confidence=conf,
      test_train_ratio=markdown_kwargs.get('test_train_ratio')),
            written['arms.png'], conf)
  if predictions:
    written['roc.png'] = os.path.join(workdir, 'roc.png')
    plot_roc(predictions, written['roc.png'])
  if samples:
    written['samples.png'] = os.path.join(workdir, 'samples.png')
    plot_samples(samples, written['samples.png'], samples_title)
  markdown_kwargs.setdefault(
      'figures', [n for n in written if n.endswith('.png')])
  written['report.md'] = os.path.join(workdir, 'report.md')
  files.write_text(written['report.md'],
                   render_markdown(rows, **markdown_kwargs))
  return written


def summary_json(rows: Sequence[Row], *, confidence: float = 0.95,
                 test_train_ratio: float | None = None,
                 primary_metric: str = 'auc',
                 gate: Mapping[str, Any] | None = None,
                 gan_quality: Sequence[Mapping[str, Any]] | None = None,
                 **unused) -> str:
  """The report's numbers as strict JSON (NaN -> null).

  Keys: design (repeats, folds, arms, test_train_ratio, methods), arms
  (`arm_summaries`), comparisons ({'A vs B': {metric: ...}}, corrected
  interval and p, holm_p on the primary metric), primary (the two primary
  comparisons), per_fold and per_repeat (`group_means` of the primary
  metric, descriptive), and gate / gan_quality when given. Accepts (and
  ignores) render_markdown's other keyword arguments.
  """
  del unused
  comps = paired_comparisons(rows, confidence=confidence,
                             test_train_ratio=test_train_ratio,
                             primary_metric=primary_metric)
  out = {
      'design': {
          'repeats': sorted({r['repeat'] for r in rows}),
          'folds': sorted({r['fold'] for r in rows}),
          'arms': _arms_present(rows),
          'cells': len({(r['repeat'], r['fold']) for r in rows}),
          'test_train_ratio': test_train_ratio,
          'primary_metric': primary_metric,
          'confidence': confidence,
          'test': 'corrected resampled t-test (Bouckaert & Frank 2004), '
                  'df = k*r - 1; Holm over the primary comparisons',
          'arm_interval': 'logit-transformed Wald interval of the mean, '
                          'corrected variance',
          'difference_interval': 'corrected t-interval, clipped to [-1, 1]',
      },
      'arms': arm_summaries(rows, confidence=confidence,
                            test_train_ratio=test_train_ratio),
      'comparisons': {f'{a} vs {b}': v for (a, b), v in comps.items()},
      'primary': {f'{a} vs {b}': v[primary_metric]
                  for (a, b), v in comps.items()},
      'per_fold': group_means(rows, primary_metric, 'fold'),
      'per_repeat': group_means(rows, primary_metric, 'repeat'),
  }
  if gate is not None:
    out['gate'] = dict(gate)
  if gan_quality is not None:
    out['gan_quality'] = [dict(q) for q in gan_quality]
  return json.dumps(files.jsonable(out), indent=1, allow_nan=False)
