"""Compiled PGGAN programs per stage, optionally compiled ahead (train.py).

`Compiler` holds `steps.train_iterations` and `steps.generate` compiled per
(stage, batch size); `compile_workers` decides how many stages compile in
background threads (config.compile_ahead).
"""

import concurrent.futures
import logging
import os
import time

from input_pipeline.errors import UserInputError
from pggan_jax import steps


class Compiler:
  """Compiled `train_iterations` and `generate` per (stage, batch size).

  With `workers` > 0, `prefetch` compiles in that many background threads
  (XLA compiles without the GIL), so the stages ahead compile beside each
  other and beside training instead of one after another.
  """

  def __init__(self, static: dict, gen_static: dict, workers: int):
    self.static, self.gen_static = static, gen_static
    self.pool = (concurrent.futures.ThreadPoolExecutor(workers)
                 if workers > 0 else None)
    self.cache = {}
    # Seconds `get` has waited for compilations (inline or ahead): the
    # part of the run's wall time that compiling took from training.
    self.waited_s = 0.0

  def _compile(self, key, state_spec, data_spec, plan, gen_args):
    stage, batch = key
    t0 = time.perf_counter()
    train = steps.train_iterations.lower(
        state_spec, data_spec, plan, stage=stage, batch_size=batch,
        **self.static).compile()
    t1 = time.perf_counter()
    gen = steps.generate.lower(state_spec['g_ema'], *gen_args, stage=stage,
                               **self.gen_static).compile()
    logging.info('Compiled stage %d (batch %d): training %.1f s, sampling '
                 '%.1f s', stage, batch, t1 - t0, time.perf_counter() - t1)
    return train, gen

  def get(self, key, args_fn):
    """(train, generate) for key = (stage, batch); compiles if needed, with
    the arguments args_fn() (built only then: get runs every dispatch)."""
    t0 = time.perf_counter()
    if key not in self.cache:
      self.cache[key] = self._compile(key, *args_fn())
    hit = self.cache[key]
    if isinstance(hit, concurrent.futures.Future):
      hit = hit.result()
    self.waited_s += time.perf_counter() - t0
    return hit

  def prefetch(self, key, args_fn) -> None:
    if self.pool is not None and key not in self.cache:
      self.cache[key] = self.pool.submit(self._compile, key, *args_fn())

  def close(self):
    if self.pool is not None:
      self.pool.shutdown(wait=True, cancel_futures=True)


def compile_workers(cfg, num_stages: int, backend: str) -> int:
  """Background compile threads: config.compile_ahead, 0 = off, -1 = auto.

  Auto is half the CPU cores this process may use (at most one per
  stage), except on a GPU, where it is 0: XLA autotunes kernels while it
  compiles, holding the device's lock exclusively, and every running
  program waits for it. Measured on an H100 (configs/study.py:gpu): with
  the stages compiling in 8 threads the GAN finished one dispatch (1
  kimg) in 5.5 minutes. (TPUs keep the threads: not measured there.)
  """
  n = cfg.compile_ahead
  if not isinstance(n, int) or n < -1:
    raise UserInputError(f'config.compile_ahead={n!r} must be -1 (auto), 0 '
                         '(off) or a number of compile threads')
  if n == -1:
    n = (0 if backend == 'gpu' else
         min(num_stages, max(1, len(os.sched_getaffinity(0)) // 2)))
  elif n > 0 and backend == 'gpu':
    logging.warning(
        'config.compile_ahead=%d on a GPU: XLA autotunes while compiling '
        'and running programs wait for it, so training may stall until '
        'every stage is compiled (measured on an H100); auto (-1) is 0 '
        'there.', n)
  return n
