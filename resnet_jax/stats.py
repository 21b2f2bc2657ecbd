"""Statistics for the study: intervals over cells and paired arm comparisons.

Pure numpy/scipy on lists of numbers, so every figure in `report.md` can be
recomputed by hand. The unit of analysis is a *cell*, one (fold, seed) pair:
each cell gives one metric value per arm, and two arms are compared on the
same cells (a paired design).

Caveat, stated in the report: cells are not independent. Folds share most of
their training images, and the seeds of a fold share its test images, so
t-intervals over cells are narrower than they should be. The fold-cluster
bootstrap (resampling whole folds) and the Nadeau-Bengio corrected t-test are
given alongside as less optimistic checks.
"""

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as sps


def _finite(values: Sequence[float]) -> np.ndarray:
  x = np.asarray(values, np.float64).ravel()
  return x[np.isfinite(x)]


def t_interval(values: Sequence[float],
               confidence: float = 0.95) -> dict[str, float]:
  """Mean, sample sd (ddof=1) and the two-sided t-interval of the mean.

  mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n). Non-finite values are
  dropped (an AUC is undefined on a one-class test split); with fewer than
  two values the sd and the interval are NaN.
  """
  x = _finite(values)
  n = int(x.size)
  out = {'n': n, 'mean': math.nan, 'sd': math.nan,
         'ci_low': math.nan, 'ci_high': math.nan}
  if n == 0:
    return out
  out['mean'] = float(x.mean())
  if n < 2:
    return out
  sd = float(x.std(ddof=1))
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
  out.update(sd=sd, ci_low=out['mean'] - half, ci_high=out['mean'] + half)
  return out


def bootstrap_ci(values: Sequence[float],
                 groups: Sequence[object] | None = None, *,
                 confidence: float = 0.95, num_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean.

  With `groups` (e.g. the fold of each cell) whole groups are resampled with
  replacement (a cluster bootstrap), which respects the correlation of the
  seeds within a fold. Returns (NaN, NaN) with fewer than two groups/values.
  """
  x = np.asarray(values, np.float64).ravel()
  g = np.arange(x.size) if groups is None else np.asarray(groups)
  keep = np.isfinite(x)
  x, g = x[keep], g[keep]
  uniq = np.unique(g)
  if uniq.size < 2:
    return math.nan, math.nan
  members = [np.flatnonzero(g == u) for u in uniq]
  sums = np.array([x[m].sum() for m in members])
  counts = np.array([m.size for m in members], np.float64)
  rng = np.random.default_rng(seed)
  pick = rng.integers(0, uniq.size, size=(num_resamples, uniq.size))
  means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
  alpha = (1 - confidence) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return float(lo), float(hi)


def summarize(values: Sequence[float], groups: Sequence[object] | None = None,
              *, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
  """`t_interval` plus the (cluster) bootstrap interval as boot_low/high."""
  out = t_interval(values, confidence)
  out['boot_low'], out['boot_high'] = bootstrap_ci(
      values, groups, confidence=confidence, seed=seed)
  return out


def corrected_ttest(diffs: Sequence[float], test_train_ratio: float) -> float:
  """Two-sided p of the Nadeau-Bengio corrected resampled t-test.

  Replaces the variance sd²/n of the mean difference by
  sd² · (1/n + n_test/n_train) to allow for overlapping training sets
  (Nadeau & Bengio, 2003; Bouckaert & Frank, 2004). NaN with < 2 diffs.
  """
  d = _finite(diffs)
  n = d.size
  if n < 2:
    return math.nan
  sd = d.std(ddof=1)
  if sd == 0:
    return 1.0 if d.mean() == 0 else 0.0
  t = d.mean() / (sd * math.sqrt(1.0 / n + test_train_ratio))
  return float(2 * sps.t.sf(abs(t), n - 1))


def paired_comparison(a: Sequence[float], b: Sequence[float],
                      groups: Sequence[object] | None = None, *,
                      confidence: float = 0.95,
                      test_train_ratio: float | None = None,
                      seed: int = 0) -> dict[str, float]:
  """Compares arm A with arm B on the same cells (A - B).

  Returns n, mean_diff, sd_diff, the t-interval (ci_low/ci_high) and the
  cluster-bootstrap interval (boot_low/boot_high) of the mean difference,
  t_p (scipy.stats.ttest_rel, the primary test), wilcoxon_p
  (scipy.stats.wilcoxon, signed-rank, two-sided; zero differences dropped)
  and, given test_train_ratio, corrected_p (`corrected_ttest`). Pairs with a
  non-finite member are dropped. Undefined p-values are NaN.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f'paired arrays differ in length: {a.size} != {b.size}')
  keep = np.isfinite(a) & np.isfinite(b)
  a, b = a[keep], b[keep]
  g = None if groups is None else np.asarray(groups)[keep]
  d = a - b
  ci = t_interval(d, confidence)
  out = {'n': ci['n'], 'mean_diff': ci['mean'], 'sd_diff': ci['sd'],
         'ci_low': ci['ci_low'], 'ci_high': ci['ci_high']}
  out['boot_low'], out['boot_high'] = bootstrap_ci(
      d, g, confidence=confidence, seed=seed)
  out['t_p'] = out['wilcoxon_p'] = out['corrected_p'] = math.nan
  if d.size >= 2 and not np.any(d != 0):
    # Identical arms: no evidence of a difference (scipy would give NaN).
    out['t_p'] = out['wilcoxon_p'] = 1.0
    if test_train_ratio is not None:
      out['corrected_p'] = 1.0
  elif d.size >= 2:
    with warnings.catch_warnings():
      # Constant differences: scipy warns and returns NaN, which we keep.
      warnings.simplefilter('ignore', RuntimeWarning)
      out['t_p'] = float(sps.ttest_rel(a, b).pvalue)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', (RuntimeWarning, UserWarning))
      out['wilcoxon_p'] = float(sps.wilcoxon(a, b).pvalue)
    if test_train_ratio is not None:
      out['corrected_p'] = corrected_ttest(d, test_train_ratio)
  return out
