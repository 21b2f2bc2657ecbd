"""ResNet train-step throughput (images/s) of the classifier's train_step
(resnet_jax.steps.bind).

  python benchmarks/resnet_step.py --resolution=128,224 --batch_size=16
  python benchmarks/resnet_step.py --resolution=224 --channels=3
      --batch_size=128,256 --dtype=float32,bfloat16 [--max_pool=window,slices]
      [--stem_pad_channels=0,4] [--profile_dir=DIR]
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/resnet_step.py ...

Times the real jitted, state-donating train step (SGD momentum, BN in
training mode, 2 classes) on synthetic inputs already on the device. Every
flag that takes a list sweeps: each combination of resolution, batch,
dtype, max-pool and stem padding compiles first (`--compile_threads` at a
time, default 1: on a GPU programs compiling at once each took longer than
all of them one after another), then each is timed alone, one line each:
after `--warmup` steps, `--steps` steps each waited for (median and fastest
step), then `--steps` steps dispatched back to back and waited for once
(`back to back`: the host dispatches the next step while the device
computes, as a training loop that keeps a dispatch queued), with the median
time the host spent in one call (`ms a call`: the dispatch cost on the CPU;
on an H200, ResNet-50 at 224x224, batch 128, the call lasted as long as the
step, 20.1-20.7 ms in bfloat16 and 35.9 ms in float32, so there it shows the
step, not the dispatch). Steps call the compiled
program (`train_step.lower(...).compile()`); `--jit_call` also times them
both ways through `jax.jit`'s call, as train.py's streamed steps call them
(resnet_jax.steps.bind: the model's graph bound, not hashed at every call
as a static argument; with it a static argument, the call cost 1.2-1.7 ms
a step more than the compiled program on an H200; bound, at most 0.34 ms
in bfloat16).
`--profile_dir=DIR` then traces `--steps` more back-to-back steps of each
combination into DIR/<combination> (e.g.
224x224_b128_bfloat16_pool-window_stem0) and prints the kernels that took
most device time (benchmarks/profile_summary.py).
Compare with benchmarks/resnet_step_torch.py (same model shape). On a
shared machine, run the variants back to back and repeat.

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

import concurrent.futures
import itertools
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
import profile_summary
from resnet_jax import steps

_MODEL = flags.DEFINE_string('model', 'resnet50', 'resnet18|34|50')
_RES = flags.DEFINE_list('resolution', ['128', '224'], 'Image sides.')
_BATCH = flags.DEFINE_list('batch_size', ['16'], 'Batch sizes.')
_CHANNELS = flags.DEFINE_integer('channels', 1, 'Input channels (stem).')
_FILTERS = flags.DEFINE_integer('num_filters', 64, 'Width of stage 0.')
_DTYPE = flags.DEFINE_list('dtype', ['float32'],
                           'Compute dtypes: float32, bfloat16.')
_POINTWISE_DOT = flags.DEFINE_bool(
    'pointwise_dot', True, '1x1 convs as dots (models.ResNet pointwise_dot); '
    '--nopointwise_dot for lax.conv_general_dilated everywhere.')
_MAX_POOL = flags.DEFINE_list(
    'max_pool', ['window'], "The stem's 3x3/2 max-pool: 'window' "
    "(nnx.max_pool), 'slices' (max of 9 strided slices; models.ResNet).")
_STEM_PAD = flags.DEFINE_list(
    'stem_pad_channels', ['0'], "Input channels zero-padded to this many in "
    "the stem's convolution (0: none; models.ResNet).")
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (each way).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_THREADS = flags.DEFINE_integer(
    'compile_threads', 1, 'Combinations compiled at once (0: all). On a '
    'GPU 1: two ResNet-50 programs compiling at once took 54 s each on an '
    'H200 (XLA autotunes under a device lock).')
_JIT_CALL = flags.DEFINE_bool(
    'jit_call', False, 'Also time the steps, each waited for and back to '
    "back, through jax.jit's call (resnet_jax.steps.bind(...).train_step, "
    'as train.py calls it) rather than the compiled program.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', None, 'Trace --steps back-to-back steps of each '
    'combination here and print its kernels by device time.')


def _config(dtype: str, max_pool: str,
            stem_pad: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=_MODEL.value, num_filters=_FILTERS.value, dtype=dtype,
      pointwise_dot=_POINTWISE_DOT.value, max_pool=max_pool,
      stem_pad_channels=stem_pad, seed=0, optimizer='sgd',
      learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
      warmup_fraction=0.1, label_smoothing=0.0))


class _Case:
  """One combination: its state, batch, compiled step and FLOPs."""

  def __init__(self, res, batch, dtype, max_pool, stem_pad):
    self.name = (f'{res}x{res} b{batch} {dtype} max_pool={max_pool} '
                 f'stem_pad={stem_pad}')
    # Letters, digits, '_' and '-' only: device runs bring back no other.
    self.dir_name = (f'{res}x{res}_b{batch}_{dtype}_pool-{max_pool}_'
                     f'stem{stem_pad}')
    self.batch_size = batch
    config = _config(dtype, max_pool, stem_pad)
    model = steps.create_model(config, _CHANNELS.value)
    self.tx = steps.create_optimizer(config)
    self.sched = steps.schedule(config, 1000)
    self.graphdef, _, self.state = steps.init_state(model, self.tx)
    rng = np.random.default_rng(0)
    self.batch = {
        'image': jnp.asarray(rng.uniform(
            -1, 1, (batch, res, res, _CHANNELS.value)), jnp.float32),
        'label': jnp.asarray(rng.integers(0, 2, batch), jnp.int32),
    }
    self.train_step = steps.bind(self.graphdef, self.tx, 0.0).train_step
    self.flops = count_flops(self.train_step, self.state, self.batch,
                             self.sched)
    self.lowered = self.train_step.lower(self.state, self.batch, self.sched)
    self.compiled, self.compile_s, self.loss = None, 0.0, float('nan')

  def compile(self):
    t0 = time.perf_counter()
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - t0

  def step(self, jit: bool = False):
    """One step: through jax.jit's call with jit, else the compiled
    program."""
    fn = self.train_step if jit else self.compiled
    self.state, m = fn(self.state, self.batch, self.sched)
    return m

  def waited(self, n: int, jit: bool = False) -> np.ndarray:
    """Seconds of n steps, each waited for. jit: through jax.jit's call
    (the first of n + 1, untimed, traces and finds the program in the
    persistent compilation cache where one is set, or compiles it again:
    on a GPU autotuning may then pick other kernels)."""
    times = []
    first = int(jit)  # untimed
    for _ in range(first + n):
      t0 = time.perf_counter()
      m = jax.block_until_ready(self.step(jit))
      times.append(time.perf_counter() - t0)
    self.loss = float(m['loss'])
    return np.array(times[first:])

  def back_to_back(self, n: int, jit: bool = False) -> tuple[float, float]:
    """n steps dispatched back to back, waited for once: (seconds a step,
    median seconds the host spent in one call: the call until it
    returned)."""
    calls = []
    t0 = time.perf_counter()
    for _ in range(n):
      t = time.perf_counter()
      m = self.step(jit)
      calls.append(time.perf_counter() - t)
    jax.block_until_ready((self.state, m))
    return (time.perf_counter() - t0) / n, float(np.median(calls))


def _ints(flag) -> list[int]:
  try:
    return [int(v) for v in flag.value]
  except ValueError:
    raise app.UsageError(f'--{flag.name}={",".join(flag.value)}: '
                         'comma-separated integers') from None


def _choices(flag, allowed: tuple[str, ...]) -> list[str]:
  for v in flag.value:
    if v not in allowed:
      raise app.UsageError(f'--{flag.name}={v!r}: {" or ".join(allowed)}')
  return flag.value


def main(argv):
  del argv
  dtypes = _choices(_DTYPE, ('float32', 'bfloat16'))
  if _STEPS.value < 1:
    raise app.UsageError('--steps must be >= 1')
  pools = _choices(_MAX_POOL, ('window', 'slices'))
  print(f'jax {jax.__version__} {jax.devices()} '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} {_MODEL.value} "
        f'pointwise_dot={_POINTWISE_DOT.value} channels={_CHANNELS.value}',
        flush=True)
  combos = itertools.product(
      _ints(_RES), _ints(_BATCH), dtypes, pools, _ints(_STEM_PAD))
  cases = [_Case(*c) for c in combos]   # traced one after another
  threads = _THREADS.value or len(cases)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for f in [pool.submit(c.compile) for c in cases]:
      f.result()
  for c in cases:
    for _ in range(_WARMUP.value):
      jax.block_until_ready(c.step())
    n, b = _STEPS.value, c.batch_size
    times = c.waited(n)
    b2b, call_s = c.back_to_back(n)
    med = np.median(times)
    jit = ''
    if _JIT_CALL.value:
      jit_med = np.median(c.waited(n, jit=True))
      jit_b2b, jit_call_s = c.back_to_back(n, jit=True)
      jit = (f'; through jax.jit {b / jit_med:.2f} img/s, back to back '
             f'{b / jit_b2b:.2f} ({1e3 * jit_call_s:.2f} ms a call)')
    print(f'{c.name}: {b / med:.2f} img/s (median of {n} steps; fastest '
          f'step {b / times.min():.2f}); back to back {b / b2b:.2f} img/s '
          f'({1e3 * call_s:.2f} ms a call){jit}; '
          f'{c.flops / med / 1e12:.3g} / {c.flops / b2b / 1e12:.3g} TFLOP/s '
          f'of {c.flops / b / 1e9:.2f} GFLOP/img (conv+matmul); compile '
          f'{c.compile_s:.1f} s; loss {c.loss:.3f}', flush=True)
    if _PROFILE_DIR.value:
      d = os.path.join(_PROFILE_DIR.value, c.dir_name)
      with jax.profiler.trace(d):
        c.back_to_back(_STEPS.value)
      planes = profile_summary.summarize(profile_summary.load(d))
      print(profile_summary.format_summary(planes, 20, _STEPS.value)
            if planes else f'{d}: no device kernels in the trace (CPU)',
            flush=True)


if __name__ == '__main__':
  app.run(main)
