"""Two JAX processes on localhost (jax.distributed, gloo collectives on CPU).

`python main.py --distributed --coordinator_address=localhost:PORT
--num_processes=2 --process_id=i` twice, as two hosts of a cluster would run
it, on one small PGGAN training (configs/pggan.py:tiny at 8x8). Checked:
both processes finish; only process 0 writes logs, grids and the progress
bar; the checkpoints (written by both, through orbax) reach the end and the
run resumes from them in one process; with the streaming pipeline each
process reads its own half of the training images. And configs/resnet.py:
tiny the same way: it trains on grain-streamed halves and evaluates. Other
tasks (a study) are refused over several processes, in one line.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from input_pipeline_testlib import ROOT

_TOTAL_KIMG = 0.3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _args(workdir, tfds_dir, data_on_device, total_kimg=_TOTAL_KIMG):
  return ['main.py', '--config=configs/pggan.py:tiny', f'--workdir={workdir}',
          f'--config.data.tfds_dir={tfds_dir}',
          f'--config.data_on_device={data_on_device}',
          '--config.model.resolution=8',
          '--config.sched.lod_training_kimg=0.1',
          '--config.sched.lod_transition_kimg=0.1',
          '--config.sched.tick_kimg=0.1', '--config.checkpoint_kimg=0.1',
          f'--config.total_kimg={total_kimg}']


def _run_two(cmd, env, tmp_path, timeout=600):
  """Runs cmd as processes 0 and 1; their stderr texts. Logs go to files
  (no pipe to fill); when one fails the other is killed, and both logs are
  in the failure message."""
  for attempt in range(2):  # a port taken between probe and bind: retry
    port = _free_port()
    logs = [tmp_path / f'attempt{attempt}_process{i}.log' for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
      with open(log, 'w') as f:
        procs.append(subprocess.Popen(
            cmd + [f'--coordinator_address=localhost:{port}',
                   f'--process_id={i}'],
            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
            text=True))
    deadline = time.time() + timeout
    try:
      while (any(p.poll() is None for p in procs)
             and not any(p.poll() for p in procs)
             and time.time() < deadline):
        time.sleep(0.5)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
        p.wait()
    texts = [log.read_text() for log in logs]
    if all(p.returncode == 0 for p in procs):
      return texts
    if attempt == 0 and any('address already in use' in t.lower()
                            for t in texts):
      continue
    break
  raise AssertionError('two-process run failed (return codes '
                       f'{[p.returncode for p in procs]}):\n' + '\n'.join(
                           f'--- process {i}\n{t[-3000:]}'
                           for i, t in enumerate(texts)))


@pytest.mark.parametrize('data_on_device', ['no', 'yes'])
def test_two_processes_train_tiny_pggan(tmp_path, data_on_device):
  workdir, tfds = tmp_path / 'w', tmp_path / 'tfds'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  errs = _run_two(
      [sys.executable, *_args(workdir, tfds, data_on_device),
       '--distributed', '--num_processes=2'], env, tmp_path)
  for i, err in enumerate(errs):
    assert f'JAX process {i}/2' in err
  err0, err1 = errs

  if data_on_device == 'no':
    # 32 phantom training images (pggan.py:tiny): 16 per process.
    assert 'process 0/2 reads 16 of the 32 train images' in err0
    assert 'process 1/2 reads 16 of the 32 train images' in err1

  # Only process 0 writes the TensorBoard log, metrics, grids and the bar.
  events = [f for f in os.listdir(workdir) if f.startswith('events.out')]
  assert len(events) == 1
  with open(workdir / 'metrics.jsonl') as f:
    kimgs = [json.loads(line)['kimg'] for line in f]
  assert kimgs == sorted(set(kimgs)) and kimgs[-1] == pytest.approx(
      _TOTAL_KIMG, abs=0.02)
  assert 'kimg' in err0 and 'kimg' not in err1.replace('kimg to', '')
  grids = [f for f in os.listdir(workdir / 'samples') if f.startswith('fakes')]
  assert len(grids) == len(kimgs)

  # The checkpoints both wrote resume in a single process.
  steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints')
                 if s.isdigit())
  assert steps and steps[-1] >= _TOTAL_KIMG * 1000
  res = subprocess.run(
      [sys.executable, *_args(workdir, tfds, data_on_device, 0.4)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'Resuming from' in res.stdout
  if data_on_device == 'no':
    assert 'the data stream restarts' in res.stderr


def test_two_processes_train_tiny_classifier(tmp_path):
  """configs/resnet.py:tiny over two processes: batches streamed by grain
  (each process its half; drawing them on the device needs one process),
  results written once."""
  workdir, tfds = tmp_path / 'w', tmp_path / 'tfds'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  cmd = [sys.executable, 'main.py', '--config=configs/resnet.py:tiny',
         f'--workdir={workdir}', f'--config.data.tfds_dir={tfds}',
         '--distributed', '--num_processes=2']
  err0, err1 = _run_two(cmd, env, tmp_path)
  for i, err in enumerate((err0, err1)):
    assert 'classifier batches: streamed by grain' in err
    assert f'process {i}/2 reads' in err
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert results['batches'] == 'stream' and results['steps'] == 4
  # 'yes' is refused before anything trains, in one line.
  with pytest.raises(AssertionError) as e:
    _run_two(cmd + ['--config.data_on_device=yes',
                    f'--workdir={tmp_path / "yes"}'], env, tmp_path)
  assert 'error: config.data_on_device=yes needs one process' in str(e.value)
  assert not os.path.exists(tmp_path / 'yes' / 'checkpoints')
  # A study (or any task but pggan and resnet training) runs in one
  # process: refused in one line, pointing at shards.
  with pytest.raises(AssertionError) as e:
    _run_two([sys.executable, 'main.py', '--config=configs/study.py:tiny',
              f'--workdir={tmp_path / "study"}', '--distributed',
              '--num_processes=2'], env, tmp_path)
  assert ('error: config.task=study runs in one process, not over 2 '
          'processes') in str(e.value)
  assert '--config.shard=i/N' in str(e.value)
  assert not os.path.exists(tmp_path / 'study')
