"""Every benchmark script starts as the README and device_check.sh run it.

`python benchmarks/X.py` puts benchmarks/ first on sys.path, so a script
there named like a package of the project (input_pipeline.py did) hides
that package from every benchmark that imports it.
"""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPTS = sorted(glob.glob(os.path.join(_ROOT, 'benchmarks', '*.py')))
# The repository's packages and main.py, as `import` sees them.
_PACKAGES = {d for d in os.listdir(_ROOT)
             if os.path.isfile(os.path.join(_ROOT, d, '__init__.py'))} | {
                 'main'}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  """`python SCRIPT ARGS` from the repository root, as a user runs it:
  on the CPU, with no PYTHONPATH of this process."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  return subprocess.run([sys.executable, script, *args], cwd=_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_no_benchmark_is_named_like_a_package():
  names = {os.path.splitext(os.path.basename(s))[0] for s in _SCRIPTS}
  assert len(names) > 5
  assert {'input_pipeline', 'pggan_jax', 'resnet_jax'} <= _PACKAGES
  assert not names & _PACKAGES


@pytest.mark.parametrize('script', _SCRIPTS, ids=os.path.basename)
def test_benchmark_starts(script):
  with open(script) as f:
    needs_torch = 'import torch' in f.read()
  if needs_torch and importlib.util.find_spec('torch') is None:
    pytest.skip('PyTorch is not installed: the PyTorch twins need it (not a '
                'dependency of the project)')
  r = _run(script, '--help')
  out = r.stdout + r.stderr
  # argparse exits 0 after --help, absl 1; an import error exits 1 too.
  assert r.returncode in (0, 1), out
  assert 'Traceback' not in out, out
  if "__name__ == '__main__'" in open(script).read():
    assert '--help' in out, out   # the flag listing, argparse's or absl's
  else:                           # a module the scripts import
    assert r.returncode == 0, out


def test_device_check_parses():
  r = subprocess.run(['bash', '-n', os.path.join(_ROOT, 'benchmarks',
                                                 'device_check.sh')],
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


def test_pggan_loop_counts_a_batch_larger_than_its_images():
  # Its FLOP count took the first B of N images: B > N with the penalty on
  # every 4th pair left the critic 50 points, not groups of 4 (an H200 run).
  r = _run('benchmarks/pggan_loop.py', '--flops_only', '--res=8',
           '--fmap_base=32', '--fmap_max=8', '--batch=32', '--num_images=10',
           '--gp_batch_shrink=4', '--dtypes=float32')
  out = r.stdout + r.stderr
  assert r.returncode == 0, out
  assert 'GFLOP per image shown to D' in out, out


def test_pggan_loop_compile_only_counts_fusions():
  # The figure behind the README's ADA-draw comparison: ADA's draws are
  # part of the program, so its fusions rise with --ada.
  def fusions(*extra):
    r = _run('benchmarks/pggan_loop.py', '--compile_only', '--res=8',
             '--fmap_base=32', '--fmap_max=8', '--batch=8', '--k=2',
             '--dtypes=float32', *extra)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    lines = [l for l in r.stdout.splitlines() if 'compile s' in l]
    assert len(lines) == 1 and 'img/s' not in r.stdout, out
    return int(lines[0].rsplit('fusions', 1)[1])

  plain, ada = fusions(), fusions('--ada')
  assert 0 < plain < ada


def test_profile_summary_counts_overlapping_kernels_once():
  sys.path.insert(0, os.path.join(_ROOT, 'benchmarks'))
  try:
    import profile_summary  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  # Two streams; kernel_a on both (0-2 ms and 1-3 ms), kernel_b 3-4 ms,
  # then 6 ms idle before kernel_b again at 10-11 ms. Picoseconds in the
  # proto.
  ms = 10**9
  def ev(meta, start, dur, op=''):
    stat = f' stats {{ metadata_id: 7 str_value: "{op}" }}' if op else ''
    return (f'events {{ metadata_id: {meta} offset_ps: {start * ms} '
            f'duration_ps: {dur * ms}{stat} }}')
  space = f'''
  planes {{ id: 1 name: "/device:GPU:0"
    lines {{ id: 1 name: "Stream #1" timestamp_ns: 0
      {ev(1, 0, 2, 'fusion.3')} {ev(2, 3, 1)} {ev(2, 10, 1)} }}
    lines {{ id: 2 name: "Stream #2" timestamp_ns: 0
      {ev(1, 1, 2, 'fusion.9')} }}
    event_metadata {{ key: 1 value {{ id: 1 name: "kernel_a" }} }}
    event_metadata {{ key: 2 value {{ id: 2 name: "kernel_b" }} }}
    stat_metadata {{ key: 7 value {{ id: 7 name: "hlo_op" }} }} }}
  planes {{ id: 2 name: "/host:CPU" }}'''
  planes = profile_summary.summarize(ProfileData.from_text_proto(space))
  assert [p['plane'] for p in planes] == ['/device:GPU:0']
  (p,) = planes
  assert p['busy_ns'] == 5e6 and p['span_ns'] == 11e6
  assert p['kernels'] == [('kernel_a', 'fusion.3 +1 more', 4e6, 2),
                          ('kernel_b', '', 2e6, 2)]
  text = profile_summary.format_summary(planes, steps=2)
  assert 'busy 5.00 ms of a 11.00 ms span (54.5 % idle)' in text, text
  assert 'per step: busy 2.50 ms, 2 launches' in text, text
  assert '4.000   80.0        2  kernel_a [fusion.3 +1 more]' in text, text


def test_resnet_step_sweeps_every_combination(tmp_path):
  # device_check.sh's resnet sections read one line per combination, each
  # with the step waited for, back to back and (--jit_call) through jit;
  # they repeat flags (--batch_size, --steps), the last one counts.
  r = _run('benchmarks/resnet_step.py', '--model=resnet18', '--num_filters=4',
           '--resolution=16', '--batch_size=3', '--batch_size=2',
           '--dtype=float32,bfloat16', '--max_pool=window,slices',
           '--stem_pad_channels=4', '--steps=1', '--warmup=0',
           '--jit_call', f'--profile_dir={tmp_path}')
  out = r.stdout + r.stderr
  assert r.returncode == 0, out
  lines = [l for l in r.stdout.splitlines() if l.startswith('16x16 b2 ')]
  assert len(lines) == 4, out
  for dtype in ('float32', 'bfloat16'):
    for pool in ('window', 'slices'):
      (line,) = [l for l in lines if f'{dtype} max_pool={pool} ' in l]
      assert 'back to back' in line and 'through jax.jit' in line, line
      assert line.count(' ms a call') == 2, line
  # A trace per combination, named so that a device run brings it back.
  names = sorted(os.listdir(tmp_path))
  assert names == ['16x16_b2_bfloat16_pool-slices_stem4',
                   '16x16_b2_bfloat16_pool-window_stem4',
                   '16x16_b2_float32_pool-slices_stem4',
                   '16x16_b2_float32_pool-window_stem4'], names
  assert r.stdout.count('no device kernels in the trace (CPU)') == 4, out


def _device_check_quick(tmp_path, **env):
  """QUICK=1 device_check.sh on the CPU with the suite's Python."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', QUICK='1',
             OUT=str(tmp_path / 'out'), PYTHON=sys.executable, **env)
  env.pop('PYTHONPATH', None)
  return subprocess.run(['bash', os.path.join(_ROOT, 'benchmarks',
                                              'device_check.sh')],
                        cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)


