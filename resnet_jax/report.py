"""The study's outputs from its rows: results.csv, report.md and plots.

Pure functions of the per-cell results (one row per fold x seed x arm), the
pooled test predictions and the synthetic samples; nothing here trains or
reads a checkpoint, so the report of a finished study can be rebuilt (or
unit-tested) in a second. Plots use matplotlib's Agg canvas directly
(`matplotlib.figure.Figure`), leaving pyplot's global state alone.
"""

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np
from PIL import Image
from sklearn import metrics as skm

from input_pipeline import images as images_lib
from input_pipeline import files
from resnet_jax import stats

METRICS = ('accuracy', 'sensitivity', 'specificity', 'balanced_accuracy',
           'f1', 'auc')
KEY_COLUMNS = ('fold', 'seed', 'arm')
# results.csv starts with exactly these columns; extra ones follow.
COLUMNS = KEY_COLUMNS + METRICS
ARMS = ('none', 'classic', 'gan', 'classic+gan')
# (A, B): A - B, over the fold x seed cells both arms ran on.
COMPARISONS = (('classic+gan', 'classic'), ('gan', 'none'))

Row = Mapping[str, Any]


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
  """Inverse of `write_results_csv`: ints for fold/seed, floats for metrics."""
  rows = []
  with open(path, newline='') as f:
    for raw in csv.DictReader(f):
      row: dict[str, Any] = {}
      for k, v in raw.items():
        if k in ('fold', 'seed'):
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


def _arms_present(rows: Sequence[Row]) -> list[str]:
  seen = {r['arm'] for r in rows}
  return [a for a in ARMS if a in seen] + sorted(seen - set(ARMS))


def arm_summaries(rows: Sequence[Row], *, confidence: float = 0.95,
                  seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
  """{arm: {metric: stats.summarize(...)}} over that arm's cells.

  The bootstrap resamples folds (clusters), see `stats.bootstrap_ci`.
  """
  out = {}
  for arm in _arms_present(rows):
    sel = [r for r in rows if r['arm'] == arm]
    out[arm] = {
        m: stats.summarize([float(r[m]) for r in sel],
                           [r['fold'] for r in sel],
                           confidence=confidence, seed=seed)
        for m in METRICS}
  return out


def paired_comparisons(
    rows: Sequence[Row], *, pairs: Sequence[tuple[str, str]] = COMPARISONS,
    confidence: float = 0.95, test_train_ratio: float | None = None,
    seed: int = 0) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
  """{(A, B): {metric: stats.paired_comparison(A, B)}} paired on (fold, seed).

  Pairs whose arms are missing from `rows` are left out.
  """
  by_key = {(r['fold'], r['seed'], r['arm']): r for r in rows}
  out = {}
  for a, b in pairs:
    cells = sorted({(f, s) for f, s, arm in by_key if arm == a}
                   & {(f, s) for f, s, arm in by_key if arm == b})
    if not cells:
      continue
    out[(a, b)] = {
        m: stats.paired_comparison(
            [float(by_key[(f, s, a)][m]) for f, s in cells],
            [float(by_key[(f, s, b)][m]) for f, s in cells],
            [f for f, _ in cells], confidence=confidence,
            test_train_ratio=test_train_ratio, seed=seed)
        for m in METRICS}
  return out


def _f(x: float, digits: int = 3) -> str:
  return 'n/a' if x is None or not math.isfinite(x) else f'{x:.{digits}f}'


def _p(x: float) -> str:
  if x is None or not math.isfinite(x):
    return 'n/a'
  return '<0.001' if x < 0.001 else f'{x:.3f}'


def _interval(lo: float, hi: float) -> str:
  return f'[{_f(lo)}, {_f(hi)}]'


def format_duration(seconds: float) -> str:
  seconds = float(seconds)
  if seconds < 60:
    return f'{seconds:.1f} s'
  if seconds < 3600:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.2f} h'


