r"""Device time per kernel in a jax.profiler trace, as a table.

  python benchmarks/profile_summary.py TRACE_DIR_OR_XPLANE [--top=25]
      [--steps=N]

Reads the newest `*.xplane.pb` under TRACE_DIR (what
`jax.profiler.trace(TRACE_DIR)` writes) with `jax.profiler.ProfileData`
(no TensorBoard or xprof needed) and prints, for each device plane
(`/device:GPU:0`, ...), the kernels that took most device time: summed
duration, share of the plane's busy time, launches, and the HLO op each
kernel ran for where the trace names it (the first and how many more
where one kernel served several). `--steps=N` also prints the
busy time per step. Busy time is the union of the kernels' intervals over
the plane's streams, so kernels that overlap count once; the span is first
kernel start to last kernel end, and the idle share of that span is time
the device waited (for the host's dispatch, a copy, a sync).

`summarize(load(dir))` is the same table as data: benchmarks call it after
tracing (benchmarks/resnet_step.py --profile_dir).
"""

import argparse
import collections
import glob
import os

from jax.profiler import ProfileData


def _latest_xplane(path: str) -> str:
  if os.path.isfile(path):
    return path
  found = sorted(glob.glob(os.path.join(path, '**', '*.xplane.pb'),
                           recursive=True), key=os.path.getmtime)
  if not found:
    raise SystemExit(f'profile_summary: no *.xplane.pb under {path}')
  return found[-1]


def _union_ns(intervals) -> float:
  total, end = 0.0, float('-inf')
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def load(path: str) -> ProfileData:
  """The newest trace under `path` (a trace dir), or the .xplane.pb named."""
  return ProfileData.from_file(_latest_xplane(path))


def _ops_label(ops: set) -> str:
  """One HLO op, or the first of several and how many more: a library
  kernel (a cuDNN convolution, a GEMM) often serves many ops."""
  if not ops:
    return ''
  first = sorted(ops)[0]
  return first if len(ops) == 1 else f'{first} +{len(ops) - 1} more'


def summarize(data: ProfileData) -> list[dict]:
  """Per device plane: {'plane', 'busy_ns', 'span_ns', 'kernels'}, kernels
  a list of (name, HLO op label, total_ns, launches), longest first."""
  out = []
  for plane in data.planes:
    if not plane.name.startswith('/device:'):
      continue
    per = collections.defaultdict(lambda: [0.0, 0])
    ops = collections.defaultdict(set)
    intervals = []
    for line in plane.lines:
      for ev in line.events:
        start = ev.start_ns
        intervals.append((start, start + ev.duration_ns))
        rec = per[ev.name]
        rec[0] += ev.duration_ns
        rec[1] += 1
        op = dict(ev.stats).get('hlo_op')
        if op:
          ops[ev.name].add(str(op))
    if not intervals:
      continue
    kernels = sorted(((n, _ops_label(ops[n]), t, c)
                      for n, (t, c) in per.items()), key=lambda k: -k[2])
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    out.append({'plane': plane.name, 'busy_ns': _union_ns(intervals),
                'span_ns': span, 'kernels': kernels})
  return out


def format_summary(planes: list[dict], top: int = 25,
                   steps: int = 0) -> str:
  lines = []
  for p in planes:
    busy, span = p['busy_ns'], p['span_ns']
    launches = sum(k[3] for k in p['kernels'])
    head = (f"{p['plane']}: busy {busy / 1e6:.2f} ms of a {span / 1e6:.2f} "
            f'ms span ({100 * (1 - busy / span):.1f} % idle), '
            f'{launches} kernel launches')
    if steps:
      head += (f'; per step: busy {busy / steps / 1e6:.2f} ms, '
               f'{launches / steps:.0f} launches')
    lines.append(head)
    lines.append(f'{"ms":>9} {"%busy":>6} {"launches":>8}  kernel [hlo op]')
    for name, op, t, c in p['kernels'][:top]:
      label = name if len(name) <= 90 else name[:87] + '...'
      lines.append(f'{t / 1e6:>9.3f} {100 * t / busy:>6.1f} {c:>8}  {label}'
                   + (f' [{op}]' if op and op != name else ''))
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('path', help='trace dir (jax.profiler.trace) or .xplane.pb')
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--steps', type=int, default=0,
                 help='steps in the trace: also print busy time per step')
  a = p.parse_args()
  planes = summarize(load(a.path))
  if not planes:
    raise SystemExit(f'profile_summary: no device kernels in {a.path} '
                     '(a CPU trace has none)')
  print(format_summary(planes, a.top, a.steps))


if __name__ == '__main__':
  main()
