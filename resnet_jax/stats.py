"""Statistics for the study: intervals over cells and paired arm comparisons.

Pure numpy/scipy on lists of numbers, so every figure in `report.md` can be
recomputed by hand. The design is repeated k-fold cross-validation: r repeats,
each with its own random split into k folds. The unit of analysis is a
*cell*, one (repeat, fold) pair: each cell gives one metric value per arm,
and two arms are compared on the same cells (a paired design).

Cells are not independent: within a repeat the training sets of the k folds
overlap, and across repeats the same images are reused. Treating the r*k
cells as independent (the plain paired t-test, the Wilcoxon test, the plain
t-interval) is therefore anti-conservative. The primary test is the corrected
resampled t-test (Nadeau & Bengio, 2003, in the repeated k-fold form of
Bouckaert & Frank, 2004), which inflates the variance of the mean by
n_test/n_train; intervals use the same corrected variance.
"""

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as sps

# Values of a [0, 1] metric are clipped to [EPS, 1 - EPS] before the logit.
EPS = 1e-3
# Differences of [0, 1] metrics that agree to within TOL are equal: 0.8 - 0.7
# and 0.9 - 0.8 differ by rounding only, and a t-test would read that
# rounding noise as a near-zero variance and report p ~ 0.
TOL = 1e-12


def _finite(values: Sequence[float]) -> np.ndarray:
  x = np.asarray(values, np.float64).ravel()
  return x[np.isfinite(x)]


def _constant(d: np.ndarray) -> str | None:
  """'zero' if all of d is 0, 'nonzero' if constant otherwise (within TOL)."""
  if d.size and np.all(np.abs(d) <= TOL):
    return 'zero'
  if d.size and np.ptp(d) <= TOL:
    return 'nonzero'
  return None


def _variance_factor(n: int, test_train_ratio: float | None) -> float:
  """1/n, or 1/n + n_test/n_train for the corrected resampled t-test."""
  return 1.0 / n + (0.0 if test_train_ratio is None else test_train_ratio)


def t_interval(values: Sequence[float], confidence: float = 0.95, *,
               test_train_ratio: float | None = None) -> dict[str, float]:
  """Mean, sample sd (ddof=1) and the two-sided t-interval of the mean.

  mean ± t_{(1+confidence)/2, n-1} · sd · sqrt(1/n + ρ), where ρ is
  `test_train_ratio` (n_test/n_train; ρ = 0 when None gives the textbook
  interval sd/sqrt(n)). Non-finite values are dropped (an AUC is undefined on
  a one-class test split); with fewer than two values the sd and the
  interval are NaN. The interval ignores any range the values have.
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
  se = sd * math.sqrt(_variance_factor(n, test_train_ratio))
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * se
  out.update(sd=sd, ci_low=out['mean'] - half, ci_high=out['mean'] + half)
  return out


def logit_interval(values: Sequence[float], confidence: float = 0.95, *,
                   test_train_ratio: float | None = None,
                   eps: float = EPS) -> dict[str, float]:
  """Mean ± sd and an interval of the mean of a metric that lies in [0, 1].

  A t-interval of a mean near 0 or 1 can leave [0, 1] (with 3 cells an AUC
  interval of [-0.99, 2.15] is possible). Here the interval is built on the
  logit scale and mapped back (the logit-transformed Wald interval, via the
  delta method):

    L = logit(m),  se_L = se / (m (1 - m)),
    interval = expit(L ± t_{(1+confidence)/2, n-1} · se_L),

  where m is the mean (clipped to [eps, 1 - eps] so the logit is finite) and
  se = sd · sqrt(1/n + ρ) as in `t_interval`. Transforming the mean rather
  than each value keeps the interval about the arithmetic mean that the
  report prints (it always contains it) and makes it independent of `eps`
  unless the mean itself is within `eps` of a bound; averaging logits of the
  values instead would hinge on eps whenever a cell scores exactly 1.0, as a
  small test fold often does. Far from the bounds it matches `t_interval`;
  near them it becomes asymmetric. With sd = 0 it is [mean, mean].

  Raises:
    ValueError: if a finite value lies outside [0, 1].
  """
  x = _finite(values)
  if np.any((x < 0) | (x > 1)):
    raise ValueError(f'logit_interval needs values in [0, 1], got {x}')
  out = t_interval(x, confidence, test_train_ratio=test_train_ratio)
  n, sd = out['n'], out['sd']
  if n < 2:
    return out
  if sd == 0:
    out['ci_low'] = out['ci_high'] = out['mean']
    return out
  m = min(max(out['mean'], eps), 1 - eps)
  se = sd * math.sqrt(_variance_factor(n, test_train_ratio))
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * se / (m * (1 - m))
  logit = math.log(m / (1 - m))
  out['ci_low'] = float(sps.logistic.cdf(logit - half))
  out['ci_high'] = float(sps.logistic.cdf(logit + half))
  return out


def corrected_ttest(diffs: Sequence[float], test_train_ratio: float,
                    confidence: float = 0.95) -> dict[str, float]:
  """The corrected resampled t-test of paired differences over r*k cells.

  Bouckaert & Frank (2004), after Nadeau & Bengio (2003): with n = r*k
  differences d (r repeats of k-fold cross-validation),

    t = mean(d) / sqrt((1/n + n_test/n_train) · s²),   df = n - 1,

  s² the sample variance (ddof=1); `test_train_ratio` is n_test/n_train (the
  caller passes its mean over folds). The interval of the mean difference is
  mean ± t_{(1+confidence)/2, df} · sqrt((1/n + n_test/n_train) · s²),
  clipped to [-1, 1] (the range of a difference of two [0, 1] metrics);
  clipped_low/clipped_high say whether a bound was clipped.

  Degenerate cases (equality within TOL, to ignore rounding): fewer than two
  diffs -> NaN; all diffs zero -> p = 1 and interval [0, 0]; constant
  non-zero diffs (s = 0) -> t, p and the interval are NaN, since the
  variance is not estimable (as scipy.stats.ttest_rel without rounding).

  Returns:
    {'n', 'mean_diff', 'sd_diff', 't', 'df', 'p', 'ci_low', 'ci_high',
     'clipped_low', 'clipped_high'}.
  """
  d = _finite(diffs)
  n = int(d.size)
  out = {'n': n, 'mean_diff': float(d.mean()) if n else math.nan,
         'sd_diff': math.nan, 't': math.nan, 'df': n - 1, 'p': math.nan,
         'ci_low': math.nan, 'ci_high': math.nan,
         'clipped_low': False, 'clipped_high': False}
  if n < 2:
    return out
  sd = float(d.std(ddof=1))
  out['sd_diff'] = sd
  constant = _constant(d)
  if constant == 'zero':
    out.update(t=0.0, p=1.0, ci_low=0.0, ci_high=0.0)
    return out
  if constant == 'nonzero':
    return out
  se = sd * math.sqrt(_variance_factor(n, test_train_ratio))
  t = out['mean_diff'] / se
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * se
  lo, hi = out['mean_diff'] - half, out['mean_diff'] + half
  out.update(t=float(t), p=float(2 * sps.t.sf(abs(t), n - 1)),
             ci_low=max(lo, -1.0), ci_high=min(hi, 1.0),
             clipped_low=bool(lo < -1.0), clipped_high=bool(hi > 1.0))
  return out


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error control).

  With m hypotheses and finite p sorted ascending p_(1) <= ... , the
  adjusted p_(i) is max_{j <= i} min(1, (m - j + 1) p_(j)). NaN p-values stay
  NaN but still count in m (a hypothesis that could not be tested is not
  dropped from the family, which keeps the adjustment conservative).
  """
  p = np.asarray(pvalues, np.float64).ravel()
  m = p.size
  out = np.full(m, math.nan)
  finite = np.flatnonzero(np.isfinite(p))
  order = finite[np.argsort(p[finite], kind='stable')]
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return [float(v) for v in out]