def render_markdown(rows: Sequence[Row], *, config_json: str = '',
                    data_summary: Mapping[str, Any] | None = None,
                    timings: Mapping[str, float] | None = None,
                    primary_metric: str = 'auc', confidence: float = 0.95,
                    test_train_ratio: float | None = None, seed: int = 0,
                    title: str = 'PGGAN augmentation study') -> str:
  """report.md from the result rows (see module docstring)."""
  if primary_metric not in METRICS:
    raise ValueError(f'primary_metric {primary_metric!r} not in {METRICS}')
  pct = f'{confidence:.0%}'
  folds = sorted({r['fold'] for r in rows})
  seeds = sorted({r['seed'] for r in rows})
  lines = [f'# {title}', '',
           f'{len(rows)} results: {len(folds)} fold(s) x {len(seeds)} '
           f'seed(s) x {len(_arms_present(rows))} arms, evaluated on each fold\'s '
           'held-out test images.', '',
           'All arms of a cell share the initialisation, data order and the '
           'number of training steps (equal compute). In the `gan` arms a '
           'fraction `data.synthetic_ratio` of every batch is synthetic, so '
           'they see that fraction fewer real-image exposures than `none` / '
           '`classic`: the comparison is "replace part of each batch with '
           'GAN samples at equal cost".', '']

  lines += ['## Metrics per arm', '',
            f'Mean ± sd over fold x seed cells; **{pct} CI** is the '
            't-interval of the mean, *boot* the percentile bootstrap that '
            'resamples whole folds. Folds share training images and the '
            'seeds of a fold share its test images, so the cells are not '
            'independent and these intervals are approximate (too narrow '
            'rather than too wide).', '']
  table = arm_summaries(rows, confidence=confidence, seed=seed)
  lines += ['| arm | metric | n | mean ± sd | ' + pct + ' CI | boot CI |',
            '|---|---|---|---|---|---|']
  for arm, by_metric in table.items():
    for m in METRICS:
      s = by_metric[m]
      lines.append(
          f'| {arm} | {m} | {s["n"]} | {_f(s["mean"])} ± {_f(s["sd"])} | '
          f'{_interval(s["ci_low"], s["ci_high"])} | '
          f'{_interval(s["boot_low"], s["boot_high"])} |')
  lines.append('')

  comps = paired_comparisons(rows, confidence=confidence, seed=seed,
                             test_train_ratio=test_train_ratio)
  lines += ['## Paired comparisons', '',
            'Differences A − B over the fold x seed cells both arms ran on '
            '(same data split, same seed). **Primary: the paired t-test** '
            '(scipy.stats.ttest_rel) on the primary metric, '
            f'**{primary_metric}**, for the two pre-specified comparisons; '
            'each difference averages over a whole test fold, so it is close '
            'to normal. The Wilcoxon signed-rank test (scipy.stats.wilcoxon) '
            'is the distribution-free check and the Nadeau-Bengio corrected '
            't-test (variance × (1/n + n_test/n_train)) allows for the '
            'overlapping training sets. The other metrics are exploratory '
            '(no multiplicity correction).', '']
  if not comps:
    lines += ['(no pair of arms to compare)', '']
  for (a, b), by_metric in comps.items():
    lines += [f'### {a} vs {b}', '',
              f'| metric | n | mean diff | {pct} CI | boot CI | t-test p | '
              'Wilcoxon p | corrected p |',
              '|---|---|---|---|---|---|---|---|']
    for m in METRICS:
      c = by_metric[m]
      name = f'**{m}** (primary)' if m == primary_metric else m
      lines.append(
          f'| {name} | {c["n"]} | {_f(c["mean_diff"])} | '
          f'{_interval(c["ci_low"], c["ci_high"])} | '
          f'{_interval(c["boot_low"], c["boot_high"])} | {_p(c["t_p"])} | '
          f'{_p(c["wilcoxon_p"])} | {_p(c["corrected_p"])} |')
    lines.append('')
  lines += ['With few cells the Wilcoxon test cannot reach small p-values '
            '(its smallest two-sided p with n pairs is 2/2^n).', '']

  if data_summary:
    lines += ['## Data', '', *_data_lines(data_summary), '']
  if timings:
    lines += ['## Time', '', '| stage | time |', '|---|---|']
    for stage, sec in timings.items():
      lines.append(f'| {stage} | {format_duration(sec)} |')
    lines.append('')
  if config_json:
    lines += ['## Configuration', '', '```json', config_json.rstrip(), '```',
              '']
  return '\n'.join(lines)


