"""Tests for pggan_jax.train (resume == uninterrupted) and the sample CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from configs import pggan
from pggan_jax import sample
from pggan_jax import train

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(total_kimg):
  cfg = pggan.get_config('tiny')
  cfg.model.resolution = 8
  cfg.sched.lod_training_kimg = 0.04
  cfg.sched.lod_transition_kimg = 0.04
  cfg.sched.tick_kimg = 0.05
  cfg.total_kimg = total_kimg
  cfg.checkpoint_kimg = 1.0
  cfg.log_every_steps = 4
  return cfg


def _restore_all(workdir):
  mgr = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      item_names=('g', 'd', 'g_ema', 'opt', 'meta', 'data'))
  step = mgr.latest_step()
  out = mgr.restore(step, args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore() for k in ('g', 'd', 'g_ema', 'opt')},
      meta=ocp.args.JsonRestore()))
  mgr.close()
  return step, out


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('pggan')
  resumed, straight = str(base / 'resumed'), str(base / 'straight')
  # Stop mid fade-in (0.06 kimg), then resume to the end (0.12 kimg).
  train.train_and_evaluate(_config(0.06), resumed)
  first_step, _ = _restore_all(resumed)
  train.train_and_evaluate(_config(0.12), resumed)
  train.train_and_evaluate(_config(0.12), straight)
  return first_step, resumed, straight


def test_resume_matches_uninterrupted_run(runs):
  first_step, resumed, straight = runs
  step_a, a = _restore_all(resumed)
  step_b, b = _restore_all(straight)
  assert 0 < first_step < step_a == step_b
  assert a['meta']['lod'] == b['meta']['lod']
  for k in ('g', 'd', 'g_ema', 'opt'):
    la, lb = jax.tree.leaves(a[k]), jax.tree.leaves(b[k])
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6,
                                 atol=1e-7)
  assert os.listdir(os.path.join(straight, 'samples'))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(straight))
  # A third call finds the schedule complete and returns at once.
  assert train.train_and_evaluate(_config(0.12), straight) == b['meta'][
      'metrics']


def test_sample_cli_writes_decodable_pngs(runs, tmp_path):
  _, _, workdir = runs
  out = str(tmp_path / 'out')
  cmd = [sys.executable, 'main.py', '--config=configs/sample.py',
         f'--config.workdir={workdir}', '--config.num_images=3',
         f'--config.output_dir={out}']
  subprocess.run(cmd, cwd=_ROOT, check=True, capture_output=True)
  pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
  assert len(pngs) == 3
  for f in pngs:
    with Image.open(os.path.join(out, f)) as im:
      assert im.size == (8, 8) and im.mode == 'L'
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['resolution'] == 8 and manifest['seed'] == 0
  # Same seed, same images (in-process API).
  again = sample.sample(workdir, 3, str(tmp_path / 'again'))
  for f in pngs:
    np.testing.assert_array_equal(
        np.asarray(Image.open(os.path.join(out, f))),
        np.asarray(Image.open(os.path.join(tmp_path, 'again', f))))
  assert again['checkpoint_step'] == manifest['checkpoint_step']


def test_sample_without_checkpoint_is_one_line_error(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  (empty / 'config.json').write_text('{}')
  cmd = [sys.executable, 'main.py', '--config=configs/sample.py',
         f'--config.workdir={empty}', f'--config.output_dir={tmp_path}/o']
  res = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True)
  assert res.returncode == 2
  assert res.stderr.strip().splitlines()[-1].startswith('error: no checkpoint')
