"""Workdir safety: one run at a time, and resume only what the same config made.

    with workdir.claim(W, config, job='resnet'):
      ...  # train, resume from W/checkpoints, write W/results.json

`claim` takes an exclusive lock on `W/.lock` (a second run pointed at W
refuses at once, naming the holder's pid, host and start time), compares
`config` with the `W/config.json` that made what W already holds (refusing,
with the keys that differ, when the outputs are there and the configs
differ) and writes `config` to `W/config.json`.

The lock is `fcntl.flock`: the operating system releases it when the
holding process exits or is killed (SIGKILL, out of memory), so a killed
run never leaves W stuck (its `.lock` file stays, unlocked, and is reused).
The file holds the holder's pid, host, start time, job and command for the
refusal message; a run that ends removes it.

Keys that do not change what a run computes are not compared
(`IGNORED_KEYS`, fnmatch patterns over dotted keys): how often it logs,
evaluates or checkpoints, how many checkpoints it keeps, grain read
workers, where the TFDS and XLA caches live, background compilation.
A job passes more with `ignore=`, and with `absent=` the value that a key
added since an older config.json was written stands for there (the value
that reproduces the older runs; ANY: every value does).

`stop_on_signals` turns SIGINT (Ctrl-C) and SIGTERM (a scheduler's
preemption notice) into a request that a training loop reads between
steps: it saves a checkpoint, waits for it, and leaves through
`StopRequest.exit`, which prints one line naming the checkpoint and exits
with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell
reports a process that the signal ended. Nothing is raised inside JAX or
orbax, and no thread is left writing when the interpreter shuts down.
"""

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterator, Mapping, NoReturn, Sequence

from absl import logging

from input_pipeline import files
from input_pipeline.errors import UserInputError

LOCK_FILE = '.lock'
CONFIG_FILE = 'config.json'
# Dotted keys (fnmatch patterns) whose value does not change results.
IGNORED_KEYS = (
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
    'checkpoint_kimg', 'keep_checkpoints', 'data.num_workers',
    'data.tfds_dir', 'jax_cache_dir', 'jax_cache_min_compile_secs',
    'compile_ahead')
# `absent=` value meaning: any value of the key now reproduces what a run
# written before the key existed computed.
ANY = object()
# What a run leaves in its workdir that a rerun would resume or return.
DEFAULT_OUTPUTS = ('checkpoints', 'results.json')


class WorkdirBusyError(UserInputError):
  """Another process holds the workdir's lock."""


class ConfigMismatchError(UserInputError):
  """The workdir holds outputs of another config."""


def _primary() -> bool:
  """Process 0 writes and locks (multi-host runs share one workdir)."""
  jax = sys.modules.get('jax')
  return jax is None or jax.process_index() == 0


def _holder_text(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 1 << 16, 0).decode() or '{}')
  except (OSError, ValueError):
    info = {}
  if not info:
    return 'another process (it has not written its details yet)'
  same = info.get('pid') == os.getpid() and (
      info.get('host') == socket.gethostname())
  who = 'this process' if same else (
      f'pid {info.get("pid")} on {info.get("host")}')
  return (f'{who}, {info.get("job") or "a run"} started '
          f'{info.get("started")}: {info.get("command", "")}').strip()


@contextlib.contextmanager
def lock(workdir: str, job: str = '', *, shared: bool = False,
         name: str = LOCK_FILE) -> Iterator[None]:
  """Holds `workdir/.lock` exclusively; WorkdirBusyError if already held.

  Does not wait: two runs on one workdir are a mistake to report, not a
  queue. Where the filesystem has no locks (some network mounts), warns
  and goes on unlocked. `shared=True` takes a shared lock instead, which
  others may share but an exclusive one refuses (the study's shards hold
  one each; a whole-study run needs it exclusively). `name`: another lock
  file in `workdir`.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  fd = _acquire(path, workdir, shared)
  if fd is None:
    yield
    return
  try:
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'job': job,
            'command': ' '.join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    yield
  finally:
    # Removed while still locked, so nobody can lock this file afterwards
    # (one that had it open sees it gone and opens the new one). A shared
    # holder leaves it: others may still hold it.
    if not shared:
      with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def _acquire(path: str, workdir: str, shared: bool = False) -> int | None:
  """A locked descriptor of `path`; None where the filesystem cannot lock."""
  mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder_text(fd)
      os.close(fd)
      raise WorkdirBusyError(
          f'{os.path.abspath(workdir)} is in use by {holder}; wait for it to '
          'finish (or stop it), or use another --workdir') from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      logging.warning('%s: the filesystem has no file locks (%s); running '
                      'without one', path, e)
      return None
    if _same_file(fd, path):
      return fd
    os.close(fd)  # locked a file its holder removed on release: again


def _same_file(fd: int, path: str) -> bool:
  try:
    a, b = os.fstat(fd), os.stat(path)
  except FileNotFoundError:
    return False
  return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; a ConfigDict as its JSON form."""
  if not prefix:  # as json.dump wrote it: tuples are lists, ...
    tree = tree.to_dict() if hasattr(tree, 'to_dict') else tree
    tree = json.loads(json.dumps(tree, default=str))
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def differences(old: Any, new: Any, ignore: Sequence[str] = (),
                absent: Mapping[str, Any] | None = None
               ) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) for every dotted key that differs.

  A key present on one side only differs too (its missing value is
  '<absent>'), unless `old` lacks a key of `absent` whose value there is
  the new one's (or ANY). Keys matching IGNORED_KEYS or `ignore` are
  skipped.
  """
  a, b = flatten(old), flatten(new)
  patterns = (*IGNORED_KEYS, *ignore)
  absent = absent or {}
  out = []
  for key in sorted(set(a) | set(b)):
    if any(fnmatch.fnmatchcase(key, p) for p in patterns):
      continue
    if key not in a and key in absent and (
        absent[key] is ANY or absent[key] == b.get(key)):
      continue
    va, vb = a.get(key, '<absent>'), b.get(key, '<absent>')
    if va != vb:
      out.append((key, va, vb))
  return out


def _outputs_present(workdir: str, outputs: Sequence[str]) -> list[str]:
  present = []
  for name in outputs:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
      present.append(name)
  return present


def check_config(workdir: str, config: Any, *,
                 outputs: Sequence[str] = DEFAULT_OUTPUTS,
                 ignore: Sequence[str] = (),
                 absent: Mapping[str, Any] | None = None) -> None:
  """Refuses when `workdir` holds `outputs` made by another config.

  With none of `outputs` present there is nothing to resume: any config
  may (re)start there. With outputs but no config.json, which config made
  them is unknown: refused too.
  """
  present = _outputs_present(workdir, outputs)
  if not present:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ConfigMismatchError(
        f'{workdir} holds {", ".join(present)} but no {CONFIG_FILE}: the '
        'config that made them is unknown; use a new --workdir, or remove '
        'them to start afresh')
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigMismatchError(f'{path}: cannot read it ({e})') from None
  diffs = differences(old, config, ignore, absent)
  if diffs:
    shown = '; '.join(f'{k}: {a!r} there, {b!r} now'
                      for k, a, b in diffs[:6])
    more = f'; and {len(diffs) - 6} more' if len(diffs) > 6 else ''
    raise ConfigMismatchError(
        f'{workdir} holds {", ".join(present)} made by another config '
        f'({len(diffs)} key(s) differ from {path}: {shown}{more}); rerun '
        'with the same values to resume, or use a new --workdir')


def record_config(workdir: str, config: Any) -> None:
  """Writes `config` (a ConfigDict or dict) to workdir/config.json."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  files.write_json(os.path.join(workdir, CONFIG_FILE), config, default=str)


