"""resnet_jax.study_outputs: the study's pooled quality gate."""

import pytest

from configs import gan_metrics as gm_cfg
from resnet_jax import study_outputs


def test_gate_pools_cells_weighted_by_c2st_test_size():
  cfg = gm_cfg.get_metrics_config('tiny')
  base = {'class': 'all', 'nn_distance_ratio': 1.0, 'num_exact_copies': 0,
          'num_synthetic': 100, 'ms_ssim_synthetic': 0.3,
          'ms_ssim_real': 0.3}
  # One small cell at 1.0 does not fail a study whose pooled C2ST is 0.7.
  quality = [dict(base, c2st_accuracy=1.0, c2st_n=20),
             dict(base, c2st_accuracy=0.6, c2st_n=60),
             dict(base, class_='normal', c2st_accuracy=1.0, c2st_n=10)]
  quality[2]['class'] = 'normal'  # per-class rows are not pooled
  gate = study_outputs.pooled_gate(quality, cfg)
  assert gate['passed'] and gate['pooled']['c2st_n'] == 80
  assert gate['pooled']['c2st_accuracy'] == pytest.approx(0.7)
  quality[1]['c2st_accuracy'] = 0.96
  gate = study_outputs.pooled_gate(quality, cfg)
  assert not gate['passed'] and 'pooled over 2 cells' in gate['reasons'][0]
