"""ResNet train-step throughput (images/s) of resnet_jax.steps.train_step.

  python benchmarks/resnet_step.py --resolution=128,224 --batch_size=16
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/resnet_step.py ...

Times the real jitted, state-donating train step (SGD momentum, BN in
training mode, 2 classes) on synthetic inputs, after `--warmup` compiled
steps; prints one line per resolution. Compare with
benchmarks/resnet_step_torch.py (same model shape). On a shared machine,
run the variants back to back and repeat.

Measured (shared 2-core AMD EPYC, batch 16, 1-channel stem, jax 0.10.2;
load 2-6 from other jobs, so +-20%): 224x224 f32 0.93-1.00 img/s, bf16
1.13, --xla_cpu_use_onednn=true 1.13, --xla_cpu_use_xnnpack=true 1.03;
torch 2.13 (NCHW) 2.70 back to back. 128x128 f32 1.8-1.9, bf16 2.6.

Profile (jax.profiler, 128x128 f32, before): 41% of op time in the weight
gradients of the convs (XLA lowers them to convolutions with an HxW window),
20% in layout transposes feeding them. 1x1 convs as dots (--pointwise_dot,
now the default) turn those into plain GEMMs. Back to back, load 6-8:
128x128 2.92 -> 3.76, 2.71 -> 3.36 img/s; 224x224 0.48 -> 1.15,
0.34 -> 0.79 img/s. 3x3 convs as im2col + dot (whole, or only their weight
gradient) were not faster; --xla_cpu_experimental_onednn_fusion_type=
dot,eltwise and --xla_cpu_use_onednn=true: within noise (+0-5%).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flops import count_flops  # pylint: disable=g-bad-import-order
from resnet_jax import steps

_MODEL = flags.DEFINE_string('model', 'resnet50', 'resnet18|34|50')
_RES = flags.DEFINE_list('resolution', ['128', '224'], 'Image sides.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Batch size.')
_CHANNELS = flags.DEFINE_integer('channels', 1, 'Input channels (stem).')
_FILTERS = flags.DEFINE_integer('num_filters', 64, 'Width of stage 0.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype.')
_POINTWISE_DOT = flags.DEFINE_bool(
    'pointwise_dot', True, '1x1 convs as dots (models.ResNet pointwise_dot); '
    '--nopointwise_dot for lax.conv_general_dilated everywhere.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps (incl. compile).')


def _config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=_MODEL.value, num_filters=_FILTERS.value, dtype=_DTYPE.value,
      pointwise_dot=_POINTWISE_DOT.value, seed=0, optimizer='sgd', learning_rate=0.1, momentum=0.9,
      weight_decay=1e-4, warmup_fraction=0.1, label_smoothing=0.0))


def main(argv):
  del argv
  config = _config()
  print(f'jax {jax.__version__} {jax.devices()} '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} {config.model} "
        f'dtype={config.dtype} pointwise_dot={config.pointwise_dot} batch={_BATCH.value} '
        f'channels={_CHANNELS.value}', flush=True)
  for res in map(int, _RES.value):
    model = steps.create_model(config, _CHANNELS.value)
    tx = steps.create_optimizer(config)
    sched = steps.schedule(config, 1000)
    graphdef, _, state = steps.init_state(model, tx)
    rng = np.random.default_rng(0)
    batch = {
        'image': jnp.asarray(rng.uniform(
            -1, 1, (_BATCH.value, res, res, _CHANNELS.value)), jnp.float32),
        'label': jnp.asarray(rng.integers(0, 2, _BATCH.value), jnp.int32),
    }
    step = lambda s: steps.train_step(s, batch, sched, graphdef=graphdef,
                                      tx=tx, label_smoothing=0.0)
    flops = count_flops(steps.train_step, state, batch, sched,
                        graphdef=graphdef, tx=tx, label_smoothing=0.0)
    t0 = time.perf_counter()
    state, m = step(state)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value - 1):
      state, m = step(state)
    jax.block_until_ready(m)
    times = []
    for _ in range(_STEPS.value):
      t0 = time.perf_counter()
      state, m = step(state)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    times = np.array(times)
    print(f'{res}x{res}: {_BATCH.value / np.median(times):.2f} img/s '
          f'(median of {len(times)} steps; min-step '
          f'{_BATCH.value / times.min():.2f} img/s; '
          f'{flops / np.median(times) / 1e12:.3g} TFLOP/s of '
          f'{flops / _BATCH.value / 1e9:.2f} GFLOP/img (conv+matmul); '
          f'first step incl. compile {compile_s:.1f} s; '
          f"loss {float(m['loss']):.3f})", flush=True)


if __name__ == '__main__':
  app.run(main)
