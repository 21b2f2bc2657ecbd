"""Tests for resnet_jax.report and resnet_jax.plots (pure, no training)."""

import csv
import json
import math
import os
import re

import numpy as np
import pytest
from scipy import stats as sps

from input_pipeline import images
from resnet_jax import plots
from resnet_jax import report
from resnet_jax import stats


def _rows(num_repeats=2, num_folds=3, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for r in range(num_repeats):
    for f in range(num_folds):
      for i, arm in enumerate(report.ARMS):
        row = {'repeat': r, 'fold': f, 'seed': 7 + r, 'arm': arm}
        for m in report.METRICS:
          row[m] = float(np.clip(0.6 + 0.05 * i + rng.normal(0, 0.02), 0, 1))
        row['threshold'] = 0.5
        rows.append(row)
  return rows


def _cells(rows, arm, metric='auc'):
  """metric of `arm`, in (repeat, fold) order."""
  return [r[metric] for r in sorted(rows, key=lambda r: (r['repeat'],
                                                          r['fold']))
          if r['arm'] == arm]


def test_results_csv_columns_and_roundtrip(tmp_path):
  rows = _rows()
  path = str(tmp_path / 'results.csv')
  report.write_results_csv(rows, path)
  with open(path) as f:
    header = f.readline().strip()
  assert header.startswith(
      'repeat,fold,seed,arm,accuracy,sensitivity,specificity,'
      'balanced_accuracy,f1,auc')
  assert header.split(',')[10:] == ['threshold']
  back = report.read_results_csv(path)
  assert len(back) == len(rows) == 2 * 3 * 4
  for k in ('repeat', 'fold', 'seed'):
    assert back[13][k] == rows[13][k] and isinstance(back[13][k], int)
  assert back[13]['auc'] == pytest.approx(rows[13]['auc'])


def test_results_csv_rejects_missing_columns(tmp_path):
  with pytest.raises(ValueError, match='auc'):
    report.write_results_csv(
        [{'repeat': 0, 'fold': 0, 'seed': 0, 'arm': 'none'}],
        str(tmp_path / 'r.csv'))
  row = _rows()[0]
  del row['repeat']
  with pytest.raises(ValueError, match='repeat'):
    report.write_results_csv([row], str(tmp_path / 'r.csv'))


def test_sort_rows_by_repeat_fold_arm():
  rows = report.sort_rows(_rows()[::-1])
  keys = [(r['repeat'], r['fold'], report.ARMS.index(r['arm'])) for r in rows]
  assert keys == sorted(keys)
  assert [r['arm'] for r in rows[:4]] == list(report.ARMS)
  assert (rows[4]['repeat'], rows[4]['fold']) == (0, 1)


def test_comparisons_pair_on_repeat_and_fold():
  rows = _rows()
  # Shuffle: pairing must use (repeat, fold), not row order.
  rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
  comps = report.paired_comparisons(rows, test_train_ratio=0.25)
  assert set(comps) == set(report.COMPARISONS)
  a, b = _cells(rows, 'gan'), _cells(rows, 'none')
  c = comps[('gan', 'none')]['auc']
  assert c['n'] == 6
  assert c['t_p'] == pytest.approx(sps.ttest_rel(a, b).pvalue)
  expect = stats.corrected_ttest(np.subtract(a, b), 0.25)
  assert c['corrected_p'] == pytest.approx(expect['p'])
  assert c['ci_low'] == pytest.approx(expect['ci_low'])


def test_comparisons_reject_two_rows_for_one_cell():
  rows = _rows()
  rows.append(dict(rows[0]))
  with pytest.raises(ValueError, match='repeat 0 fold 0'):
    report.paired_comparisons(rows)


def test_holm_over_the_two_primary_comparisons():
  rows = _rows()
  comps = report.paired_comparisons(rows, test_train_ratio=0.25,
                                    primary_metric='f1')
  raw = [comps[p]['f1']['corrected_p'] for p in report.COMPARISONS]
  holm = [comps[p]['f1']['holm_p'] for p in report.COMPARISONS]
  assert holm == pytest.approx(stats.holm(raw))
  # Two hypotheses: the smaller p doubles, the larger is at least that.
  i = int(np.argmin(raw))
  assert holm[i] == pytest.approx(min(2 * raw[i], 1.0))
  assert holm[1 - i] == pytest.approx(max(holm[i], raw[1 - i]))
  # Only the primary metric is in the family.
  assert all('holm_p' not in comps[p]['auc'] for p in report.COMPARISONS)


def test_arm_summaries_use_logit_interval():
  rows = []
  for f, auc in enumerate([0.99, 1.0, 0.2]):
    for arm in ('none', 'gan'):
      rows.append({'repeat': 0, 'fold': f, 'seed': 0, 'arm': arm,
                   **{m: auc for m in report.METRICS}})
  s = report.arm_summaries(rows, test_train_ratio=0.5)['gan']['auc']
  assert 0 < s['ci_low'] < s['ci_high'] < 1
  md = report.render_markdown(rows, test_train_ratio=0.5)
  line = next(l for l in md.splitlines() if l.startswith('| gan | auc |'))
  lo, hi = map(float, re.findall(r'\[([-\d.]+), ([-\d.]+)\]', line)[0])
  assert 0 <= lo < hi <= 1
  assert 'logit' in md


def test_group_means_per_fold_over_repeats():
  rows = _rows()
  table = report.group_means(rows, 'auc', 'fold')
  vals = [r['auc'] for r in rows if r['arm'] == 'gan' and r['fold'] == 2]
  assert len(vals) == 2
  assert table['gan'][2]['mean'] == pytest.approx(np.mean(vals))
  assert table['gan'][2]['sd'] == pytest.approx(np.std(vals, ddof=1))
  per_repeat = report.group_means(rows, 'auc', 'repeat')
  assert per_repeat['gan'][1]['n'] == 3


_GATE = {'passed': False, 'reasons': ['c2st accuracy 0.99 > 0.75',
                                      'recall 0.01 < 0.1']}
_QUALITY = [
    {'repeat': 0, 'fold': 0, 'class': 'hemorrhage', 'swd': 2.5, 'fd': 150.0,
     'c2st_accuracy': 0.99, 'recall': None, 'passed': False},
    {'repeat': 0, 'fold': 0, 'class': 'normal', 'swd': 1.5, 'fd': 250.0,
     'c2st_accuracy': 0.97, 'recall': 0.2, 'passed': True},
]


def _markdown(rows, **kwargs):
  return report.render_markdown(
      rows, config_json='{"a": 1}', timings={'total': 75.0},
      data_summary={'name': 'head_ct', 'class_names': ['n', 'h'],
                    'counts': {'n': 10, 'h': 10}, 'duplicate_groups': 0,
                    'repeats': [{'split_seed': 3, 'folds': [
                        {'train': {'n': 4, 'h': 5}}]}]},
      test_train_ratio=0.5, **kwargs)


def test_markdown_mentions_arms_intervals_and_tests():
  rows = _rows()
  md = _markdown(rows)
  for arm in report.ARMS:
    assert f'| {arm} | auc | 6 | ' in md
  assert '### classic+gan vs classic' in md and '### gan vs none' in md
  assert '95% CI' in md and 'Wilcoxon' in md and 'primary' in md
  assert 'corrected resampled t-test' in md and 'Bouckaert' in md
  assert 'n_test/n_train = 0.500' in md
  assert '| corrected p | Holm p | t-test p (indep.) |' in md
  assert 'Holm' in md and 'exploratory' in md and 'uncorrected' in md
  assert 'anti-conservative' in md
  assert '2 repeat(s) x 3 fold(s) x 4 arms' in md
  assert '1.2 min' in md and '{"a": 1}' in md and 'n 10, h 10' in md
  assert '| 0 | 0 | 4/5 |' in md and 'split seed(s) 3' in md
  first_repeat_only = report.render_markdown(rows, data_summary={
      'class_names': ['n', 'h'], 'split_seed': 3, 'split_seeds': [3, 4],
      'folds': [{'test': {'n': 1, 'h': 2}}]})
  assert 'Split seeds of the repeats: 3, 4' in first_repeat_only
  assert '| 0 | 0 | 0/0 | 0/0 | 1/2 |' in first_repeat_only
  mean = np.mean([r['auc'] for r in rows if r['arm'] == 'none'])
  assert f'{mean:.3f} ±' in md
  c = report.paired_comparisons(rows, test_train_ratio=0.5)
  c = c[('gan', 'none')]['auc']
  assert (f'| **auc** (primary) | 6 | {c["mean_diff"]:.3f} | '
          f'[{c["ci_low"]:.3f}, {c["ci_high"]:.3f}] |') in md
  assert 'boot' not in md.lower()
  # Without the optional sections they are absent.
  for head in ('How the defaults were chosen', 'Synthetic image quality',
               '## Figures'):
    assert head not in md
  # One quote: gan arms with no quality measured say so.
  assert md.count('\n> ') == 1 and '\n> **GAN quality was not measured' in md


def test_markdown_marks_clipped_bounds():
  rows = []
  for f, (a, b) in enumerate([(0.95, 0.05), (0.1, 0.6), (0.9, 0.0)]):
    rows += [{'repeat': 0, 'fold': f, 'seed': 0, 'arm': 'gan',
              **{m: a for m in report.METRICS}},
             {'repeat': 0, 'fold': f, 'seed': 0, 'arm': 'none',
              **{m: b for m in report.METRICS}}]
  md = report.render_markdown(rows, test_train_ratio=0.25)
  assert '[-1.000*, 1.000*]' in md


def test_markdown_first_lines_warn_about_smoke_run_and_gate():
  md = _markdown(_rows(), smoke_note='A `:tiny` smoke run: the numbers '
                 'test the machinery, not a finding.', gate=_GATE)
  lines = md.splitlines()
  first_table = next(i for i, l in enumerate(lines) if l.startswith('|'))
  head = '\n'.join(lines[:first_table])
  assert lines[0].startswith('# ')
  assert lines[2].startswith('> ') and ':tiny' in lines[2]
  assert 'do not test GAN augmentation' in head
  assert 'c2st accuracy 0.99 > 0.75; recall 0.01 < 0.1' in head
  assert head.index(':tiny') < head.index('do not test GAN')
  passed = _markdown(_rows(), gate={'passed': True, 'reasons': []})
  assert 'do not test GAN augmentation' not in passed
  assert 'passed the synthetic-image quality gate' in passed
  assert 'not measured' not in passed


def test_markdown_passed_gate_names_pooled_c2st_and_failed_classes():
  gate = {'passed': True, 'reasons': [], 'classes': {
      'all': {'c2st_accuracy': 0.72, 'c2st_n': 200, 'c2st_ci_low': 0.653,
              'c2st_ci_high': 0.781},
      'normal': {'c2st_accuracy': 0.66, 'c2st_n': 100, 'c2st_ci_low': 0.558,
                 'c2st_ci_high': 0.752}}}
  md = _markdown(_rows(), gate=gate, gan_quality=_QUALITY)
  line = next(l for l in md.splitlines() if 'passed the synthetic' in l)
  assert ('C2ST accuracy all classes 0.72 [0.65, 0.78] (n = 200), normal '
          '0.66 [0.56, 0.75] (n = 100) (exact 95% intervals); 0.5 =') in line
  assert 'judged per class and on all classes together' in line
  assert ('1 of the 2 per-class measurements failed it on their own '
          "(each on its cell's held-out images alone; the gate allows a "
          'few): repeat 0 fold 0 hemorrhage.') in line
  # A gate of an older summary.json: its all-class figures only.
  old = {'passed': True, 'reasons': [], 'pooled': gate['classes']['all']}
  line = next(l for l in _markdown(_rows(), gate=old).splitlines()
              if 'passed the synthetic' in l)
  assert ('judged on all classes together against held-out real images, '
          'pooled over the cells: C2ST accuracy all classes 0.72 [0.65, '
          '0.78] (n = 200) (exact') in line
  assert 'the gate allows' not in line
  many = [dict(_QUALITY[0], fold=f) for f in range(7)]
  line = next(l for l in _markdown(_rows(), gate=gate, gan_quality=many)
              .splitlines() if 'passed the synthetic' in l)
  assert '7 of the 7' in line and 'e.g. repeat 0 fold 0' in line
  assert 'fold 4 hemorrhage.' in line and 'fold 5' not in line


def test_markdown_says_when_gan_quality_was_not_measured():
  md = _markdown(_rows())  # gan arms, no gate
  head = md[:md.index('|')]
  assert '**GAN quality was not measured**' in head
  no_gan = [r for r in _rows() if 'gan' not in r['arm']]
  assert 'not measured' not in _markdown(no_gan)


def test_markdown_sections_from_the_caller():
  md = _markdown(
      _rows(), design='The gan arms add synthetic images on top of the '
      'same real exposures.', provenance='Learning rate chosen on val.',
      sub_configs={'GAN (repeat 0 fold 0 class h)': '{"g": 2}',
                   'classifier (arm classic)': '{"c": 3}'},
      gan_quality=_QUALITY, gate=_GATE, figures=['arms.png', 'roc.png'])
  assert 'on top of the same' in md
  assert 'equal compute' not in md
  assert md.index('on top of the same') < md.index('## Metrics per arm')
  assert '## How the defaults were chosen\n\nLearning rate chosen on val.' \
      in md
  config = md.index('## Configuration')
  assert config < md.index('### GAN (repeat 0 fold 0 class h)')
  assert '```json\n{"c": 3}\n```' in md[config:]
  assert '## Per-fold means (descriptive)' in md
  assert '| arm | fold 0 | fold 1 | fold 2 |' in md
  assert 'pooled over cells (descriptive; inference uses the per-cell ' \
      'tests)' in md
  # Quality table: only the keys present, n/a for None, a mean row.
  assert ('| repeat | fold | class | swd | fd | recall | c2st_accuracy | '
          'passed |') in md
  assert '| 0 | 0 | hemorrhage | 2.500 | 150.0 | n/a | 0.990 | no |' in md
  assert '| **mean** | | | 2.000 | 200.0 | 0.200 | 0.980 | 1/2 |' in md


def test_quality_mean_row_counts_small_p_values():
  quality = [dict(q, spectral_excess=e, spectral_excess_p=p)
             for q, e, p in zip(_QUALITY, (0.8, 0.2), (0.005, 0.6))]
  md = _markdown(_rows(), gan_quality=quality, gate=_GATE)
  assert '| spectral_excess | spectral_excess_p | passed |' in md
  # The excess is averaged; its p-values are counted, never averaged.
  assert '| 0.500 | 1/2 <= 0.05 | 1/2 |' in md


def test_summary_json_is_strict_and_complete():
  rows = _rows()
  rows[0]['auc'] = float('nan')  # an undefined AUC must not break JSON
  text = report.summary_json(rows, test_train_ratio=0.25, gate=_GATE,
                             primary_metric='auc', config_json='ignored')

  def reject(const):
    raise ValueError(const)

  data = json.loads(text, parse_constant=reject)
  assert 'boot' not in text
  assert data['design']['repeats'] == [0, 1]
  assert data['design']['test_train_ratio'] == 0.25
  primary = data['primary']['gan vs none']
  assert 'holm_p' in primary and 'corrected_p' in primary
  comps = report.paired_comparisons(rows, test_train_ratio=0.25)
  assert primary['holm_p'] == pytest.approx(comps[('gan', 'none')]['auc'][
      'holm_p'])
  assert data['per_fold']['gan']['1']['n'] == 2
  assert data['gate'] == _GATE
  assert data['arms']['none']['auc']['n'] == 5


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
                                samples=samples, test_train_ratio=0.25,
                                smoke_note='smoke')
  for name in ('results.csv', 'report.md', 'arms.png', 'roc.png',
               'samples.png'):
    assert os.path.getsize(written[name]) > 0, name
  with open(written['results.csv']) as f:
    assert len(list(csv.reader(f))) == 1 + len(rows)
  md = open(written['report.md']).read()
  assert '`roc.png`' in md and '`samples.png`' in md and 'smoke' in md


def test_roc_title_says_descriptive(tmp_path, monkeypatch):
  saved = []
  monkeypatch.setattr(plots, '_save', lambda fig, path: saved.append(fig))
  preds = {'none': [(np.array([0, 1, 0, 1]), np.array([.1, .9, .4, .3]))]}
  plots.plot_roc(preds, str(tmp_path / 'roc.png'))
  title = saved[0].axes[0].get_title()
  assert 'pooled' in title and 'descriptive' in title


def test_read_predictions(tmp_path):
  path = tmp_path / 'p.csv'
  path.write_text('id,label,prob\n001,1,0.9\n002,0,0.2\n')
  y, p = report.read_predictions(str(path))
  assert y.tolist() == [1, 0] and p.tolist() == [0.9, 0.2]
