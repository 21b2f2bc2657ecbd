"""Kill test at N = 5 (benchmarks/kill_test.py, where the method is).

A `configs/pggan.py:tiny` run (8x8, checkpoints every 0.1 kimg) is killed
with SIGKILL five times (start-up, training, mid-save) and resumed each
time: every latest checkpoint restores and the final one equals an
uninterrupted run's bitwise. A shrunk `configs/study.py:tiny` is killed
three times: no finished step is recomputed and results.csv is identical.
About 3 minutes of subprocesses on a 2-core CPU.
"""

import pytest

from benchmarks import kill_test as harness


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """Compilation cache and prepared data shared by every run."""
  return str(tmp_path_factory.mktemp('shared'))


def _report(name, r):
  for i, k in enumerate(r['kills'], 1):
    print(f'{name} kill {i}: {k}')
  print(f'{name}: {({k: v for k, v in r.items() if k != "kills"})}')


def test_pggan_killed_five_times_ends_bitwise_equal(shared, tmp_path):
  r = harness.gan_kill_test(5, str(tmp_path), seed=0, resolution=8,
                            shared=shared, verbose=False)
  _report('pggan', r)
  assert r['problems'] == []
  assert len(r['kills']) == 5 and r['max_abs_diff'] == 0.0
  assert r['final_step'] >= r['total_kimg'] * 1000
  # At least one kill landed mid-save (its temporary directory was left).
  assert r['kills_during_save'] >= 1


def test_study_killed_resumes_finished_steps_and_same_results(shared,
                                                              tmp_path):
  r = harness.study_kill_test(3, str(tmp_path), seed=0, shared=shared,
                              verbose=False)
  _report('study', r)
  assert r['problems'] == []
  assert len(r['kills']) >= 2