class Claim:
  """A locked workdir; `record(config)` checks and records its config."""

  def __init__(self, workdir: str, outputs: Sequence[str],
               ignore: Sequence[str], absent: Mapping[str, Any] | None):
    self.workdir = workdir
    self.outputs = tuple(outputs)
    self.ignore = tuple(ignore)
    self.absent = absent

  def record(self, config: Any) -> None:
    """check_config, then (process 0) record_config."""
    check_config(self.workdir, config, outputs=self.outputs,
                 ignore=self.ignore, absent=self.absent)
    if _primary():
      record_config(self.workdir, config)


@contextlib.contextmanager
def claim(workdir: str, config: Any = None, *, job: str,
          outputs: Sequence[str] = DEFAULT_OUTPUTS,
          ignore: Sequence[str] = (),
          absent: Mapping[str, Any] | None = None) -> Iterator[Claim]:
  """Lock `workdir` for this run and, given `config`, check and record it.

  Yields a `Claim`; without `config`, call `claim.record(config)` once the
  config to record is known (e.g. completed from the data), before
  restoring or writing anything. Only process 0 locks and writes; every
  process checks. Raises WorkdirBusyError or ConfigMismatchError (both
  UserInputError: one `error:` line from main.py).
  """
  if not workdir:
    raise UserInputError(f'--workdir is required for config.task={job}')
  os.makedirs(workdir, exist_ok=True)
  held = lock(workdir, job) if _primary() else contextlib.nullcontext()
  with held:
    c = Claim(workdir, outputs, ignore, absent)
    if config is not None:
      c.record(config)
    yield c


class Interrupted(SystemExit):
  """A run stopped by SIGINT / SIGTERM after saving; exit status 128 + n."""


class StopRequest:
  """Set by SIGINT / SIGTERM inside `stop_on_signals`; true once asked."""

  def __init__(self):
    self.signum: int | None = None

  def __bool__(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self else ''

  def exit(self, message: str) -> NoReturn:
    """Prints `<SIGNAL>: message` on stderr; raises Interrupted(128 + n)."""
    print(f'{self.name}: {message}', file=sys.stderr, flush=True)
    raise Interrupted(128 + self.signum)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(what: str = 'training') -> Iterator[StopRequest]:
  """SIGINT and SIGTERM set the yielded request instead of stopping.

  The loop checks it between dispatches (or steps), saves a checkpoint and
  calls `request.exit(...)`. A second signal restores the previous handlers
  and delivers itself again: Ctrl-C twice stops at once, without saving.
  Outside the main thread (where Python cannot install handlers) the
  request stays false and signals act as before.
  """
  stop = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}

  def restore():
    for s, handler in previous.items():
      signal.signal(s, handler)

  def handler(signum, frame):
    del frame
    if stop:  # the second one: as if we had never caught them
      restore()
      signal.raise_signal(signum)
      return
    stop.signum = signum
    # os.write, not print: the handler may run inside another write to
    # stderr (the progress bar), which print would re-enter.
    os.write(2, (f'\n{stop.name}: stopping {what} after this step and '
                 'saving a checkpoint (send it again to stop at once, '
                 'without saving)\n').encode())

  for s in _STOP_SIGNALS:
    signal.signal(s, handler)
  try:
    yield stop
  finally:
    restore()
