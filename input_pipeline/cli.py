"""`main.py`'s error lines: bad flags and bad input as one `error:` line.

ml_collections parses `--config=FILE[:variant]` and every `--config.a.b=v`
override while absl parses flags, so a misspelt key or an unknown variant
surfaces as a chained traceback from inside the flag parser. `parse_flags`
(given to `app.run` as its `flags_parser`) turns any flag error into one
line: for an unknown key, with the closest keys of the config (difflib over
its flattened dotted keys); for a failing `get_config(arg)`, with the
file's variants. `run_task` does the same for the job's own bad input
(`UserInputError`) and a diverged run (`FloatingPointError`), and
`check_process_count` for a task that runs in one process started in
several.
"""

import ast
import difflib
import importlib.util
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags

from input_pipeline.errors import UserInputError

# Exit status: bad input or flags (as absl's usage errors), a diverged run.
EXIT_INPUT = 2
EXIT_DIVERGED = 3


# XLA flags main.py adds unless XLA_FLAGS already sets them (before JAX
# starts a backend: XLA reads the variable then). Triton GEMM fusions off:
# with them, XLA of jax 0.11.2 aborted on an H100 compiling the BN
# calibration of the quality metrics' random network in
# configs/study.py:gpu (triton_tiling_propagation.cc: "Check failed:
# subdim_size_accumulator == dim_size (64 vs. 16)"; the process dies, no
# Python error). Without them the same study cell ran to the end; its
# first GAN took 226 s (259 s with them, until the abort; one run each) and
# its second, compiled already, 25.4 s (24.7 s) (benchmarks/device_check.sh,
# SECTIONS=study, 2026-11-27). Matmuls go to cuBLAS instead. Only main.py
# sets them: the benchmarks measure XLA's own defaults.
XLA_DEFAULTS = ('--xla_gpu_enable_triton_gemm=false',)
# Added where XLA_FLAGS simulates several CPU devices: their collectives
# run as threads that meet at a rendezvous, and XLA ends the process when
# one thread waits there 60 s (20 s, then a 40 s termination timeout),
# which a busy machine caused once in a study's quality step. Measured
# with a 70 s delay before an all-reduce on 2 CPU devices (jaxlib 0.10.2):
# the process aborted at 60 s by default and finished with this flag.
XLA_CPU_DEVICES_DEFAULTS = (
    '--xla_cpu_collective_call_terminate_timeout_seconds=600',)


def xla_flags_with_defaults(current: str) -> str:
  """`current` (an XLA_FLAGS value) plus each of XLA_DEFAULTS (and, with
  several simulated CPU devices, XLA_CPU_DEVICES_DEFAULTS) whose flag it
  does not name; the user's own setting of a flag wins. A value that is
  not flags (XLA reads it as the name of a file of flags) is left alone."""
  if current.strip() and not current.strip().startswith('-'):
    return current
  given = dict((f.split('=', 1) + [''])[:2] for f in current.split())
  defaults = XLA_DEFAULTS
  count = given.get('--xla_force_host_platform_device_count', '')
  if count.isdigit() and int(count) > 1:
    defaults += XLA_CPU_DEVICES_DEFAULTS
  extra = [f for f in defaults if f.split('=', 1)[0] not in given]
  return ' '.join([current.strip(), *extra]).strip()


# Tasks that run over several processes (--distributed): each process feeds
# its own devices. The others run in one process (a study's cells spread
# over machines as shards).
MULTI_PROCESS_TASKS = ('pggan', 'resnet')


def check_process_count(task: str, process_count: int) -> None:
  """Fails in one line when `task` runs in one process and there are more."""
  if process_count > 1 and task not in MULTI_PROCESS_TASKS:
    hint = ('; a study runs over several machines as a job array of '
            'shards, --config.shard=i/N (README, "The study")'
            if task == 'study' else '')
    fail(f'config.task={task} runs in one process, not over '
         f'{process_count} processes (only '
         f'{" and ".join(MULTI_PROCESS_TASKS)} training do){hint}')


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
  """Prints `error: message` as a single line on stderr and exits."""
  line = ' '.join(str(message).split())
  print(f'error: {line}', file=sys.stderr)
  sys.exit(code)


