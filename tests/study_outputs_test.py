"""resnet_jax.study_outputs: the study's pooled quality gate."""

import pytest

from configs import gan_metrics as gm_cfg
from resnet_jax import study_outputs


def _row(cls, fold=0, **kw):
  return dict({'repeat': 0, 'fold': fold, 'class': cls,
               'nn_distance_ratio': 1.0, 'num_exact_copies': 0,
               'num_synthetic': 100, 'ms_ssim_synthetic': 0.3,
               'ms_ssim_real': 0.3, 'c2st_accuracy': 0.7, 'c2st_n': 40,
               'passed': True}, **kw)


def test_gate_pools_cells_weighted_by_c2st_test_size():
  cfg = gm_cfg.get_metrics_config('tiny')
  # One small cell at 1.0 does not fail a study whose pooled C2ST is 0.7.
  quality = [_row('all', 0, c2st_accuracy=1.0, c2st_n=20),
             _row('all', 1, c2st_accuracy=0.6, c2st_n=60)]
  gate = study_outputs.pooled_gate(quality, cfg)
  assert gate['passed'] and gate['pooled']['c2st_n'] == 80
  assert gate['pooled']['c2st_accuracy'] == pytest.approx(0.7)
  quality[1]['c2st_accuracy'] = 0.96
  gate = study_outputs.pooled_gate(quality, cfg)
  assert not gate['passed']
  assert gate['reasons'][0].startswith('all classes, pooled over 2 cells: ')


def test_gate_judges_each_class_pooled():
  # One class's GANs collapse in every cell (MS-SSIM 0.2 over its real
  # images' 0.2 + the 0.1 margin) while the all-class rows, half of whose
  # pairs cross classes, stay within the margin: the study fails, naming
  # the class.
  cfg = gm_cfg.get_metrics_config('tiny')
  quality = []
  for fold in range(5):
    quality += [_row('all', fold, ms_ssim_synthetic=0.33, ms_ssim_real=0.25),
                _row('normal', fold),
                _row('hemorrhage', fold, ms_ssim_synthetic=0.41,
                     ms_ssim_real=0.2, passed=False)]
  gate = study_outputs.pooled_gate(quality, cfg, max_failed_fraction=1.0)
  assert not gate['passed']
  assert [r.split(':')[0] for r in gate['reasons']] == [
      "class 'hemorrhage', pooled over 5 cells"]
  assert gate['classes']['all']['passed']
  assert not gate['classes']['hemorrhage']['passed']
  assert gate['classes']['normal']['c2st_n'] == 200


def test_gate_fails_where_many_gans_fail_on_their_own():
  # Pooled figures that pass can hide cells that fail outright: 13 cells
  # at C2ST 1.0 and 2 at 0.5 pool to 0.93 < 0.95.
  cfg = gm_cfg.get_metrics_config('tiny')
  quality = []
  for fold in range(15):
    bad = fold < 13
    quality += [_row(c, fold, c2st_accuracy=1.0 if bad else 0.5,
                     passed=not bad) for c in ('all', 'normal')]
  gate = study_outputs.pooled_gate(quality, cfg)
  assert gate['classes']['normal']['passed']  # pooled: 0.93
  assert not gate['passed'] and gate['failed'][0] == [0, 0, 'normal']
  assert gate['reasons'] == [
      '13 of the 15 per-class measurements failed on their own (more than '
      '25%: config.report.gate_max_failed_fraction), e.g. repeat 0 fold 0 '
      'normal, repeat 0 fold 1 normal, repeat 0 fold 2 normal']
  # A few failures among many are expected by chance: 3 of 15 pass the
  # gate, 4 do not.
  for q in quality:
    q['c2st_accuracy'] = 0.7
    q['passed'] = q['class'] == 'all' or q['fold'] >= 3
  assert study_outputs.pooled_gate(quality, cfg)['passed']
  quality[7]['passed'] = False  # fold 3, normal
  gate = study_outputs.pooled_gate(quality, cfg)
  assert not gate['passed'] and gate['reasons'][0].startswith('4 of the 15')
