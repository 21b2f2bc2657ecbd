r"""Steady-state img/s of the PGGAN training LOOP (not one step), CPU or GPU.

  python benchmarks/pggan_loop.py [--res=4,8,16,32,64] [--fmap_base=1024
      --fmap_max=64] [--batch=16] [--k=16] [--dispatches=5]
      [--dtypes=float32,bfloat16] [--num_images=200] [--mirror] [--ada]
      [--gp_batch_shrink=1] [--compare_steps] [--flops_only]
      [--compile_only]

Per resolution and dtype: `steps.train_iterations` as train.py runs it, the
training split resident on the device (`--num_images` random images,
replicated), minibatches and flips drawn on the device, K iterations (critic
step + generator step + EMA update) per dispatch, alpha = 0.5 (fade-in path
included). All resolutions compile first, `--compile_threads` at a time
(default 1, one after another; the compile column is each one's wall
time). After one warm-up dispatch, `--dispatches` dispatches are timed
back to back and the result is read back once: img/s = images shown to D
per second (batch x d_repeats x iterations). `--batch=4:128,8:128,16:64` sets
a minibatch per resolution. `--compare_steps` also times the iteration-at-
a-time dispatch of d_step, g_step and ema_update (the loop before
train_iterations), on the same machine in the same run. `--ada` turns ADA on
(policy bgc, p adapted from 0.2). `--gp_batch_shrink=s` takes the
gradient penalty on every s-th pair of a batch (config.gp_batch_shrink).
TFLOP/s: the d_step and g_step convolution and matmul FLOPs counted from
their jaxprs (flops.py), times the iterations, over the loop's time
(`--flops_only`: the FLOPs per image shown to D alone, nothing compiled;
`--compile_only`: each resolution's compile time and the fusions of its
program, nothing timed).
Prints a table; one channel. On a CPU use --k=1, as train.py does there:
XLA:CPU runs convolutions inside a loop body ~15x slower
(jax-ml/jax#12868). Needs only jax, flax, optax and
numpy (runs on the offline GPU host as it is).
"""

import argparse
import concurrent.futures
import re
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flops import count_flops
from input_pipeline import sharding
from pggan_jax import networks
from pggan_jax import schedule
from pggan_jax import steps


def _models(a, dtype):
  kw = dict(resolution=max(a.res), channels=1, fmap_base=a.fmap_base,
            fmap_max=a.fmap_max, dtype=jnp.dtype(dtype))
  g = networks.Generator(**kw, rngs=nnx.Rngs(0))
  d = networks.Discriminator(**kw, rngs=nnx.Rngs(1))
  return g, d


def _state(g_params, d_params, hp, mesh):
  state = steps.init_state(g_params, d_params, hp, aug_p=0.2)
  return jax.device_put(state, NamedSharding(mesh, P()))


def _iteration_flops(state, data, kw, batch):
  """Conv/matmul FLOPs of one iteration: d_repeats x d_step + g_step."""
  alpha, lr, key = jnp.float32(0.5), jnp.float32(1e-3), jax.random.key(0)
  # Drawn as the loop draws them (with replacement: B may exceed N).
  reals, labels = steps.draw_batch(data, 0, key, batch_size=batch,
                                   mirror_images=False)
  d = count_flops(steps.d_step, state, reals, labels, key, alpha, lr, **kw)
  g = count_flops(steps.g_step, state, labels, key, alpha, lr, **kw)
  return kw['hp'].d_repeats * d + g


def _compile(state, data, plan, kw, batch):
  t0 = time.time()
  fn = steps.train_iterations.lower(state, data, plan, batch_size=batch,
                                    **kw).compile()
  return fn, time.time() - t0


def _fusions(compiled) -> int:
  """Fusion instructions in a compiled program's HLO (while bodies
  included): on a GPU, about the kernels an iteration launches."""
  # `name = SHAPE fusion(...)`, SHAPE a tuple for multi-output fusions.
  return len(re.findall(r'^\s*(?:ROOT )?\S+ = (?:\(.*?\)|\S+) fusion\(',
                        compiled.as_text(), re.M))