def _data_lines(summary: Mapping[str, Any]) -> list[str]:
  """Markdown for study.data_summary(): counts per class, folds, duplicates."""
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
  folds = summary.get('folds', [])
  if folds:
    lines += ['', f'{len(folds)} stratified folds (split seed '
              f'{summary.get("split_seed", "?")}); images per role and '
              'class:', '',
              '| fold | ' + ' | '.join(
                  f'{role} ({"/".join(classes)})'
                  for role in ('train', 'val', 'test')) + ' |',
              '|---|---|---|---|']
    for i, fold in enumerate(folds):
      cells = []
      for role in ('train', 'val', 'test'):
        per = fold.get(role, {})
        cells.append('/'.join(str(per.get(c, 0)) for c in classes))
      lines.append(f'| {i} | ' + ' | '.join(cells) + ' |')
  return lines


def read_predictions(path: str) -> tuple[np.ndarray, np.ndarray]:
  """test_predictions.csv (id,label,prob) -> (labels int, probs float)."""
  labels, probs = [], []
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      labels.append(int(float(row['label'])))
      probs.append(float(row['prob']))
  return np.asarray(labels, np.int32), np.asarray(probs, np.float64)


def plot_roc(predictions: Mapping[str, Sequence[tuple[np.ndarray,
                                                       np.ndarray]]],
             path: str) -> None:
  """ROC per arm of the pooled test predictions, thin curves per cell.

  predictions: {arm: [(labels, probs) of each cell]}.
  """
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  colors = [f'C{i}' for i in range(10)]
  for i, (arm, cells) in enumerate(predictions.items()):
    color = colors[i % len(colors)]
    for y, p in cells:
      if len(np.unique(y)) == 2:
        fpr, tpr, _ = skm.roc_curve(y, p)
        ax.plot(fpr, tpr, color=color, alpha=0.25, lw=0.7)
    if not cells:
      continue
    y = np.concatenate([c[0] for c in cells])
    p = np.concatenate([c[1] for c in cells])
    if len(np.unique(y)) < 2:
      continue
    fpr, tpr, _ = skm.roc_curve(y, p)
    auc = skm.roc_auc_score(y, p)
    ax.plot(fpr, tpr, color=color, lw=2,
            label=f'{arm} (pooled AUC {auc:.3f}, {len(cells)} cells)')
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set(xlabel='1 - specificity (FPR)', ylabel='sensitivity (TPR)',
         xlim=(0, 1), ylim=(0, 1.01), title='Test ROC per arm')
  ax.legend(loc='lower right', fontsize=8)
  _save(fig, path)


def plot_arms(summaries: Mapping[str, Mapping[str, Mapping[str, float]]],
              path: str, confidence: float = 0.95) -> None:
  """Grouped bars: metric x arm, mean with t-interval error bars."""
  arms = list(summaries)
  fig = Figure(figsize=(9, 4.5))
  ax = fig.add_subplot()
  x = np.arange(len(METRICS))
  width = 0.8 / max(len(arms), 1)
  for i, arm in enumerate(arms):
    means = np.array([summaries[arm][m]['mean'] for m in METRICS])
    lo = np.array([summaries[arm][m]['ci_low'] for m in METRICS])
    hi = np.array([summaries[arm][m]['ci_high'] for m in METRICS])
    # Undefined intervals (one cell) draw no error bar.
    err = np.nan_to_num(np.stack([means - lo, hi - means]), nan=0.0)
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, np.nan_to_num(means),
           width, yerr=err, capsize=2, label=arm)
  ax.set_xticks(x, METRICS, rotation=15)
  ax.set(ylim=(0, 1.18), ylabel='test value',
         title=f'Mean over fold x seed cells, {confidence:.0%} t-interval')
  ax.legend(fontsize=8, ncols=len(arms) or 1, loc='upper center')
  _save(fig, path)


