"""What a study arm pays before its first training step, per setting.

  python benchmarks/arm_retrace.py --model=resnet50 --num_filters=64 \
      --dtype=bfloat16 --resolution=64 --batch_size=64

First-call times (s) of the classifier's train_step (resnet_jax.steps.bind),
each with a fresh model as a run makes it, with the persistent compilation
cache on (as in a study): cold; the same settings again (create_optimizer
returns the cached optimiser, so the traced step is reused); the same
settings with a new optimiser object (what every arm paid before the
optimiser was cached: a new trace, lowering and a cache load); another step
count (the schedule is an argument of the step, so nothing is compiled
again: an arm of another length, a fold of another size).

Measured on the shared 2-core CPU (2026-11-27, with the schedule an
argument): configs/study.py:gpu's ResNet-50 (64x64, bf16, batch 64): cold
13.7, same settings 4.2 (= one step), new object 7.4, other step count
3.9; the CPU default's ResNet-18 width 16 (64x64, batch 32): 3.3, 0.07,
1.0, 0.07. Before, with the schedule's length compiled into the step,
another step count cost a compilation: 10.7 and 2.7 s.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp

from configs import resnet as resnet_config
from input_pipeline import sharding
from resnet_jax import steps

flags.DEFINE_string('model', 'resnet50', 'Model name.')
flags.DEFINE_integer('num_filters', 64, 'Stem width.')
flags.DEFINE_string('dtype', 'bfloat16', 'Compute dtype.')
flags.DEFINE_integer('resolution', 64, 'Image side.')
flags.DEFINE_integer('batch_size', 64, 'Batch size.')
flags.DEFINE_integer('steps', 127, 'Schedule length (the study arm\'s).')
FLAGS = flags.FLAGS


def main(_):
  sharding.setup_compilation_cache(tempfile.mkdtemp(), 0)
  config = resnet_config.get_config()
  config.model, config.num_filters = FLAGS.model, FLAGS.num_filters
  config.dtype = FLAGS.dtype
  r, b = FLAGS.resolution, FLAGS.batch_size
  batch = {'image': jnp.zeros((b, r, r, 1)),
           'label': jnp.zeros((b,), jnp.int32)}

  def first_call(tx, n):
    graphdef, _, state = steps.init_state(steps.create_model(config, 1), tx)
    t = time.perf_counter()
    _, m = steps.bind(graphdef, tx, 0.1).train_step(
        state, batch, steps.schedule(config, n))
    jax.block_until_ready(m)
    return time.perf_counter() - t

  n = FLAGS.steps
  uncached = steps._optimizer.__wrapped__  # pylint: disable=protected-access
  rows = [
      ('cold', steps.create_optimizer(config), n),
      ('same settings', steps.create_optimizer(config), n),
      ('same settings, new optimiser object',
       uncached(config.optimizer, config.momentum, config.weight_decay), n),
      ('other step count', steps.create_optimizer(config), n + 1)]
  print(f'{FLAGS.model} width {FLAGS.num_filters} {FLAGS.dtype} {r}x{r} '
        f'batch {b} on {jax.devices()[0].platform}: first call, s')
  for name, tx, k in rows:
    print(f'  {name:40s} {first_call(tx, k):7.2f}')

if __name__ == '__main__':
  app.run(main)
