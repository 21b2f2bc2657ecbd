r"""Does a process with simulated CPU devices survive a slow collective?

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python benchmarks/cpu_rendezvous.py [--delay=70] [--main_defaults]

Two CPU devices run one all-reduce (`jax.lax.psum` under shard_map); the
thread of device 0 first sleeps `--delay` seconds in a host callback, as a
starved thread of a busy machine would. XLA ends the process when a thread
waits at a collective's rendezvous too long (prints "Termination timeout
for `all reduce` ... exceeded"); `--main_defaults` applies the XLA flags
main.py adds (input_pipeline/cli.py) first. Prints the result and the wall
time, or dies with XLA's message.

Measured (2-core CPU, jaxlib 0.10.2, 2026-11-27), --delay=70: XLA's
defaults aborted after 60 s (a warning at 20 s, then its 40 s termination
timeout); with --main_defaults it finished in 70.2 s.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--delay', type=float, default=70.0)
  p.add_argument('--main_defaults', action='store_true')
  args = p.parse_args()
  if args.main_defaults:  # before JAX starts a backend, as main.py
    from input_pipeline import cli  # pylint: disable=g-import-not-at-top
    os.environ['XLA_FLAGS'] = cli.xla_flags_with_defaults(
        os.environ.get('XLA_FLAGS', ''))
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  # pylint: enable=g-import-not-at-top
  if jax.device_count() < 2:
    sys.exit('needs XLA_FLAGS=--xla_force_host_platform_device_count=2')
  print('XLA_FLAGS:', os.environ.get('XLA_FLAGS', ''), flush=True)
  mesh = jax.make_mesh((2,), ('d',))

  def slow(i):
    if int(i) == 0:
      time.sleep(args.delay)
    return np.float32(i)

  def f(x):
    y = jax.pure_callback(slow, jax.ShapeDtypeStruct((), jnp.float32),
                          jax.lax.axis_index('d'))
    return jax.lax.psum(x + y, 'd')

  run = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P('d'), out_specs=P()))
  x = jax.device_put(jnp.arange(2.0), NamedSharding(mesh, P('d')))
  t = time.time()
  out = np.asarray(run(x))
  print(f'all-reduce {out} after a {args.delay:g} s delay: '
        f'{time.time() - t:.1f} s', flush=True)


if __name__ == '__main__':
  main()
