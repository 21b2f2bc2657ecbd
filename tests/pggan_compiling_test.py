"""Tests for pggan_jax.compiling: how many stages compile ahead."""

import os

import pytest

from configs import pggan
from input_pipeline.errors import UserInputError
from pggan_jax import compiling


def test_compile_ahead_auto_is_off_on_gpu_and_threads_elsewhere(caplog):
  cfg = pggan.get_config('tiny')
  cores = len(os.sched_getaffinity(0))
  for backend in ('cpu', 'tpu'):
    assert compiling.compile_workers(cfg, 9, backend) == min(
        9, max(1, cores // 2))
    assert compiling.compile_workers(cfg, 1, backend) == 1
  # On a GPU, compiling beside training stalls it (XLA's autotuning lock).
  assert compiling.compile_workers(cfg, 9, 'gpu') == 0
  cfg.compile_ahead = 3
  assert compiling.compile_workers(cfg, 9, 'cpu') == 3
  assert 'stall' not in caplog.text
  assert compiling.compile_workers(cfg, 9, 'gpu') == 3
  assert 'compile_ahead=3 on a GPU' in caplog.text
  cfg.compile_ahead = -2
  with pytest.raises(UserInputError, match='config.compile_ahead=-2'):
    compiling.compile_workers(cfg, 9, 'cpu')
