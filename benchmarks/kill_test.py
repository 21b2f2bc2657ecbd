r"""Kill test: SIGKILL training at random moments, resume, compare.

  python benchmarks/kill_test.py 20              # PGGAN :tiny, 20 kills
  python benchmarks/kill_test.py 5 --study 3     # and a shrunk study, 3 kills

PGGAN: an uninterrupted `configs/pggan.py:tiny` run (checkpoints every 0.1
kimg, so that saves are frequent) is the reference. Then the same command
in another workdir is started and killed with SIGKILL N times, each time at
a moment drawn from a seeded generator, in turn: during start-up (0-8 s:
imports, data, restore, compilation), during training (0-1.5 s after the
loop's first log line or after k = 1..3 new checkpoints), and while the
k-th new checkpoint is being written (its orbax temporary directory has
appeared, k = 1..4). Kills thus spread over the whole schedule, fade-ins
and stage changes included. After every kill the latest checkpoint,
the one a rerun restores, must restore completely (orbax writes each to a
`<step>.orbax-checkpoint-tmp*` directory and renames it when complete, so
a kill mid-save leaves only that temporary directory). Finally the run is
resumed to the end, and its last checkpoint (G, D, G_ema, both Adam states,
the RNG, step, lod) must equal the reference's bitwise: on the CPU a
resumed run computes exactly what an uninterrupted one does.

Study (--study K): `configs/study.py:tiny` shrunk (fold 0, arms none and
gan, GANs to 8x8 on 0.5 kimg, no quality step: 5 steps) run once
uninterrupted, then killed K times and resumed, each time at a moment
drawn from a seeded generator: 0-2 s after start (start-up; 30% of kills,
and always when one step is left), or 0-20% of a step's reference time
into a step that is not the last, after 0 or more steps have finished.
Kills thus land in start-up, GAN training, sampling and the classifiers,
and never after the run's end (warm steps take 0.1-3.4 s here).
Every step marker (done/*.json) that existed before a kill must be
unchanged at the end (a finished step is never recomputed), and
results.csv must equal the reference's, every column.

Prints one line per kill and a summary; exits 1 if a check fails.
Subprocesses run at the caller's priority (use `nice`).
"""

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = ('g', 'd', 'g_ema', 'opt')
TMP = '.orbax-checkpoint-tmp'
# pggan_jax/train.py logs this line just before it restores and trains.
TRAINING_STARTS = 'PGGAN data'


def gan_command(workdir: str, shared: str, total_kimg: float,
                resolution: int = 16) -> list[str]:
  """`configs/pggan.py:tiny` with frequent checkpoints; the compilation
  cache and the prepared data in `shared`."""
  return [sys.executable, 'main.py', '--config=configs/pggan.py:tiny',
          f'--workdir={workdir}',
          f'--config.jax_cache_dir={shared}/jax_cache',
          '--config.jax_cache_min_compile_secs=0',
          f'--config.data.tfds_dir={shared}/tfds',
          f'--config.model.resolution={resolution}',
          f'--config.total_kimg={total_kimg}',
          '--config.checkpoint_kimg=0.1', '--config.keep_checkpoints=2']


def study_command(workdir: str, shared: str) -> list[str]:
  """`configs/study.py:tiny` shrunk to one fold, two arms, 8x8 GANs."""
  return [sys.executable, 'main.py', '--config=configs/study.py:tiny',
          f'--workdir={workdir}',
          f'--config.jax_cache_dir={shared}/jax_cache',
          '--config.jax_cache_min_compile_secs=0',
          f'--config.data.tfds_dir={shared}/tfds',
          '--config.folds=(0,)', "--config.arms=('none','gan')",
          '--config.gan.model.resolution=8', '--config.gan.total_kimg=0.5',
          '--config.gan.checkpoint_kimg=0.1',
          '--config.quality.enabled=False']


def _start(cmd: list[str], log: str) -> subprocess.Popen:
  with open(log, 'ab') as f:
    # Its own process group: the kill reaches every thread and child.
    return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(cmd: list[str], log: str) -> float:
  """Runs cmd to the end; its wall time. Raises with the log's tail."""
  t0 = time.time()
  proc = _start(cmd, log)
  if proc.wait() != 0:
    raise RuntimeError(f'{" ".join(cmd)} exited {proc.returncode}:\n'
                       + _tail(log))
  return time.time() - t0


