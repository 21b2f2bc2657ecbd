"""Data parallelism: one ('data',) mesh, batches sharded, parameters replicated.

Also the JAX runtime set-up every job shares (the persistent compilation
cache).
"""

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from input_pipeline.errors import UserInputError


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis name 'data'."""
  return jax.make_mesh((jax.device_count(),), ('data',))


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree, mesh: jax.sharding.Mesh):
  """`tree` replicated over `mesh`, each leaf with the spec a jitted step
  gives its outputs (P(None, ...), one entry per axis), so feeding a
  step's output back in is the same call signature as the first call and
  does not trace and compile the step a second time."""
  return jax.device_put(tree, jax.tree.map(
      lambda x: NamedSharding(mesh, P(*[None] * np.ndim(x))), tree))


def check_batch_size(batch_size: int, key: str = 'batch_size') -> None:
  """Global batch must split evenly over devices; fail early and clearly."""
  n = jax.device_count()
  if batch_size % n:
    raise UserInputError(
        f'config.{key}={batch_size} is not divisible by the {n} devices')


def auto_axes(fn, like: jax.Array, out_spec: P = P()):
  """`fn` run with the mesh's axes in 'auto' mode, its outputs `out_spec`.

  `make_mesh()` gives Explicit axes (sharding in types), under which
  reshapes of batch-sharded arrays need explicit output shardings. Inside a
  model (or an augmentation) we let the compiler propagate the batch
  sharding (data parallel) instead. The mesh is `like`'s (a traced array);
  unsharded inputs (tests, single arrays) call `fn` unchanged.
  """
  mesh = jax.typeof(like).sharding.mesh
  if mesh.empty:
    return fn

  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(fn, axes=mesh.axis_names,
                                    out_sharding=out_spec)(*args)
  return wrapped


def padded_count(n: int) -> int:
  """A device array's row count for n images: the next power of two, so
  runs with a few images more or less (folds, classes) share compiled
  programs."""
  return 1 << max(n - 1, 0).bit_length()


def dispatch_length(setting: int) -> int:
  """Training steps per device dispatch: `setting`, 0 = auto: 16, but 1
  on the CPU, where XLA runs convolutions inside a loop body many times
  slower than outside one (jax-ml/jax#12868; 15x measured here)."""
  if setting:
    return int(setting)
  return 1 if jax.default_backend() == 'cpu' else 16


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """x with rows of zeros appended along axis 0 up to n rows (a fixed
  shape, so the consumer compiles once; callers never read the padding)."""
  pad = n - len(x)
  if pad <= 0:
    return x
  return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])


def shard_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Places a host-local numpy batch on the mesh (multi-host aware).

  Each process holds its own slice of the global batch (grain shards the
  data per process), so the global array is assembled from local data.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def setup_compilation_cache(cache_dir: str, min_compile_secs: float) -> str:
  """Persistent XLA cache ('' = leave JAX's setting alone); returns it."""
  if not cache_dir:
    return ''
  cache_dir = os.path.expanduser(cache_dir)
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:  # read-only location: run without the cache
    logging.warning('no compilation cache (%s): %s', cache_dir, e)
    return ''
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_secs))
  return cache_dir