def flat_keys(tree: Any, prefix: str = '') -> list[str]:
  """Dotted keys of a nested dict / ConfigDict, inner nodes included."""
  if hasattr(tree, 'to_dict'):
    tree = tree.to_dict()
  out = []
  for key, value in tree.items():
    path = f'{prefix}{key}'
    out.append(path)
    if isinstance(value, dict) or hasattr(value, 'to_dict'):
      out += flat_keys(value, f'{path}.')
  return out


def config_variants(path: str) -> list[str]:
  """A config file's variants: its `VARIANTS` tuple if it has one, else
  the strings its `arg` is compared with (`if arg == 'tiny':`)."""
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, ValueError):
    return []
  found = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
        and any(getattr(t, 'id', '') == 'VARIANTS' for t in node.targets)):
      return [c.value for c in node.value.elts if isinstance(c, ast.Constant)]
    if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
        and node.left.id in ('arg', 'variant')):
      for comp in node.comparators:
        elts = comp.elts if isinstance(comp, (ast.Tuple, ast.List)) else [
            comp]
        found += [c.value for c in elts if isinstance(c, ast.Constant)
                  and isinstance(c.value, str) and c.value]
  return list(dict.fromkeys(found))


def _config_spec(argv: Sequence[str]) -> str | None:
  """The value of --config in argv (`path[:variant]`), if any."""
  for k, a in enumerate(argv[1:], start=1):
    if a == '--':
      break
    for name in ('--config', '-config'):
      if a.startswith(name + '='):
        return a.split('=', 1)[1]
      if a == name and k + 1 < len(argv):
        return argv[k + 1]
  return None


def _overrides(argv: Sequence[str]) -> list[str]:
  """Dotted keys given as --config.KEY[=V] / --noconfig.KEY."""
  keys = []
  for a in argv[1:]:
    if a == '--':
      break
    for prefix in ('--config.', '-config.', '--noconfig.', '-noconfig.'):
      if a.startswith(prefix):
        keys.append(a[len(prefix):].split('=', 1)[0])
  return keys


def _load_config(spec: str):
  """(config, None) or (None, one-line reason) for `path[:variant]`."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    return None, f'--config={spec}: no such config file {path!r}'
  try:
    module_spec = importlib.util.spec_from_file_location('_cli_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except
    variants = config_variants(path)
    if arg and arg not in variants:
      listed = ', '.join(f':{v}' for v in variants) or 'none'
      return None, (f'--config={spec}: unknown variant {arg!r} of {path} '
                    f'(variants: {listed})')
    return None, f'--config={spec}: {type(e).__name__}: {e}'
  return config, None


def explain_flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line saying what is wrong with the command line."""
  spec = _config_spec(argv)
  if spec:
    config, reason = _load_config(spec)
    if reason:
      return reason
    keys = flat_keys(config)
    for key in _overrides(argv):
      if key in keys:
        continue
      leaf = key.rsplit('.', 1)[-1]
      close = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
      close += [k for k in keys if k.rsplit('.', 1)[-1] == leaf
                and k not in close]
      hint = (f'; did you mean {" or ".join(f"--config.{k}" for k in close)}'
              '?' if close else '')
      return f'--config.{key}: no such key in the config {spec}{hint}'
  text = str(error)
  if 'Traceback' in text:  # a chained error: its last line says what
    text = [line for line in text.splitlines() if line.strip()][-1]
  return text or type(error).__name__


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`app.run(main, flags_parser=cli.parse_flags)`: a bad flag is one line.

  `--help` and friends still print and exit as usual (SystemExit passes).
  """
  try:
    args = flags.FLAGS(list(argv))
    if 'config' in flags.FLAGS:
      # A config file that failed to load raises on first use: use it here.
      getattr(flags.FLAGS.config, 'task', None)
    return args
  except Exception as e:  # pylint: disable=broad-except
    fail(explain_flag_error(e, argv))


def run_task(fn: Callable[..., Any], config, workdir: str | None) -> Any:
  """fn(config, workdir); bad input and diverged runs end as one line."""
  try:
    return fn(config, workdir)
  except UserInputError as e:
    # Bad input: one clear line naming the file or config key.
    fail(str(e), EXIT_INPUT)
  except FloatingPointError as e:
    # A non-finite loss: the message names the step and last checkpoint.
    fail(str(e), EXIT_DIVERGED)
