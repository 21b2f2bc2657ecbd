"""Tests for resnet_jax.compare: runs side by side (reads JSON only)."""

import json
import os
import subprocess
import sys

import pytest

from configs import resnet as resnet_config
from input_pipeline.errors import UserInputError
from resnet_jax import compare

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(path, *, auc, arm, synthetic=None, config=True):
  os.makedirs(path)
  metrics = {'auc': auc, 'accuracy': 0.75, 'sensitivity': None}
  results = {'val': metrics, 'test': metrics,
             'test_at_val_threshold': metrics, 'threshold': 0.5,
             'num_train': 12, 'steps': 4, 'synthetic': synthetic}
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump(results, f)
  if config:
    cfg = resnet_config.get_config('tiny')
    cfg.arm = arm
    if synthetic:
      cfg.data.synthetic_dir = synthetic['dir']
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(cfg.to_dict(), f)
  return str(path)


def test_flatten_dotted_keys():
  assert compare.flatten({'a': {'b': 1, 'c': [2, {'d': 3}]}, 'e': []}) == {
      'a.b': 1, 'a.c.0': 2, 'a.c.1.d': 3, 'e': []}


def test_compare_cli_metrics_and_differences(tmp_path):
  gan = {'dir': '/o', 'ratio': 0.5, 'gans': [{'entry': 'hemorrhage',
                                              'workdir': '/gan1',
                                              'checkpoint_step': 120}]}
  a = _write_run(tmp_path / 'a', auc=0.5, arm='classic')
  b = _write_run(tmp_path / 'b', auc=0.875, arm='gan', synthetic=gan)
  res = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/compare.py',
       f'--config.runs={a},{b}'], cwd=_ROOT, capture_output=True, text=True,
      check=True)
  lines = res.stdout.splitlines()
  row = lambda key: next(l.split() for l in lines if l.split()[:1] == [key])
  assert row('test.auc') == ['test.auc', '0.5000', '0.8750', '+0.3750']
  assert row('test.sensitivity') == ['test.sensitivity', 'n/a', 'n/a']
  assert row('steps') == ['steps', '4', '4', '+0']
  # Only what differs: the arm, the synthetic folder and its GAN.
  assert row('config.arm') == ['config.arm', 'classic', 'gan']
  assert row('config.data.synthetic_dir')[1:] == ["''", '/o']
  assert row('synthetic.gans.0.workdir') == [
      'synthetic.gans.0.workdir', 'n/a', '/gan1']
  assert not any(l.startswith('config.seed') for l in lines)


def test_compare_identical_configs_and_old_runs(tmp_path):
  a = _write_run(tmp_path / 'a', auc=0.5, arm='none')
  b = _write_run(tmp_path / 'b', auc=0.5, arm='none')
  text, out = compare.compare([a, b])
  assert out['differences'] == {} and 'identical' in text
  old = _write_run(tmp_path / 'old', auc=0.5, arm='none', config=False)
  text, _ = compare.compare([a, old])
  assert 'no config.json in B' in text


@pytest.mark.parametrize('runs, message', [
    (['only_one'], 'two or more'), (['nope', 'nope2'], 'results.json')])
def test_compare_errors(tmp_path, runs, message):
  with pytest.raises(UserInputError, match=message):
    compare.compare([str(tmp_path / r) for r in runs])