def test_device_check_quick_runs_the_default_sections(tmp_path):
  # QUICK=1 is the CPU dry run of the GPU check: every default section's
  # commands, with tiny shapes. A flag a benchmark no longer takes would
  # otherwise surface only on a GPU, in its scarce minutes.
  r = _device_check_quick(tmp_path)
  out = r.stdout + r.stderr
  assert r.returncode == 0, out
  rcs = dict(re.findall(r'^== (\S+): rc=(\d+),', r.stdout, re.M))
  assert {'main', 'pggan_jax_float32', 'resnet_jax'} <= set(rcs), out
  assert set(rcs.values()) == {'0'}, rcs
  assert 'device_check done in' in out, out
  assert os.path.isfile(tmp_path / 'out' / 'main_metrics.jsonl'), out
  with open(tmp_path / 'out' / 'device_check.log') as f:
    assert f.read().count('img/s') >= 2


def test_device_check_quick_train_loop(tmp_path):
  # train_loop reads its figure from each run's results.json: a run that
  # gives none (one dispatch only) or a key renamed fails here, not on a
  # GPU.
  r = _device_check_quick(tmp_path, SECTIONS='train_loop')
  out = r.stdout + r.stderr
  rcs = dict(re.findall(r'^== (\S+): rc=(\d+),', r.stdout, re.M))
  assert rcs == {'train_loop[data_on_device=yes]': '0',
                 'train_loop[data_on_device=no]': '0'}, out
  for mode, how in (('yes', 'device'), ('no', 'stream')):
    m = re.search(rf'^train_loop\[data_on_device={mode}\]: 8 steps of 4, '
                  rf'batches {how}: ([0-9.]+) img/s after the first '
                  'dispatch', r.stdout, re.M)
    assert m and float(m.group(1)) > 0, out
