"""The study's resumable steps: each runs once per configuration hash.

A step (a GAN, the sampling, the quality metrics, an arm) writes a marker
`done/<step>.json` atomically when it finishes, holding the hash of
everything it depends on (`config_hash`); its working directory holds the
same hash in HASH_FILE while it runs. A rerun skips a step whose marker
holds its hash, resumes a partial step of the same hash, and stops (or,
with recompute, redoes the step) when the hash changed.
"""

import fnmatch
import hashlib
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from input_pipeline import files
from input_pipeline.errors import UserInputError


# A running step's working directory holds its hash in this file.
HASH_FILE = '.study_config_hash'
# Bump when a change to the study's code changes what a finished step would
# produce: every step's hash includes it, so old results are not reused.
STUDY_CODE_VERSION = 1
# Keys that do not change any step's result (besides workdir.IGNORED_KEYS):
# where data comes from is named by the data's content fingerprint.
PATH_KEYS = ('data.dir', 'data.labels_csv', 'data.patient_labels_csv')
# A GAN step's keys that are only logged (progress grids, tick metrics): its
# own `ignore=`, not every step's, since other blocks have keys of these
# names that do change results (config.quality.metrics).
GAN_LOG_KEYS = ('grid_size', 'metrics.*', 'sched.tick_kimg',
                'sched.tick_kimg_dict')
# What a GAN's or classifier's own resume check ignores inside a study:
# the step hash has already pinned what these paths hold (the data's
# content, the samples' place in the workdir), so a partial sub-run resumes
# after the data or the whole workdir moved.
RESUME_IGNORED_KEYS = (*PATH_KEYS, 'data.synthetic_dir')


class StepsMissing(UserInputError):
  """A merge found steps of the study not finished (or stale)."""


def write_json(path: str, obj: Any) -> None:
  """Atomic: a marker either exists complete or not at all."""
  files.write_json(path, obj, default=json_default)


def json_default(x):
  """json.dumps' default: numpy and JAX values as Python ones."""
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if hasattr(x, 'item'):  # jax arrays
    return np.asarray(x).tolist()
  return str(x)


def read_json(path: str) -> Any:
  """The JSON value in `path`."""
  with open(path) as f:
    return json.load(f)


def config_hash(*parts: Any, ignore: tuple[str, ...] = (),
                backend: str | None = None) -> str:
  """Short sha256 of JSON-able parts (ConfigDicts flattened to dotted keys).

  Keys that do not change results (workdir.IGNORED_KEYS, PATH_KEYS, and
  this step's `ignore` patterns) are left out, so moving the data or
  the caches, or logging more often, keeps finished steps; the code version
  and the JAX backend (`backend`, default this process's: a step resumed
  on another backend would compute other numbers) are included.
  """
  from input_pipeline import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  patterns = (*workdir_lib.IGNORED_KEYS, *PATH_KEYS, *ignore)
  norm = [STUDY_CODE_VERSION, backend or this_backend()]
  for p in parts:
    if isinstance(p, ml_collections.ConfigDict):
      p = {k: v for k, v in workdir_lib.flatten(p).items()
           if not any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
    norm.append(p)
  blob = json.dumps(norm, sort_keys=True, default=json_default)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def this_backend() -> str:
  """The JAX backend this process computes on ('cpu', 'gpu', 'tpu')."""
  return jax.default_backend()


def hash_backends() -> tuple[str, ...]:
  """The backends a merge checks finished steps against: this process's
  first, then the others JAX names ('cpu', 'gpu', 'tpu')."""
  here = this_backend()
  return (here, *[b for b in ('cpu', 'gpu', 'tpu') if b != here])


class Progress:
  """tqdm over the study's steps; logs 'skipping finished cell ...'."""

  def __init__(self, total: int):
    self.bar = tqdm.tqdm(total=total, desc='study', unit='step',
                         dynamic_ncols=True)

  def skip(self, what: str):
    logging.info('skipping finished cell %s', what)
    self.bar.update(1)

  def start(self, what: str):
    logging.info('running %s', what)
    self.bar.set_postfix_str(what)

  def done(self, what: str, seconds: float):
    logging.info('finished %s in %.1f s', what, seconds)
    self.bar.update(1)


class Steps:
  """Runs study steps once, keyed by a hash of what they depend on."""

  def __init__(self, progress: Progress, recompute: bool,
               check_only: bool = False):
    self.progress = progress
    self.recompute = recompute
    # Merge mode: run nothing, collect the steps that are missing or stale.
    self.check_only = check_only
    self.missing = []

  def _mismatch(self, what: str, where: str, old: str | None, new: str):
    if not self.recompute:
      raise UserInputError(
          f'{where}: {what} was run with another configuration (hash '
          f'{old}, now {new}: a setting, or this code, changed what the step '
          'computes); use a new --workdir, restore the old '
          'settings, or set --config.on_config_change=recompute to redo the '
          'steps whose configuration changed')
    logging.warning('%s: configuration changed (%s -> %s); recomputing %s',
                    where, old, new, what)

  def _guard_dir(self, path: str, h: str, what: str,
                 also: tuple[str, ...] = ()) -> None:
    """A step's working dir belongs to one configuration hash."""
    hash_path = os.path.join(path, HASH_FILE)
    if os.path.isdir(path) and os.listdir(path):
      old = (open(hash_path).read().strip() if os.path.isfile(hash_path)
             else None)
      if old in (h, *also):
        return  # a partial run of the same step: it resumes
      self._mismatch(what, path, old, h)
      shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    files.write_text(hash_path, h)

  def run(self, marker: str, what: str, h: str, fn, *args,
          dirs: tuple[str, ...] = (), also: tuple[str, ...] = ()) -> dict:
    """fn(*args) unless `marker` holds hash h; the marker keeps the time.

    `also`: hashes an earlier version of this code gave the same step.
    """
    if os.path.exists(marker):
      old = read_json(marker)
      if old.get('config_hash') in (h, *also):
        self.progress.skip(what)
        return old
      if self.check_only:
        self.missing.append(f'{what} (finished with another configuration)')
        return {}
      self._mismatch(what, marker, old.get('config_hash'), h)
      os.remove(marker)
    if self.check_only:
      self.missing.append(what)
      return {}
    for d in dirs:
      self._guard_dir(d, h, what, also)
    self.progress.start(what)
    t0 = time.time()
    out = fn(*args) or {}
    out['seconds'] = time.time() - t0
    out['config_hash'] = h
    out['backend'] = this_backend()  # for the record
    write_json(marker, out)
    self.progress.done(what, out['seconds'])
    return out
