"""Library logs at WARNING unless `--verbosity` asks for more (main.py).

A tiny run used to print ~250 lines of orbax INFO (and jax, TFDS, grain)
into its progress bar. With the default verbosity, records below WARNING
are dropped unless they come from this project's own files; an explicit
`--verbosity=N` (or `-v N`) leaves absl's usual behaviour untouched.
"""

import logging
import os

from absl import flags
from absl import logging as absl_logging

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python loggers of chatty libraries (orbax logs through absl instead, and
# is caught by the filter below); 'jax' includes the compilation cache.
_NOISY = ('jax', 'orbax', 'tensorflow_datasets', 'grain', 'etils')


def _ours(path: str) -> bool:
  path = os.path.abspath(path)
  return path.startswith(_ROOT + os.sep) and 'site-packages' not in path


class _ProjectOrWarning(logging.Filter):
  """Passes WARNING and above, and anything logged by this project."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _ours(record.pathname)


def quiet_libraries() -> bool:
  """Applies the policy above; returns whether it did (default verbosity)."""
  if flags.FLAGS['verbosity'].present:
    return False
  for name in _NOISY:
    logging.getLogger(name).setLevel(logging.WARNING)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _ProjectOrWarning) for f in handler.filters):
    handler.addFilter(_ProjectOrWarning())
  return True
