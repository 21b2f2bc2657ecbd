"""PGGAN (and classifier) faults: another config's workdir, a busy workdir,
SIGINT and SIGTERM. SIGKILL at random moments: tests/kill_test.py."""

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from benchmarks import kill_test as harness
from configs import resnet as resnet_config
from input_pipeline import workdir
from pggan_jax import train
from resnet_jax import train as resnet_train

from input_pipeline_testlib import tiny_pggan_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(total_kimg, class_filter=1):
  cfg = tiny_pggan_config(total_kimg)
  cfg.data.class_filter = class_filter
  return cfg


def test_workdir_of_another_class_is_refused_a_longer_run_resumes(tmp_path):
  w = str(tmp_path / 'w')
  train.train_and_evaluate(_config(0.04), w)
  steps = sorted(os.listdir(os.path.join(w, 'checkpoints')), key=int)
  written = {f: os.stat(os.path.join(w, f)).st_mtime_ns
             for f in ('config.json', 'splits.json', 'training_data.json')}
  # The same workdir on the other class: refused before anything changes.
  with pytest.raises(workdir.ConfigMismatchError,
                     match=r'data\.class_filter: 1 there, 0 now') as e:
    train.train_and_evaluate(_config(0.04, class_filter=0), w)
  assert str(e.value).startswith(f'{w} holds checkpoints made by another '
                                 'config (1 key(s) differ')
  assert sorted(os.listdir(os.path.join(w, 'checkpoints')), key=int) == steps
  assert {f: os.stat(os.path.join(w, f)).st_mtime_ns for f in written} == (
      written)
  assert json.load(open(os.path.join(w, 'config.json')))[
      'data']['class_filter'] == 1
  # Training longer (total_kimg) with other logging, grids and SWD settings
  # resumes: those keys do not change what is trained.
  cfg = _config(0.08)
  cfg.grid_size, cfg.metrics.swd_images, cfg.log_every_steps = 4, 0, 2
  cfg.checkpoint_kimg = 1.0
  train.train_and_evaluate(cfg, w)
  step, items = harness.restore_latest(w)
  assert step == items['meta']['nimg'] >= 80 > int(steps[-1])
  assert json.load(open(os.path.join(w, 'config.json')))['total_kimg'] == 0.08
  # The grids are enlarged for viewing, with real images beside them.
  grids = sorted(os.listdir(os.path.join(w, 'samples')))
  assert 'reals_8x8.png' in grids and any(g.startswith('fakes_') for g in grids)


def test_cli_says_what_it_trains_and_when_it_is_complete(tmp_path):
  w = str(tmp_path / 'w')
  cmd = ['python', 'main.py', '--config=configs/pggan.py:tiny',
         f'--workdir={w}', '--config.model.resolution=8',
         '--config.total_kimg=0.04', '--config.sched.lod_training_kimg=0.02',
         '--config.sched.lod_transition_kimg=0.02']
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
  assert re.search(r'PGGAN: 32 training images \(fold -1, class all: '
                   r'normal, hemorrhage\), 4x4 -> 8x8, .* 0.04 kimg in all',
                   first.stdout), first.stdout
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
  assert 'Training is complete (' in again.stdout, again.stdout
  assert f'configs/sample.py --workdir={w}' in again.stdout
  assert 'Resuming' not in again.stdout


def test_busy_workdir_is_refused_at_once(tmp_path):
  w = str(tmp_path)
  with workdir.lock(w, job='other'):
    t0 = time.time()
    with pytest.raises(workdir.WorkdirBusyError,
                       match='in use by this process'):
      train.train_and_evaluate(_config(0.04), w)
    assert time.time() - t0 < 1
  assert not os.path.exists(os.path.join(w, 'checkpoints'))


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """Compilation cache and prepared data shared by the subprocess runs."""
  return str(tmp_path_factory.mktemp('shared'))


@pytest.mark.parametrize('sig,code', [(signal.SIGINT, 130),
                                      (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_exits_and_resumes(sig, code, shared,
                                                     tmp_path):
  w = str(tmp_path / 'w')
  cmd = harness.gan_command(w, shared, total_kimg=1.0, resolution=8)
  cmd.append('--config.checkpoint_kimg=0.3')
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  ckpt = os.path.join(w, 'checkpoints')
  try:
    # Training has started once the first regular checkpoint is written.
    end = time.time() + 240
    while time.time() < end and proc.poll() is None and not (
        os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
      time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == code, err[-3000:]
  assert 'Traceback' not in err and 'Segmentation fault' not in err
  name = signal.Signals(sig).name
  last = err.strip().splitlines()[-1]
  m = re.fullmatch(rf'{name}: PGGAN training stopped; saved checkpoint '
                   r'(\S+) \(kimg ([\d.]+) of 1\); run the same command '
                   'again to resume', last)
  assert m, last
  path, kimg = m.group(1), float(m.group(2))
  step, items = harness.restore_latest(w)
  assert path == os.path.join(ckpt, str(step)) and os.path.isdir(path)
  assert items['meta']['nimg'] == step == round(kimg * 1000) < 1000
  assert not os.path.exists(os.path.join(w, workdir.LOCK_FILE))
  # The same command resumes from it and trains to the end.
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f'Resuming from {path}' in res.stdout
  step, items = harness.restore_latest(w)
  assert step == items['meta']['nimg'] >= 1000


@pytest.mark.parametrize('on_device, length, saved', [
    ('no', 1, '2'), ('yes', 1, '2'),
    # Dispatches of 3 steps end at checkpoints (every 4): steps 1-3, 4.
    ('yes', 3, '4')])
def test_classifier_stops_on_sigint_and_resumes_to_the_same_result(
    tmp_path, monkeypatch, on_device, length, saved):
  cfg = resnet_config.get_config('tiny')
  cfg.data.tfds_dir = str(tmp_path / 'tfds')
  cfg.data_on_device = on_device
  cfg.steps_per_dispatch = length
  cfg.kimg = 0.064  # 8 steps of 8
  cfg.checkpoint_every_steps = cfg.eval_every_steps = 4
  straight = resnet_train.train_and_evaluate(cfg, str(tmp_path / 'straight'))
  assert straight['batches'] == ('device' if on_device == 'yes'
                                 else 'stream')
  real_run, calls = resnet_train.Feed.run, []

  def step_then_ctrl_c(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      signal.raise_signal(signal.SIGINT)  # as Ctrl-C during dispatch 2
    return real_run(*args, **kwargs)

  monkeypatch.setattr(resnet_train.Feed, 'run', step_then_ctrl_c)
  w = str(tmp_path / 'w')
  handler = signal.getsignal(signal.SIGINT)
  with pytest.raises(workdir.Interrupted) as e:
    resnet_train.train_and_evaluate(cfg, w)
  assert e.value.code == 130
  assert os.listdir(os.path.join(w, 'checkpoints')) == [saved]
  assert not os.path.exists(os.path.join(w, 'results.json'))
  assert signal.getsignal(signal.SIGINT) is handler  # restored
  monkeypatch.undo()
  resumed = resnet_train.train_and_evaluate(cfg, w)
  for k in ('val', 'test', 'threshold'):
    assert resumed[k] == straight[k]
  np.testing.assert_array_equal(
      np.loadtxt(os.path.join(w, 'test_predictions.csv'), delimiter=',',
                 skiprows=1, usecols=2),
      np.loadtxt(os.path.join(tmp_path, 'straight', 'test_predictions.csv'),
                 delimiter=',', skiprows=1, usecols=2))