def _time_loop(fn, state, data, plan, dispatches):
  state, m = fn(state, data, plan)
  jax.block_until_ready(m)
  t0 = time.time()
  for i in range(dispatches):
    plan = dict(plan, step=np.int32((i + 1) * int(plan['n'])))
    state, m = fn(state, data, plan)
  jax.device_get(m)   # one read-back, as a log interval
  jax.block_until_ready(state)
  return time.time() - t0, state


def _time_steps(state, data, kw, batch, iters, mesh):
  """The previous loop: one dispatch per d_step, g_step and ema_update."""
  hp = kw['hp']
  alpha, lr = jnp.float32(0.5), jnp.float32(1e-3)
  sk = dict(g_graph=kw['g_graph'], d_graph=kw['d_graph'], stage=kw['stage'],
            hp=hp)
  images = np.asarray(data['images'])
  rng = np.random.default_rng(0)

  def one(state, i):
    idx = rng.integers(0, len(images), batch)
    batched = NamedSharding(mesh, P('data'))
    reals = jax.device_put(images[idx], batched)
    labels = jax.device_put(np.zeros(batch, np.int32), batched)
    state, m = steps.d_step(state, reals, labels, jax.random.key(i), alpha,
                            lr, **sk)
    state, mg = steps.g_step(state, labels, jax.random.key(i), alpha, lr,
                             **sk)
    state['g_ema'] = steps.ema_update(state['g_ema'], state['g'],
                                      jnp.float32(0.99))
    return state, (m, mg)

  state, _ = one(state, 0)
  jax.block_until_ready(state)
  t0 = time.time()
  ms = []
  for i in range(iters):
    state, m = one(state, i + 1)
    ms.append(m)
  jax.device_get(ms)
  jax.block_until_ready(state)
  return time.time() - t0, state


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--res', default='4,8,16,32,64')
  p.add_argument('--fmap_base', type=int, default=1024)
  p.add_argument('--fmap_max', type=int, default=64)
  p.add_argument('--batch', default='16',
                 help="one minibatch, or per resolution 'res:batch,...'")
  p.add_argument('--k', type=int, default=16, help='iterations / dispatch')
  p.add_argument('--dispatches', type=int, default=5)
  p.add_argument('--d_repeats', type=int, default=1)
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--num_images', type=int, default=200)
  p.add_argument('--gp_batch_shrink', type=int, default=1,
                 help='gradient penalty on every s-th pair of a batch')
  p.add_argument('--mirror', action='store_true')
  p.add_argument('--ada', action='store_true')
  p.add_argument('--compare_steps', action='store_true')
  p.add_argument('--flops_only', action='store_true',
                 help='print the FLOPs per image and time nothing')
  p.add_argument('--compile_only', action='store_true',
                 help='compile each resolution and print its compile time '
                 'and the number of fusions (kernels on a GPU) in the '
                 'compiled program; time no training')
  p.add_argument('--compile_threads', type=int, default=1,
                 help='resolutions compiled at once (0 = all); on a GPU, '
                 'XLA autotunes kernels while compiling, so concurrent '
                 'compiles may choose other kernels')
  a = p.parse_args()
  if a.gp_batch_shrink < 1:
    p.error('--gp_batch_shrink must be >= 1')
  if a.flops_only and a.compile_only:
    p.error('--flops_only compiles nothing: give one of --flops_only and '
            '--compile_only')
  a.res = [int(r) for r in a.res.split(',')]
  a.compile_threads = a.compile_threads or len(a.res)
  batches = (schedule.parse_res_dict(a.batch) if ':' in a.batch
             else {r: float(a.batch) for r in a.res})
  mesh = sharding.make_mesh()
  print(f'device={jax.devices()[0].device_kind} x{jax.device_count()} '
        f'fmap={a.fmap_base}/{a.fmap_max} K={a.k} dispatches={a.dispatches} '
        f'd_repeats={a.d_repeats} gp_batch_shrink={a.gp_batch_shrink} '
        f'mirror={a.mirror} ada={a.ada}', flush=True)
  head = (f'{"res":>5} {"dtype":>9} {"batch":>5} {"loop img/s":>10} '
          f'{"ms/iter":>8} {"TFLOP/s":>8} {"compile s":>9}')
  if not (a.flops_only or a.compile_only):
    print(head + (f' {"steps img/s":>11} {"loop/steps":>10}'
                  if a.compare_steps else ''), flush=True)
  for dtype in a.dtypes.split(','):
    g, d = _models(a, dtype)
    g_graph, g_params = nnx.split(g)
    d_graph, d_params = nnx.split(d)
    hp = steps.Hparams(latent_size=g.latent_size, d_repeats=a.d_repeats,
                       gp_batch_shrink=a.gp_batch_shrink, mirror=a.mirror,
                       ada_policy='bgc' if a.ada else '',
                       ada_adjust=a.ada)
    state = _state(g_params, d_params, hp, mesh)
    setups = []
    for r in a.res:
      batch = int(batches[r])
      stage = int(np.log2(r)) - 2
      x = np.random.default_rng(r).uniform(
          -1, 1, (a.num_images, r, r, 1)).astype(np.float32)
      rep = NamedSharding(mesh, P())
      data = {'images': jax.device_put(x, rep),
              'labels': jax.device_put(np.zeros(a.num_images, np.int32),
                                       rep)}
      plan = {'n': np.int32(a.k), 'step': np.int32(0),
              'alpha': np.full(a.k, 0.5, np.float32),
              'ema_beta': np.full(a.k, 0.99, np.float32),
              'lr_d': np.float32(1e-3), 'lr_g': np.float32(1e-3),
              'key': jax.random.key(0), 'data_key': jax.random.key(1)}
      kw = dict(g_graph=g_graph, d_graph=d_graph, stage=stage, hp=hp)
      setups.append((r, batch, data, plan, kw))
    if a.flops_only:
      for r, batch, data, _, kw in setups:
        flops = _iteration_flops(state, data, kw, batch)
        print(f'{r:>5} {dtype:>9} {batch:>5} GFLOP per image shown to D: '
              f'{flops / (batch * a.d_repeats) / 1e9:.1f}', flush=True)
      continue
    # Every resolution compiles first, --compile_threads at a time; each is
    # then timed alone.
    with concurrent.futures.ThreadPoolExecutor(a.compile_threads) as pool:
      compiled = [pool.submit(_compile, state, data, plan, kw, batch)
                  for _, batch, data, plan, kw in setups]
    for (r, batch, data, plan, kw), fut in zip(setups, compiled):
      fn, compile_s = fut.result()
      if a.compile_only:
        print(f'{r:>5} {dtype:>9} {batch:>5} compile s {compile_s:.1f}, '
              f'fusions {_fusions(fn)}', flush=True)
        continue
      flops = _iteration_flops(state, data, kw, batch)
      dt, state = _time_loop(fn, state, data, plan, a.dispatches)
      iters = a.k * a.dispatches
      ips = iters * batch * a.d_repeats / dt
      line = (f'{r:>5} {dtype:>9} {batch:>5} {ips:>10.1f} '
              f'{dt / iters * 1e3:>8.2f} {flops * iters / dt / 1e12:>8.3f} '
              f'{compile_s:>9.1f}')
      if a.compare_steps:
        dt_s, state = _time_steps(state, data, kw, batch, iters, mesh)
        ips_s = iters * batch / dt_s
        line += f' {ips_s:>11.1f} {ips / ips_s:>10.2f}'
      print(line, flush=True)


if __name__ == '__main__':
  main()
