"""How fast a classifier arm trains, by how its batches reach the device.

  python benchmarks/classifier_feed.py [--name=head_ct --dir=DIR] \
      [--model=resnet50 --num_filters=64 --dtype=bfloat16] [--arm=classic]

Times `steps` training steps after a warm-up dispatch, for each feed of
resnet_jax/train.py (`train.Feed`): batches streamed by grain
(data_on_device=no) and drawn on the device one step per dispatch and
`--length` steps per dispatch; and, as the ceiling, `train_step` on one
fixed batch already on the device (compute alone). Prints img/s and ms per
step. Defaults: configs/study.py:gpu's classifier (ResNet-50, 64x64, bf16,
batch 64) on the embedded phantoms.

Measured on the shared 2-core CPU (2026-11-27; --name=head_ct, fold 0,
arm classic, --steps=128), img/s streamed by grain / drawn on the device /
drawn, 16 steps per dispatch / compute alone:
  --model=resnet18 --num_filters=16 --dtype=float32 --batch_size=32 (the
      CPU default's classifier): 404 / 459 / 117 / 501
  --model=_resnet1 --num_filters=4 --dtype=float32 (almost no compute, so
      what feeding costs): 2,508 / 4,455 / 2,473 / 5,422
(16 steps per dispatch is slow on the CPU, where XLA runs convolutions
inside a loop body slowly; the CPU's auto is 1.) On one H200 (2026-11-27,
--name=head_ct --steps=128, the defaults' ResNet-50): 1,821 / 4,430 /
10,127 / 2,652 img/s; there the last row waits for a dispatch every step,
so it is no ceiling.

It trains as main.py does, so it takes main.py's XLA flags
(input_pipeline.cli.XLA_DEFAULTS, unless XLA_FLAGS sets them): with XLA's
defaults, XLA of jax 0.11.2 aborted compiling this ResNet-50 step on an
H200 (triton_tiling_propagation.cc, as cli.py says of the quality
metrics; device_check.sh SECTIONS=feed, 2026-11-27).
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from input_pipeline import cli

# Before JAX starts a backend: XLA reads XLA_FLAGS then (as main.py).
os.environ['XLA_FLAGS'] = cli.xla_flags_with_defaults(
    os.environ.get('XLA_FLAGS', ''))

import jax
import jax.numpy as jnp
import numpy as np

from configs import resnet as resnet_config
from input_pipeline import dataset
from input_pipeline import sharding
from resnet_jax import train
from resnet_jax import steps
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('name', 'synthetic_head_ct', 'config.data.name')
flags.DEFINE_string('dir', '', 'config.data.dir')
flags.DEFINE_string('model', 'resnet50', 'Model name.')
flags.DEFINE_integer('num_filters', 64, 'Stem width.')
flags.DEFINE_string('dtype', 'bfloat16', 'Compute dtype.')
flags.DEFINE_integer('resolution', 64, 'Image side (and storage size).')
flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
flags.DEFINE_string('arm', 'classic', "'none' or 'classic' (no GAN here).")
flags.DEFINE_integer('length', 16, 'Steps per dispatch of the last feed.')
flags.DEFINE_integer('steps', 64, 'Timed steps per feed.')
FLAGS = flags.FLAGS


def main(_):
  config = resnet_config.get_config()
  config.data.name, config.data.dir = FLAGS.name, FLAGS.dir
  config.data.storage_size = config.data.resolution = FLAGS.resolution
  config.model, config.num_filters = FLAGS.model, FLAGS.num_filters
  config.dtype, config.batch_size = FLAGS.dtype, FLAGS.batch_size
  config.arm = FLAGS.arm
  train.check_config(config)
  prepared = dataset.prepare(config.data, tempfile.mkdtemp())
  mesh = sharding.make_mesh()
  tx = steps.create_optimizer(config)
  graphdef, _, state = steps.init_state(
      steps.create_model(config, prepared.channels), tx)
  state = sharding.put_replicated(state, mesh)
  bound = steps.bind(graphdef, tx, 0.1)
  sched = steps.schedule(config, 10_000)
  data_kwargs = train._arm_data_kwargs(config)  # pylint: disable=protected-access
  print(f'{config.model} width {config.num_filters} {config.dtype} '
        f'{FLAGS.resolution}x{FLAGS.resolution} batch {config.batch_size}, '
        f'arm {config.arm}, {FLAGS.name}, on {jax.device_count()} '
        f'{jax.devices()[0].platform} device(s), '
        f'XLA_FLAGS={os.environ["XLA_FLAGS"]!r}:')

  def timed(run, length):
    state_ = jax.tree.map(jnp.copy, state)
    state_, m = run(state_, length)  # compile and warm up
    jax.block_until_ready(m)
    done, t = 0, time.perf_counter()
    while done < FLAGS.steps:
      n = min(length, FLAGS.steps - done)
      state_, m = run(state_, n)
      done += n
    jax.block_until_ready((state_, m))
    return (time.perf_counter() - t) / done

  rows = []
  for name, on_device, length in (
      ('streamed by grain', 'no', 1),
      ('drawn on the device, 1 step per dispatch', 'yes', 1),
      (f'drawn on the device, {FLAGS.length} steps per dispatch', 'yes',
       FLAGS.length)):
    config.data_on_device = on_device
    config.steps_per_dispatch = length
    feed = train.Feed(config, prepared, data_kwargs, mesh, 10_000)
    rows.append((name, timed(lambda s, n: feed.run(s, n, sched, bound),
                             length)))
  r, b = FLAGS.resolution, config.batch_size
  x = np.zeros((b, r, r, prepared.channels), np.float32)
  fixed = sharding.shard_batch({'image': x, 'label': np.zeros(b, np.int32)},
                               mesh)
  rows.append(('one fixed batch on the device (compute alone)',
               timed(lambda s, n: bound.train_step(s, fixed, sched), 1)))
  for name, sec in rows:
    print(f'  {name:50s} {b / sec:9.1f} img/s {1e3 * sec:8.2f} ms/step')


if __name__ == '__main__':
  app.run(main)
