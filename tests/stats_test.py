"""Tests for resnet_jax.stats: intervals, the corrected t-test and Holm."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from resnet_jax import stats


def test_t_interval_known_numbers():
  # mean 3, sd sqrt(2.5); t_{0.975,4} = 2.7764451051977987.
  s = stats.t_interval([1, 2, 3, 4, 5])
  assert s['n'] == 5
  assert s['mean'] == pytest.approx(3.0)
  assert s['sd'] == pytest.approx(math.sqrt(2.5))
  half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
  assert s['ci_low'] == pytest.approx(3 - half)
  assert s['ci_high'] == pytest.approx(3 + half)
  # Corrected variance: sd^2 (1/5 + 0.25).
  s = stats.t_interval([1, 2, 3, 4, 5], test_train_ratio=0.25)
  half = 2.7764451051977987 * math.sqrt(2.5 * (1 / 5 + 0.25))
  assert s['ci_high'] == pytest.approx(3 + half)


def test_t_interval_drops_nan_and_handles_one_value():
  s = stats.t_interval([0.5, float('nan')])
  assert s['n'] == 1 and s['mean'] == 0.5
  assert math.isnan(s['sd']) and math.isnan(s['ci_low'])


def test_corrected_ttest_hand_computed():
  # r = 2 repeats x k = 3 folds; n_test/n_train = 0.25 (mean over folds).
  d = np.array([0.02, 0.05, -0.01, 0.03, 0.04, 0.0])
  c = stats.corrected_ttest(d, 0.25)
  mean, var = d.sum() / 6, ((d - d.sum() / 6) ** 2).sum() / 5
  se = math.sqrt((1 / (3 * 2) + 0.25) * var)
  t = mean / se
  assert c['df'] == 5 and c['n'] == 6
  assert c['t'] == pytest.approx(t)
  assert c['p'] == pytest.approx(2 * sps.t.sf(abs(t), 5))
  q = sps.t.ppf(0.975, 5)
  assert (c['ci_low'], c['ci_high']) == pytest.approx(
      (mean - q * se, mean + q * se))
  assert not c['clipped_low'] and not c['clipped_high']
  # Without the correction term it is the one-sample t-test of d.
  assert stats.corrected_ttest(d, 0.0)['p'] == pytest.approx(
      sps.ttest_1samp(d, 0.0).pvalue)
  # ... and the correction makes it more conservative.
  assert c['p'] > stats.corrected_ttest(d, 0.0)['p']


def test_corrected_interval_is_clipped_to_minus_one_one():
  c = stats.corrected_ttest([0.9, -0.5, 0.95], 0.25)
  assert (c['ci_low'], c['ci_high']) == (-1.0, 1.0)
  assert c['clipped_low'] and c['clipped_high']
  c = stats.corrected_ttest([0.9, 0.5, 0.95], 0.25)
  assert c['ci_high'] == 1.0 and c['clipped_high']
  assert -1.0 < c['ci_low'] < 0.5 and not c['clipped_low']


def test_paired_comparison_matches_scipy():
  a = [0.81, 0.79, 0.88, 0.90, 0.76, 0.84, 0.83]
  b = [0.78, 0.80, 0.82, 0.85, 0.71, 0.80, 0.84]
  c = stats.paired_comparison(a, b, test_train_ratio=0.25)
  d = np.subtract(a, b)
  assert c['n'] == 7
  assert c['mean_diff'] == pytest.approx(d.mean())
  assert c['t_p'] == pytest.approx(sps.ttest_rel(a, b).pvalue)
  assert c['wilcoxon_p'] == pytest.approx(sps.wilcoxon(a, b).pvalue)
  se = d.std(ddof=1) * math.sqrt(1 / 7 + 0.25)
  t = d.mean() / se
  assert c['corrected_t'] == pytest.approx(t)
  assert c['corrected_p'] == pytest.approx(2 * sps.t.sf(abs(t), 6))
  assert c['corrected_p'] > c['t_p']
  # The reported interval is the corrected one, wider than the plain one.
  lo, hi = sps.t.interval(0.95, 6, loc=d.mean(), scale=se)
  assert (c['ci_low'], c['ci_high']) == pytest.approx((lo, hi))
  assert hi > sps.t.interval(0.95, 6, loc=d.mean(), scale=sps.sem(d))[1]


def test_paired_comparison_without_ratio_has_no_corrected_test():
  c = stats.paired_comparison([0.5, 0.7, 0.9], [0.4, 0.7, 0.6])
  assert math.isnan(c['corrected_p']) and math.isnan(c['ci_low'])
  assert math.isfinite(c['t_p'])


def test_identical_arms_give_p_one():
  c = stats.paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7],
                              test_train_ratio=0.25)
  assert c['mean_diff'] == 0
  assert c['t_p'] == c['wilcoxon_p'] == c['corrected_p'] == 1.0
  assert (c['ci_low'], c['ci_high']) == (0.0, 0.0)


def test_constant_nonzero_differences_give_nan_for_both_t_tests():
  # 0.8 - 0.7 and 0.9 - 0.8 differ by rounding only: scipy alone reads that
  # as a tiny variance and returns p ~ 0.
  a, b = [0.8, 0.9, 0.7, 0.6], [0.7, 0.8, 0.6, 0.5]
  c = stats.paired_comparison(a, b, test_train_ratio=0.25)
  assert c['mean_diff'] == pytest.approx(0.1)
  assert math.isnan(c['t_p']) and math.isnan(c['corrected_p'])
  assert math.isnan(c['corrected_t']) and math.isnan(c['ci_low'])
  assert c['wilcoxon_p'] == pytest.approx(sps.wilcoxon(a, b).pvalue)
  assert math.isnan(stats.corrected_ttest([0.1, 0.1, 0.1], 0.2)['p'])


@pytest.mark.parametrize('p, expected', [
    ([0.01, 0.04], [0.02, 0.04]),
    ([0.03, 0.01], [0.03, 0.02]),
    # Sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04; the running
    # maximum (step-down) lifts the last to 0.06.
    ([0.04, 0.01, 0.03], [0.06, 0.03, 0.06]),
    ([0.6, 0.7], [1.0, 1.0]),
    # An untestable hypothesis stays NaN but still counts in m.
    ([math.nan, 0.02], [math.nan, 0.04]),
    ([], []),
])
def test_holm(p, expected):
  assert stats.holm(p) == pytest.approx(expected, nan_ok=True)


def test_logit_interval_stays_in_unit_range():
  x = [0.99, 1.0, 0.2]
  plain = stats.t_interval(x)
  assert plain['ci_low'] < 0 and plain['ci_high'] > 1  # what we avoid
  s = stats.logit_interval(x)
  assert 0 < s['ci_low'] < s['mean'] < s['ci_high'] < 1
  assert s['mean'] == pytest.approx(plain['mean'])
  assert s['sd'] == pytest.approx(plain['sd'])
  # Hand-computed: expit(logit(m) ± t sd / (sqrt(n) m (1 - m))).
  m, sd = np.mean(x), np.std(x, ddof=1)
  half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3) / (m * (1 - m))
  logit = math.log(m / (1 - m))
  assert s['ci_low'] == pytest.approx(1 / (1 + math.exp(-(logit - half))))
  assert s['ci_high'] == pytest.approx(1 / (1 + math.exp(-(logit + half))))
  s = stats.logit_interval(x, test_train_ratio=0.5)
  assert 0 < s['ci_low'] and s['ci_high'] < 1


def test_logit_interval_near_half_matches_t_interval_and_edge_cases():
  x = [0.49, 0.5, 0.51, 0.5]
  s, t = stats.logit_interval(x), stats.t_interval(x)
  assert (s['ci_low'], s['ci_high']) == pytest.approx(
      (t['ci_low'], t['ci_high']), abs=1e-3)
  s = stats.logit_interval([1.0, 1.0, 1.0])
  assert (s['mean'], s['ci_low'], s['ci_high']) == (1.0, 1.0, 1.0)
  assert math.isnan(stats.logit_interval([0.7])['ci_low'])
  with pytest.raises(ValueError, match='0, 1'):
    stats.logit_interval([0.5, 1.2])
