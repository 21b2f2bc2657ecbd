"""The study's figures: ROC per arm, metric bars per arm, synthetic samples.

Plots use matplotlib's Agg canvas directly (`matplotlib.figure.Figure`),
leaving pyplot's global state alone; `report.write_report` calls them.
"""

import os
from typing import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np
from PIL import Image
from sklearn import metrics as skm

from input_pipeline import images as images_lib


def plot_roc(predictions: Mapping[str, Sequence[tuple[np.ndarray,
                                                       np.ndarray]]],
             path: str) -> None:
  """ROC per arm of the pooled test predictions, thin curves per cell.

  predictions: {arm: [(labels, probs) of each cell]}. Pooling mixes cells
  (repeats reuse the same images), so the figure is descriptive, and says
  so in its title; inference uses the per-cell tests in report.md.
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
         xlim=(0, 1), ylim=(0, 1.01))
  ax.set_title('Test ROC per arm, pooled over cells (descriptive)',
               fontsize=10)
  ax.legend(loc='lower right', fontsize=8)
  _save(fig, path)


def plot_arms(summaries: Mapping[str, Mapping[str, Mapping[str, float]]],
              path: str, confidence: float = 0.95) -> None:
  """Grouped bars: metric x arm, mean with the interval of each summary.

  summaries: {arm: {metric: {'mean', 'ci_low', 'ci_high'}}}, e.g.
  `report.arm_summaries`; the metrics are those of the first arm.
  """
  arms = list(summaries)
  metrics = list(next(iter(summaries.values()), {}))
  fig = Figure(figsize=(9, 4.5))
  ax = fig.add_subplot()
  x = np.arange(len(metrics))
  width = 0.8 / max(len(arms), 1)
  for i, arm in enumerate(arms):
    means = np.array([summaries[arm][m]['mean'] for m in metrics])
    lo = np.array([summaries[arm][m]['ci_low'] for m in metrics])
    hi = np.array([summaries[arm][m]['ci_high'] for m in metrics])
    # Undefined intervals (one cell) draw no error bar.
    err = np.nan_to_num(np.stack([means - lo, hi - means]), nan=0.0)
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, np.nan_to_num(means),
           width, yerr=err, capsize=2, label=arm)
  ax.set_xticks(x, metrics, rotation=15)
  ax.set(ylim=(0, 1.18), ylabel='test value',
         title=f'Mean over repeat x fold cells, {confidence:.0%} interval '
         '(logit scale, see report.md)')
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