def paired_comparison(a: Sequence[float], b: Sequence[float], *,
                      confidence: float = 0.95,
                      test_train_ratio: float | None = None
                      ) -> dict[str, float]:
  """Compares arm A with arm B on the same cells (A - B).

  Primary (needs `test_train_ratio` = mean n_test/n_train; NaN without it):
  `corrected_ttest` -> corrected_p, its t and df, and the corrected interval
  ci_low/ci_high (clipped to [-1, 1], flagged by clipped_low/clipped_high).

  Secondary, treating the cells as independent and hence anti-conservative:
  t_p (scipy.stats.ttest_rel) and wilcoxon_p (scipy.stats.wilcoxon,
  signed-rank, two-sided, zero differences dropped).

  Pairs with a non-finite member are dropped. Undefined p-values are NaN.
  Identical arms give 1.0 for every p; constant non-zero differences give
  NaN for t_p and corrected_p alike (scipy would turn rounding noise in such
  differences into p ~ 0), while the rank-based wilcoxon_p stays defined.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f'paired arrays differ in length: {a.size} != {b.size}')
  keep = np.isfinite(a) & np.isfinite(b)
  a, b = a[keep], b[keep]
  d = a - b
  c = corrected_ttest(d, 0.0 if test_train_ratio is None else
                      test_train_ratio, confidence)
  out = {'n': c['n'], 'mean_diff': c['mean_diff'], 'sd_diff': c['sd_diff'],
         'test_train_ratio': (math.nan if test_train_ratio is None
                              else float(test_train_ratio)),
         'corrected_t': c['t'], 'df': c['df'], 'corrected_p': c['p'],
         'ci_low': c['ci_low'], 'ci_high': c['ci_high'],
         'clipped_low': c['clipped_low'], 'clipped_high': c['clipped_high'],
         't_p': math.nan, 'wilcoxon_p': math.nan}
  if test_train_ratio is None:
    out.update(corrected_t=math.nan, corrected_p=math.nan, ci_low=math.nan,
               ci_high=math.nan, clipped_low=False, clipped_high=False)
  constant = _constant(d)
  if d.size >= 2 and constant == 'zero':
    # Identical arms: no evidence of a difference (scipy would give NaN).
    out['t_p'] = out['wilcoxon_p'] = 1.0
  elif d.size >= 2:
    if constant is None:
      out['t_p'] = float(sps.ttest_rel(a, b).pvalue)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', (RuntimeWarning, UserWarning))
      out['wilcoxon_p'] = float(sps.wilcoxon(a, b).pvalue)
  return out