def _tail(log: str, n: int = 3000) -> str:
  with open(log, 'rb') as f:
    return f.read()[-n:].decode(errors='replace')


def _kill(proc: subprocess.Popen) -> bool:
  """SIGKILL to proc's group; False if it had already exited by itself."""
  if proc.poll() is not None:
    return False
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  return proc.returncode == -signal.SIGKILL


def _wait_until(cond, proc, timeout: float, poll: float = 0.002) -> bool:
  end = time.time() + timeout
  while time.time() < end:
    if cond():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  return False


def _tmp_dirs(ckpt: str) -> set[str]:
  return ({n for n in os.listdir(ckpt) if TMP in n} if os.path.isdir(ckpt)
          else set())


def _steps(ckpt: str) -> set[str]:
  """Finished checkpoints (orbax renames a step's directory when done)."""
  return ({n for n in os.listdir(ckpt) if n.isdigit()}
          if os.path.isdir(ckpt) else set())


def restore_latest(workdir: str) -> tuple[int | None, dict]:
  """(step, items) of the checkpoint a rerun would restore, all of it."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return None, {}
  mgr = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(create=False),
      item_names=('g', 'd', 'g_ema', 'opt', 'meta', 'data'))
  step = mgr.latest_step()
  if step is None:
    mgr.close()
    return None, {}
  out = mgr.restore(step, args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore() for k in ITEMS},
      meta=ocp.args.JsonRestore()))
  mgr.close()
  return step, dict(out)


def compare_checkpoints(a: dict, b: dict) -> float:
  """Largest absolute difference over every array of ITEMS (0.0: bitwise
  equal, NaNs included); inf if the trees differ in shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  worst = 0.0
  for k in ITEMS:
    la, lb = jax.tree.leaves(a[k]), jax.tree.leaves(b[k])
    if len(la) != len(lb) or not la:
      return float('inf')
    for x, y in zip(la, lb):
      x, y = np.asarray(x), np.asarray(y)
      if x.shape != y.shape or x.dtype != y.dtype:
        return float('inf')
      if x.tobytes() != y.tobytes():
        worst = max(worst, float(np.max(np.abs(
            x.astype(np.float64) - y.astype(np.float64)))))
  return worst


