"""Atomic file writes: a reader sees the old file or the complete new one.

Reports, manifests, markers and predictions all go through `atomic_open`, so
a crash never leaves a half-written file where a finished one is expected.
"""

import contextlib
import json
import math
import os
from typing import Any, Iterator, Mapping, TextIO

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, **open_kwargs) -> Iterator[TextIO]:
  """Writes to a temporary file beside `path`, renamed over it on success."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w', **open_kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=1, **dump_kwargs)


def jsonable(x: Any) -> Any:
  """For strict JSON: NaN/inf -> None (null), numpy scalars -> Python,
  mappings and sequences converted throughout (keys as str)."""
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x
