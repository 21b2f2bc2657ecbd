"""Tests for resnet_jax.stats and resnet_jax.report (pure, no training)."""

import csv
import math
import os

import numpy as np
import pytest
from scipy import stats as sps

from input_pipeline import images
from resnet_jax import report
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


def test_t_interval_drops_nan_and_handles_one_value():
  s = stats.t_interval([0.5, float('nan')])
  assert s['n'] == 1 and s['mean'] == 0.5
  assert math.isnan(s['sd']) and math.isnan(s['ci_low'])


def test_paired_comparison_matches_scipy():
  a = [0.81, 0.79, 0.88, 0.90, 0.76, 0.84, 0.83]
  b = [0.78, 0.80, 0.82, 0.85, 0.71, 0.80, 0.84]
  c = stats.paired_comparison(a, b, test_train_ratio=0.25)
  d = np.subtract(a, b)
  assert c['n'] == 7
  assert c['mean_diff'] == pytest.approx(d.mean())
  assert c['t_p'] == pytest.approx(sps.ttest_rel(a, b).pvalue)
  assert c['wilcoxon_p'] == pytest.approx(sps.wilcoxon(a, b).pvalue)
  lo, hi = sps.t.interval(0.95, 6, loc=d.mean(), scale=sps.sem(d))
  assert (c['ci_low'], c['ci_high']) == pytest.approx((lo, hi))
  # The corrected test is more conservative than the plain one.
  assert c['corrected_p'] > c['t_p']
  t = d.mean() / (d.std(ddof=1) * math.sqrt(1 / 7 + 0.25))
  assert c['corrected_p'] == pytest.approx(2 * sps.t.sf(abs(t), 6))


def test_paired_comparison_identical_arms():
  c = stats.paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
  assert c['mean_diff'] == 0 and c['t_p'] == 1.0 and c['wilcoxon_p'] == 1.0


def test_bootstrap_contains_mean_and_clusters():
  x = np.random.default_rng(0).normal(1.0, 0.1, size=30)
  lo, hi = stats.bootstrap_ci(x, seed=1)
  assert lo < x.mean() < hi
  # Identical groups -> every resample has the same mean.
  lo, hi = stats.bootstrap_ci([1, 2, 1, 2], groups=[0, 0, 1, 1])
  assert lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
  assert all(math.isnan(v) for v in stats.bootstrap_ci([1, 2], [0, 0]))


def _rows(num_folds=3, num_seeds=2, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for f in range(num_folds):
    for s in range(num_seeds):
      for i, arm in enumerate(report.ARMS):
        row = {'fold': f, 'seed': s, 'arm': arm}
        for m in report.METRICS:
          row[m] = float(np.clip(0.6 + 0.05 * i + rng.normal(0, 0.02), 0, 1))
        row['threshold'] = 0.5
        rows.append(row)
  return rows


def test_results_csv_columns_and_roundtrip(tmp_path):
  rows = _rows()
  path = str(tmp_path / 'results.csv')
  report.write_results_csv(rows, path)
  with open(path) as f:
    header = f.readline().strip()
  assert header.startswith(
      'fold,seed,arm,accuracy,sensitivity,specificity,balanced_accuracy,f1,'
      'auc')
  assert header.split(',')[9:] == ['threshold']
  back = report.read_results_csv(path)
  assert len(back) == len(rows) == 3 * 2 * 4
  assert back[5]['fold'] == rows[5]['fold']
  assert back[5]['auc'] == pytest.approx(rows[5]['auc'])


def test_results_csv_rejects_missing_metric(tmp_path):
  with pytest.raises(ValueError, match='auc'):
    report.write_results_csv([{'fold': 0, 'seed': 0, 'arm': 'none'}],
                             str(tmp_path / 'r.csv'))


def test_comparisons_pair_on_fold_and_seed():
  rows = _rows()
  # Shuffle: pairing must use (fold, seed), not row order.
  rows = rows[::-1]
  comps = report.paired_comparisons(rows)
  assert set(comps) == set(report.COMPARISONS)
  a = [r['auc'] for r in sorted(rows, key=lambda r: (r['fold'], r['seed']))
       if r['arm'] == 'gan']
  b = [r['auc'] for r in sorted(rows, key=lambda r: (r['fold'], r['seed']))
       if r['arm'] == 'none']
  assert comps[('gan', 'none')]['auc']['t_p'] == pytest.approx(
      sps.ttest_rel(a, b).pvalue)


def test_markdown_mentions_arms_intervals_and_tests():
  rows = _rows()
  md = report.render_markdown(
      rows, config_json='{"a": 1}', timings={'total': 75.0},
      data_summary={'name': 'synthetic_head_ct', 'class_names': ['n', 'h'],
                    'counts': {'n': 10, 'h': 10}, 'duplicate_groups': 0,
                    'folds': [{'train': {'n': 4, 'h': 4}}]},
      test_train_ratio=0.5)
  for arm in report.ARMS:
    assert f'| {arm} | auc |' in md
  assert '### classic+gan vs classic' in md and '### gan vs none' in md
  assert '95% CI' in md and 'Wilcoxon' in md and 'primary' in md
  assert '1.2 min' in md and '{"a": 1}' in md and 'n 10, h 10' in md
  mean = np.mean([r['auc'] for r in rows if r['arm'] == 'none'])
  assert f'{mean:.3f} ±' in md


def test_write_report_makes_plots(tmp_path):
  rows = _rows()
  rng = np.random.default_rng(0)
  preds = {arm: [(np.array([0, 0, 1, 1]), rng.uniform(size=4))
                 for _ in range(2)] for arm in report.ARMS}
  sample_dir = tmp_path / 'samples'
  for name in ('normal', 'hemorrhage'):
    for i in range(3):
      images.save_png(np.full((16, 16, 1), 40 * i, np.uint8),
                      str(sample_dir / name / f'{i:04d}.png'))
  samples = report.load_samples(str(sample_dir), ['normal', 'hemorrhage'])
  assert samples['normal'].shape == (3, 16, 16, 1)
  assert samples['normal'].min() == -1.0
  written = report.write_report(str(tmp_path), rows, predictions=preds,
                                samples=samples)
  for name in ('results.csv', 'report.md', 'arms.png', 'roc.png',
               'samples.png'):
    assert os.path.getsize(written[name]) > 0, name
  with open(written['results.csv']) as f:
    assert len(list(csv.reader(f))) == 1 + len(rows)


def test_read_predictions(tmp_path):
  path = tmp_path / 'p.csv'
  path.write_text('id,label,prob\n001,1,0.9\n002,0,0.2\n')
  y, p = report.read_predictions(str(path))
  assert y.tolist() == [1, 0] and p.tolist() == [0.9, 0.2]