def gan_kill_test(n: int, base: str, seed: int = 0,
                  total_kimg: float | None = None, resolution: int = 16,
                  shared: str = '', verbose: bool = True) -> dict:
  """Runs the PGGAN kill test in `base`; a summary dict (see module).

  `shared`: where the compilation cache and prepared data live (default
  `base`)."""
  shared = shared or base
  t_all = time.time()
  # Each run gains a little; long enough that N kills land before the end.
  total_kimg = total_kimg or round(1.5 + 0.15 * n, 2)
  os.makedirs(base, exist_ok=True)
  ref, run = os.path.join(base, 'reference'), os.path.join(base, 'killed')
  ref_seconds = _finish(gan_command(ref, shared, total_kimg, resolution),
                        os.path.join(base, 'reference.log'))
  cmd = gan_command(run, shared, total_kimg, resolution)
  ckpt = os.path.join(run, 'checkpoints')
  log = os.path.join(base, 'killed.log')
  rng = random.Random(seed)
  kills, problems, starts = [], [], 0
  modes = ('startup', 'training', 'saving')
  while len(kills) < n:
    mode = modes[len(kills) % 3]
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    stale = _tmp_dirs(ckpt)  # left by an earlier kill; removed on start
    t0 = time.time()
    proc = _start(cmd, log)
    starts += 1
    if mode == 'startup':
      delay = rng.uniform(0.0, 8.0)
      _wait_until(lambda: time.time() - t0 >= delay, proc, delay + 1, 0.01)
      what = f'{delay:.2f} s after start'
    elif mode == 'training':
      k, delay = rng.randint(0, 3), rng.uniform(0.0, 1.5)
      kept = _steps(ckpt)
      if k:
        _wait_until(lambda: len(_steps(ckpt) - kept) >= k, proc, 120, 0.005)
      else:
        def started():
          with open(log, 'rb') as f:
            f.seek(offset)
            return TRAINING_STARTS.encode() in f.read()
        _wait_until(started, proc, 120, 0.01)
      t1 = time.time()
      _wait_until(lambda: time.time() - t1 >= delay, proc, delay + 1, 0.005)
      what = (f'{delay:.2f} s after {k} new checkpoint(s)' if k else
              f'{delay:.2f} s after "{TRAINING_STARTS}"')
    else:
      k = rng.randint(1, 4)
      seen = _tmp_dirs(ckpt)
      new = []
      def saving():
        fresh = _tmp_dirs(ckpt) - seen
        for name in fresh - set(new):
          new.append(name)
        return len(new) >= k
      _wait_until(saving, proc, 120)
      what = f'while writing new checkpoint #{k} ({", ".join(new[-1:])})'
    alive = time.time() - t0
    if not _kill(proc):
      if proc.returncode == 0:
        if verbose:
          print(f'run {starts}: finished before the kill ({mode}); '
                f'{len(kills)} kills landed', flush=True)
        break
      raise RuntimeError(f'run {starts} exited {proc.returncode}:\n'
                         + _tail(log))
    left = sorted(_tmp_dirs(ckpt) - stale)
    try:
      step, items = restore_latest(run)
      ok = step is None or items['meta']['nimg'] == step
    except Exception as e:  # pylint: disable=broad-except
      step, ok = f'unreadable ({type(e).__name__}: {e})', False
    if not ok:
      problems.append(f'kill {len(kills) + 1}: latest checkpoint {step} does '
                      'not restore')
    kills.append({'mode': mode, 'when': what, 'alive_s': round(alive, 2),
                  'latest_step': step, 'unfinished_saves': left})
    if verbose:
      print(f'kill {len(kills):2d}/{n} [{mode:8s}] {what}, alive '
            f'{alive:5.2f} s; latest checkpoint {step} restores: '
            f'{"yes" if ok else "NO"}; killed mid-save: '
            f'{", ".join(left) or "no"}', flush=True)
  final_seconds = _finish(cmd, log)
  step_a, a = restore_latest(ref)
  step_b, b = restore_latest(run)
  diff = compare_checkpoints(a, b)
  same_meta = all(a['meta'][k] == b['meta'][k]
                  for k in ('nimg', 'step', 'lod'))
  if step_a != step_b or not same_meta or diff != 0.0:
    problems.append(f'final checkpoint differs: steps {step_a} / {step_b}, '
                    f'meta equal {same_meta}, max |diff| {diff}')
  with open(log, 'rb') as f:
    text = f.read().decode(errors='replace')
  for bad in ('Segmentation fault', 'Traceback'):
    if bad in text:
      problems.append(f'{bad!r} in {log}')
  return {'kills': kills, 'starts': starts + 1, 'total_kimg': total_kimg,
          'final_step': step_b, 'max_abs_diff': diff,
          'kills_during_save': sum(bool(k['unfinished_saves'])
                                   for k in kills),
          'reference_s': round(ref_seconds, 1),
          'final_run_s': round(final_seconds, 1),
          'wall_s': round(time.time() - t_all, 1), 'problems': problems}


def _markers(workdir: str) -> dict[str, bytes]:
  out = {}
  for root, _, names in os.walk(workdir):
    if os.path.basename(root) == 'done':
      for name in names:
        if name.endswith('.json'):
          with open(os.path.join(root, name), 'rb') as f:
            out[os.path.join(root, name)] = f.read()
  return out


def _study_step(log: str, offset: int) -> str:
  """The step the study last logged as running since `offset`."""
  with open(log, 'rb') as f:
    f.seek(offset)
    text = f.read().decode(errors='replace')
  found = re.findall(r'running (repeat \d+ fold \d+ [^\r\n]*)', text)
  return found[-1].strip() if found else 'start-up'


def _csv(path: str) -> list[list[str]]:
  with open(path, newline='') as f:
    return list(csv.reader(f))