def load_samples(sample_dir: str, class_names: Sequence[str],
                 per_class: int = 8) -> dict[str, np.ndarray]:
  """{class: float [n, H, W, C] in [-1, 1]} from DIR/<class>/*.png."""
  out = {}
  for name in class_names:
    folder = os.path.join(sample_dir, name)
    if not os.path.isdir(folder):
      continue
    pngs = sorted(f for f in os.listdir(folder) if f.endswith('.png'))
    imgs = []
    for f in pngs[:per_class]:
      a = np.asarray(Image.open(os.path.join(folder, f)), np.float32)
      imgs.append((a[..., None] if a.ndim == 2 else a) / 127.5 - 1.0)
    if imgs:
      out[name] = np.stack(imgs)
  return out


def plot_samples(samples: Mapping[str, np.ndarray], path: str,
                 title: str = '') -> None:
  """One row of synthetic images per class (`load_samples` output)."""
  names = [n for n in samples if len(samples[n])]
  fig = Figure(figsize=(8, 1.2 + 1.3 * max(len(names), 1)))
  for i, name in enumerate(names):
    ax = fig.add_subplot(len(names), 1, i + 1)
    imgs = samples[name]
    grid = images_lib.make_grid(imgs, ncols=len(imgs))
    if grid.shape[-1] == 1:
      ax.imshow(grid[..., 0], cmap='gray', vmin=0, vmax=255)
    else:
      ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title(name, fontsize=9, loc='left')
  if title:
    fig.suptitle(title, fontsize=10)
  _save(fig, path)


def _save(fig: Figure, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp.png'
  fig.savefig(tmp, dpi=110, bbox_inches='tight')
  os.replace(tmp, path)


def write_report(workdir: str, rows: Sequence[Row], *,
                 predictions: Mapping[str, Sequence[tuple[np.ndarray,
                                                          np.ndarray]]]
                 | None = None,
                 samples: Mapping[str, np.ndarray] | None = None,
                 samples_title: str = '',
                 **markdown_kwargs) -> dict[str, str]:
  """Writes results.csv, report.md, arms.png, roc.png, samples.png.

  roc.png needs `predictions`, samples.png needs `samples`; the others only
  need rows. Returns {name: path} of what was written.
  """
  written = {}
  written['results.csv'] = os.path.join(workdir, 'results.csv')
  write_results_csv(rows, written['results.csv'])
  written['report.md'] = os.path.join(workdir, 'report.md')
  files.write_text(written['report.md'],
                     render_markdown(rows, **markdown_kwargs))
  conf = markdown_kwargs.get('confidence', 0.95)
  written['arms.png'] = os.path.join(workdir, 'arms.png')
  plot_arms(arm_summaries(rows, confidence=conf), written['arms.png'], conf)
  if predictions:
    written['roc.png'] = os.path.join(workdir, 'roc.png')
    plot_roc(predictions, written['roc.png'])
  if samples:
    written['samples.png'] = os.path.join(workdir, 'samples.png')
    plot_samples(samples, written['samples.png'], samples_title)
  return written


def summary_json(rows: Sequence[Row], *, confidence: float = 0.95,
                 test_train_ratio: float | None = None, seed: int = 0,
                 **unused) -> str:
  """Arm summaries and comparisons as JSON (machine-readable report)."""
  del unused  # accepts render_markdown's keyword arguments
  comps = paired_comparisons(rows, confidence=confidence, seed=seed,
                             test_train_ratio=test_train_ratio)
  return json.dumps({
      'arms': arm_summaries(rows, confidence=confidence, seed=seed),
      'comparisons': {f'{a} vs {b}': v for (a, b), v in comps.items()},
  }, indent=1)


def sort_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
  """Rows sorted by (fold, seed, arm order) for stable CSV output."""
  order = {a: i for i, a in enumerate(ARMS)}
  return sorted((dict(r) for r in rows),
                key=lambda r: (r['fold'], r['seed'],
                               order.get(r['arm'], len(order)), r['arm']))
