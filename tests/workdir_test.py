"""Tests for input_pipeline.workdir: the lock and the config check."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from input_pipeline import workdir
from input_pipeline.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holder(path):
  """A separate process that holds the lock on `path` until killed."""
  code = ('import sys, time\n'
          'from input_pipeline import workdir\n'
          f'with workdir.lock({str(path)!r}, job="holder"):\n'
          '  print("locked", flush=True)\n'
          '  time.sleep(120)\n')
  proc = subprocess.Popen([sys.executable, '-c', code, 'holder-arg'],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def test_second_run_refused_and_killed_run_releases(tmp_path):
  proc = _holder(tmp_path)
  try:
    t0 = time.time()
    with pytest.raises(workdir.WorkdirBusyError) as e:
      with workdir.lock(str(tmp_path), job='second'):
        pass
    assert time.time() - t0 < 1  # refuses at once, no waiting
    msg = str(e.value)
    assert msg.startswith(f'{tmp_path} is in use by pid {proc.pid} on '
                          f'{socket.gethostname()}, holder started 20')
    assert 'holder-arg' in msg and 'another --workdir' in msg
    assert '\n' not in msg
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # The OS dropped the killed process's lock: nothing stuck.
  with workdir.lock(str(tmp_path), job='third'):
    info = json.loads((tmp_path / workdir.LOCK_FILE).read_text())
    assert info['pid'] == os.getpid() and info['job'] == 'third'
  assert not (tmp_path / workdir.LOCK_FILE).exists()  # removed at the end


def test_same_process_twice_is_refused(tmp_path):
  with workdir.lock(str(tmp_path)):
    with pytest.raises(workdir.WorkdirBusyError, match='by this process'):
      with workdir.lock(str(tmp_path)):
        pass


def _config(**overrides):
  c = ml_collections.ConfigDict({
      'arm': 'none', 'seed': 0, 'log_every_steps': 10,
      'data': {'fold': 0, 'tfds_dir': '/a', 'num_workers': 0,
               'percentiles': (0.5, 99.5)}})
  for k, v in overrides.items():
    node, *rest = k.split('.')
    if rest:
      c[node][rest[0]] = v
    else:
      c[k] = v
  return c


def test_differences_flatten_and_ignore():
  assert workdir.differences(_config(), _config(**{
      'log_every_steps': 1, 'data.tfds_dir': '/b',
      'data.num_workers': 4})) == []
  diffs = workdir.differences(_config(), _config(**{
      'arm': 'classic', 'data.fold': 2}))
  assert diffs == [('arm', 'none', 'classic'), ('data.fold', 0, 2)]
  assert workdir.differences(_config(), _config(seed=1),
                             ignore=('seed',)) == []
  # A key one side lacks differs too; tuples compare as JSON lists.
  old = json.loads(json.dumps(_config().to_dict()))
  del old['seed']
  assert workdir.differences(old, _config()) == [('seed', '<absent>', 0)]
  # Unless the key is newer than the old config.json, and its new value
  # (or any value: ANY) is the one that gives what the old runs computed.
  assert workdir.differences(old, _config(), absent={'seed': 0}) == []
  assert workdir.differences(old, _config(seed=1), absent={'seed': 0}) == [
      ('seed', '<absent>', 1)]
  assert workdir.differences(old, _config(seed=1),
                             absent={'seed': workdir.ANY}) == []
  assert workdir.differences(_config(seed=2), _config(seed=1),
                             absent={'seed': workdir.ANY}) == [
                                 ('seed', 2, 1)]


def test_check_config_only_where_there_is_something_to_resume(tmp_path):
  w = str(tmp_path)
  workdir.record_config(w, _config())
  workdir.check_config(w, _config(arm='classic'))  # nothing to resume
  os.makedirs(tmp_path / 'checkpoints' / '4')
  workdir.check_config(w, _config(log_every_steps=3))  # ignored key
  with pytest.raises(workdir.ConfigMismatchError) as e:
    workdir.check_config(w, _config(arm='classic', seed=1))
  msg = str(e.value)
  assert msg.startswith(f'{w} holds checkpoints made by another config '
                        '(2 key(s) differ')
  assert "arm: 'none' there, 'classic' now; seed: 0 there, 1 now" in msg
  os.remove(tmp_path / 'config.json')
  with pytest.raises(workdir.ConfigMismatchError, match='no config.json'):
    workdir.check_config(w, _config())


def test_claim_locks_checks_records(tmp_path):
  w = str(tmp_path / 'w')
  with workdir.claim(w, _config(), job='resnet'):
    assert json.load(open(os.path.join(w, 'config.json')))['arm'] == 'none'
    with pytest.raises(workdir.WorkdirBusyError):
      with workdir.claim(w, _config(), job='resnet'):
        pass
  open(os.path.join(w, 'results.json'), 'w').close()
  with pytest.raises(workdir.ConfigMismatchError, match="arm: 'none'"):
    with workdir.claim(w, _config(arm='gan'), job='resnet'):
      pass
  # Two phases: lock first, record once the (completed) config is known.
  with workdir.claim(w, job='pggan', outputs=('results.json',)) as c:
    c.record(_config(log_every_steps=99))
  assert json.load(open(os.path.join(w, 'config.json')))[
      'log_every_steps'] == 99
  with pytest.raises(UserInputError, match='--workdir is required'):
    with workdir.claim('', _config(), job='resnet'):
      pass


def test_classifier_and_sampler_refuse_a_locked_workdir(tmp_path,
                                                        monkeypatch):
  # pylint: disable=g-import-not-at-top
  from configs import resnet as resnet_config
  from pggan_jax import sample
  from resnet_jax import train
  w = str(tmp_path / 'clf')
  with workdir.lock(w, job='other'):
    with pytest.raises(workdir.WorkdirBusyError, match='in use by this'):
      train.train_and_evaluate(resnet_config.get_config('tiny'), w)
  assert not os.path.exists(os.path.join(w, 'config.json'))
  # Two samplers writing one output folder: the second refuses before
  # writing anything (the GAN workdir itself is only read).
  out = tmp_path / 'samples'
  proc = _holder(out)
  monkeypatch.setattr(sample, 'load_generator', lambda *a: (None,) * 5)
  try:
    with pytest.raises(workdir.WorkdirBusyError,
                       match=f'{out} is in use by pid {proc.pid}'):
      sample.sample(str(tmp_path / 'gan'), 4, str(out))
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.listdir(out) == [workdir.LOCK_FILE]


def test_racing_claims_hold_one_at_a_time(tmp_path):
  # Lock files are removed on release: a racer that locked the removed file
  # must notice and retry, never hold the lock alongside another.
  import threading  # pylint: disable=g-import-not-at-top
  inside, most, acquired = [0], [0], [0]
  guard = threading.Lock()

  def racer():
    for _ in range(200):
      try:
        with workdir.lock(str(tmp_path)):
          with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            acquired[0] += 1
          time.sleep(0.0002)
          with guard:
            inside[0] -= 1
      except workdir.WorkdirBusyError:
        pass

  threads = [threading.Thread(target=racer) for _ in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert most[0] == 1 and acquired[0] > 10