def study_kill_test(n: int, base: str, seed: int = 0, shared: str = '',
                    verbose: bool = True) -> dict:
  """Kills a shrunk study n times at random moments; see the module."""
  shared = shared or base
  t_all = time.time()
  os.makedirs(base, exist_ok=True)
  ref, run = os.path.join(base, 'study_ref'), os.path.join(base, 'study')
  ref_seconds = _finish(study_command(ref, shared),
                        os.path.join(base, 'study_ref.log'))
  ref_markers = _markers(ref)
  total = len(ref_markers)
  # The reference's steps in the order they ran, and how long each took.
  ref_step_s = [json.loads(ref_markers[p])['seconds']
                for p in sorted(ref_markers, key=os.path.getmtime)]
  cmd = study_command(run, shared)
  log = os.path.join(base, 'study.log')
  rng = random.Random(seed + 1)
  kills, problems, kept = [], [], {}
  starts = 0
  while len(kills) < n:
    done_before = _markers(run)
    kept.update(done_before)
    left = total - len(done_before)
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    t0 = time.time()
    proc = _start(cmd, log)
    starts += 1
    startup = left < 2 or rng.random() < 0.3
    if startup:
      # Start-up (imports, data, restores) lasts more than 2 s.
      j, delay, t1 = 0, rng.uniform(0.0, 2.0), t0
    else:
      # Into a step that is not the last, after j more have finished, a
      # random 0-20% of its reference time (the reference compiled, so
      # its steps took longer): a step follows, so the kill lands.
      j = rng.randint(0, left - 2)
      delay = rng.uniform(0.0, 0.2 * ref_step_s[total - left + j])
      _wait_until(lambda: len(_markers(run)) >= len(done_before) + j and
                  _study_step(log, offset) != 'start-up', proc, 300, 0.01)
      t1 = time.time()
    _wait_until(lambda: time.time() - t1 >= delay, proc, delay + 1, 0.01)
    alive = time.time() - t0
    if not _kill(proc):
      if proc.returncode == 0:
        if verbose:
          print(f'study run {starts}: finished before the kill; '
                f'{len(kills)} kills landed', flush=True)
        break
      raise RuntimeError(f'study run {starts} exited {proc.returncode}:\n'
                         + _tail(log))
    now = _markers(run)
    changed = [p for p, v in done_before.items() if now.get(p) != v]
    if changed:
      problems.append(f'kill {len(kills) + 1}: finished steps recomputed: '
                      f'{changed}')
    what = (f'{delay:.2f} s after start' if startup else
            f'{delay:.2f} s into a step, {j} more step(s) finished')
    during = _study_step(log, offset)
    kills.append({'when': what, 'alive_s': round(alive, 2),
                  'during': during, 'markers': f'{len(now)}/{total}'})
    if verbose:
      print(f'study kill {len(kills)}/{n} {what}, alive {alive:5.2f} s, '
            f'during {during}: {len(now)}/{total} steps finished',
            flush=True)
  final_seconds = _finish(cmd, log)
  now = _markers(run)
  changed = sorted(p for p, v in kept.items() if now.get(p) != v)
  if changed:
    problems.append(f'finished steps recomputed: {changed}')
  a = _csv(os.path.join(ref, 'results.csv'))
  b = _csv(os.path.join(run, 'results.csv'))
  if a != b:
    diffs = [(h, x, y) for ra, rb in zip(a[1:], b[1:])
             for h, x, y in zip(a[0], ra, rb) if x != y]
    problems.append(f'results.csv differs: {diffs[:5]} '
                    f'(rows {len(a)} / {len(b)})')
  return {'kills': kills, 'starts': starts + 1, 'steps': total,
          'reference_s': round(ref_seconds, 1),
          'final_run_s': round(final_seconds, 1),
          'wall_s': round(time.time() - t_all, 1), 'problems': problems}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('n', type=int, help='SIGKILLs of the PGGAN run')
  p.add_argument('--study', type=int, default=0,
                 help='SIGKILLs of the shrunk study (0 = skip it)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--total_kimg', type=float, default=None,
                 help='PGGAN length (default 1.5 + 0.15 N)')
  p.add_argument('--dir', default='', help='work here (default: a temp dir)')
  args = p.parse_args(argv)
  base = args.dir or tempfile.mkdtemp(prefix='kill_test_')
  print(f'kill test in {base}', flush=True)
  results = {}
  if args.n:
    results['pggan'] = gan_kill_test(args.n, os.path.join(base, 'pggan'),
                                     args.seed, args.total_kimg, shared=base)
  if args.study:
    results['study'] = study_kill_test(
        args.study, os.path.join(base, 'study'), args.seed, shared=base)
  failed = False
  for name, r in results.items():
    summary = {k: v for k, v in r.items() if k != 'kills'}
    print(f'{name}: {json.dumps(summary)}', flush=True)
    failed |= bool(r['problems'])
  print('FAILED' if failed else 'OK: every latest checkpoint restored, '
        'results equal the uninterrupted runs')
  if not failed and not args.dir:   # kept for a look when something failed
    shutil.rmtree(base, ignore_errors=True)
  return int(failed)


if __name__ == '__main__':
  sys.exit(main())
