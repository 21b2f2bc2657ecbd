"""Two (or more) classifier runs side by side: `compare_from_config`.

    python main.py --config=configs/compare.py --config.runs=A,B

Reads each run's results.json and config.json (configs/resnet.py writes
both) and prints the validation and test metrics of every run with their
differences from the first, then every config key (flattened, dotted) and
synthetic-image provenance field (folder, ratio, GAN workdirs and
checkpoints) whose values differ.
"""

import json
import os
from typing import Any

import ml_collections

from input_pipeline.errors import UserInputError

SPLITS = ('val', 'test', 'test_at_val_threshold')
METRICS = ('auc', 'accuracy', 'balanced_accuracy', 'sensitivity',
           'specificity', 'f1')
# Top-level results fields worth a row.
FIELDS = ('threshold', 'num_train', 'steps', 'train_seconds',
          'train_images_per_second')


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}, 'c': [2, 3]} -> {'a.b': 1, 'c.0': 2, 'c.1': 3}."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (list, tuple)) and tree:
    items = enumerate(tree)
  else:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(flatten(v, f'{prefix}.{k}' if prefix else str(k)))
  return out


def load_run(run: str) -> dict[str, Any]:
  """{'results': ..., 'config': flat dict or None} of a classifier workdir."""
  path = os.path.join(run, 'results.json')
  if not os.path.isfile(path):
    raise UserInputError(f'{path} not found: {run} is not a finished '
                         'classifier run (configs/resnet.py)')
  with open(path) as f:
    results = json.load(f)
  config = None
  if os.path.isfile(os.path.join(run, 'config.json')):
    with open(os.path.join(run, 'config.json')) as f:
      config = flatten(json.load(f))
  return {'results': results, 'config': config}


def _fmt(v: Any) -> str:
  if v is None:
    return 'n/a'
  if v == '':
    return "''"
  if isinstance(v, float):
    return f'{v:.4f}'
  return str(v)


def _diff(a: Any, b: Any) -> str:
  numbers = (int, float)
  if (isinstance(a, numbers) and isinstance(b, numbers)
      and not isinstance(a, bool) and not isinstance(b, bool)):
    return f'{b - a:+d}' if isinstance(a + b, int) else f'{b - a:+.4f}'
  return ''


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  widths = [max(len(r[i]) for r in [header] + rows)
            for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  return [line(header), line(['-' * w for w in widths])] + [
      line(r) for r in rows]


def compare(runs: list[str]) -> tuple[str, dict[str, Any]]:
  """(printable text, {'metrics': {key: [values]}, 'differences': ...})."""
  if len(runs) < 2:
    raise UserInputError(
        f'config.runs={",".join(runs)!r}: give two or more classifier '
        'workdirs, comma-separated (--config.runs=A,B)')
  loaded = [load_run(r) for r in runs]
  labels = [chr(ord('A') + i) if i < 26 else str(i) for i in range(len(runs))]
  lines = [f'{lab}: {run}' for lab, run in zip(labels, runs)] + ['']
  metrics = {}
  for split in SPLITS:
    for m in METRICS:
      metrics[f'{split}.{m}'] = [r['results'].get(split, {}).get(m)
                                 for r in loaded]
  for k in FIELDS:
    metrics[k] = [r['results'].get(k) for r in loaded]
  header = ['metric'] + labels + [f'{lab}-A' for lab in labels[1:]]
  rows = [[k] + [_fmt(v) for v in vs] + [_diff(vs[0], v) for v in vs[1:]]
          for k, vs in metrics.items()]
  lines += _table(header, rows) + ['']

  flat = []
  for r in loaded:
    f = {f'config.{k}': v for k, v in (r['config'] or {}).items()}
    f.update(flatten(r['results'].get('synthetic') or {}, 'synthetic'))
    flat.append(f)
  keys = sorted(set().union(*flat))
  missing = [lab for lab, r in zip(labels, loaded) if r['config'] is None]
  differences = {k: [f.get(k) for f in flat] for k in keys
                 if len({json.dumps(f.get(k), sort_keys=True)
                         for f in flat}) > 1}
  if missing:
    lines.append(f'no config.json in {", ".join(missing)} (a run from '
                 'before config.json was written): config not compared')
  if differences:
    lines += _table(['differs'] + labels,
                    [[k] + [_fmt(v) for v in vs]
                     for k, vs in differences.items()])
  else:
    lines.append('config and synthetic provenance: identical')
  return '\n'.join(lines), {'metrics': metrics, 'differences': differences}


def compare_from_config(config: ml_collections.ConfigDict,
                        workdir: str | None = None) -> dict[str, Any]:
  """`main.py` entry for configs/compare.py (`workdir` unused)."""
  del workdir
  runs = [r.strip() for r in str(config.runs).split(',') if r.strip()]
  text, out = compare(runs)
  print(text)
  return out
