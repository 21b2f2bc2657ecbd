"""FLOPs of a jitted function, counted from its jaxpr (convolutions included).

`compiled.cost_analysis()` on a GPU leaves out convolutions that XLA hands
to cuDNN (they become custom calls), so achieved TFLOP/s computed from it is
wrong there. This counts the multiply-adds of every `conv_general_dilated`
and `dot_general` in the traced program, backward passes included (they are
in the jaxpr of a step that takes gradients), as 2 FLOPs each; elementwise
work is left out, as is usual for TFLOP/s figures. Same count on every
backend. Loops: a `scan` counts `length` times; a `while` (its trip count
is not static) is refused. `shard_map` and `pallas_call` bodies have
per-shard / per-block shapes and would be undercounted.

  from flops import count_flops     # benchmarks/ is on sys.path
  n = count_flops(jitted_fn, *args, **static_kwargs)
"""

import math

import jax
from jax.extend import core


def _conv_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  dn = eqn.params['dimension_numbers']
  # rhs_spec = (out feature dim, in feature dim, *spatial dims).
  rhs_in = rhs.shape[dn.rhs_spec[1]]
  rhs_spatial = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
  del lhs
  # Each output element is a sum over in-features (per group) x window. An
  # lhs-dilated conv (the input gradient of a strided one) reads zeros at
  # all but 1 / prod(lhs_dilation) of its window positions: not counted.
  dilation = math.prod(eqn.params.get('lhs_dilation') or (1,))
  return 2.0 * math.prod(out.shape) * rhs_in * rhs_spatial / dilation


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
  rhs_free = math.prod(d for i, d in enumerate(rhs.shape)
                       if i not in rhs_contract and i not in rhs_batch)
  return 2.0 * math.prod(lhs.shape) * rhs_free


def _subjaxprs(eqn):
  for v in eqn.params.values():
    for x in (v if isinstance(v, (list, tuple)) else (v,)):
      if isinstance(x, core.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, core.Jaxpr):
        yield x


def jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'while':
      if any(jaxpr_flops(j) > 0 for j in _subjaxprs(eqn)):
        raise ValueError('count_flops: a while loop has no static trip '
                         'count; count one iteration instead')
    elif name == 'cond':   # the most expensive branch
      total += max(map(jaxpr_flops, _subjaxprs(eqn)), default=0.0)
    else:
      n = eqn.params['length'] if name == 'scan' else 1
      total += n * sum(map(jaxpr_flops, _subjaxprs(eqn)))
  return total


def count_flops(fn, *args, **kwargs) -> float:
  """FLOPs (2 per multiply-add) of conv/dot work in fn(*args, **kwargs).

  fn: a `jax.jit`-wrapped function (static arguments as kwargs) or a plain
  function of arrays.
  """
  if hasattr(fn, 'trace'):
    closed = fn.trace(*args, **kwargs).jaxpr
  else:
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return jaxpr_flops(closed.jaxpr)
