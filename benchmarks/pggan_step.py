r"""Times one PGGAN critic + generator step per resolution (CPU or GPU).

  python benchmarks/pggan_step.py [--fmap_base=8192 --fmap_max=512]
      [--max_res=256] [--batch=16] [--iters=5] [--dtype=float32]

Prints, per resolution 4..max_res (stage static, alpha = 0.5 so the fade-in
path is included): seconds per (d_step + g_step + ema_update), img/s, and
achieved GFLOP/s from the steps' convolution and matmul FLOPs counted from
their jaxprs (flops.py; cost_analysis() leaves cuDNN convolutions out on a
GPU). One channel. Compare with benchmarks/pggan_step_torch.py.
"""

import argparse
import time

from flax import nnx
import jax
import jax.numpy as jnp

from flops import count_flops
from pggan_jax import networks
from pggan_jax import steps


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--fmap_base', type=int, default=8192)
  p.add_argument('--fmap_max', type=int, default=512)
  p.add_argument('--max_res', type=int, default=256)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--iters', type=int, default=5)
  p.add_argument('--dtype', default='float32')
  a = p.parse_args()
  dtype = jnp.dtype(a.dtype)
  kw = dict(resolution=a.max_res, channels=1, fmap_base=a.fmap_base,
            fmap_max=a.fmap_max, dtype=dtype)
  g = networks.Generator(**kw, rngs=nnx.Rngs(0))
  d = networks.Discriminator(**kw, rngs=nnx.Rngs(1))
  g_graph, g_params = nnx.split(g)
  d_graph, d_params = nnx.split(d)
  hp = steps.Hparams(latent_size=g.latent_size)
  state = steps.init_state(g_params, d_params, hp)
  print(f'device={jax.devices()[0].device_kind} batch={a.batch} '
        f'fmap={a.fmap_base}/{a.fmap_max} dtype={a.dtype}')
  print(f'{"res":>5} {"ms/step":>9} {"img/s":>8} {"GFLOP/step":>11} '
        f'{"GFLOP/s":>8} {"compile s":>9}')
  labels = jnp.zeros((a.batch,), jnp.int32)
  alpha, lr = jnp.float32(0.5), jnp.float32(1e-3)
  for stage in range(networks.num_stages(a.max_res)):
    r = 4 * 2 ** stage
    reals = jax.random.uniform(jax.random.key(stage), (a.batch, r, r, 1),
                               minval=-1, maxval=1)
    kw = dict(g_graph=g_graph, d_graph=d_graph, stage=stage, hp=hp)
    t0 = time.time()
    dc = steps.d_step.lower(state, reals, labels, jax.random.key(0), alpha,
                            lr, **kw).compile()
    gc = steps.g_step.lower(state, labels, jax.random.key(0), alpha, lr,
                            **kw).compile()
    compile_s = time.time() - t0
    flops = (count_flops(steps.d_step, state, reals, labels,
                         jax.random.key(0), alpha, lr, **kw)
             + count_flops(steps.g_step, state, labels, jax.random.key(0),
                           alpha, lr, **kw))

    def one(state, i):
      state, _ = dc(state, reals, labels, jax.random.key(i), alpha, lr)
      state, _ = gc(state, labels, jax.random.key(i), alpha, lr)
      state['g_ema'] = steps.ema_update(state['g_ema'], state['g'],
                                        jnp.float32(0.999))
      return state

    state = jax.block_until_ready(one(state, 0))   # warm-up
    t0 = time.time()
    for i in range(a.iters):
      state = one(state, i + 1)
    jax.block_until_ready(state)
    dt = (time.time() - t0) / a.iters
    print(f'{r:>5} {dt * 1e3:>9.1f} {a.batch / dt:>8.1f} {flops / 1e9:>11.3f}'
          f' {flops / dt / 1e9:>8.1f} {compile_s:>9.1f}', flush=True)


if __name__ == '__main__':
  main()
