"""The study's configuration: sub-run configs, their checks, key names.

The study has one shared `data` block and a block per sub-run (`gan`,
`classifier`, `quality`). `sub_config` builds a sub-run's config from its
block and the shared data (plus the cell's keys); `check_config` and
`check_sub_configs` check the study's keys and every sub-run's before
anything trains; `study_keys` / `keys_of` rename a sub-run's config keys in
its error messages to the study's ('config.dtype' -> 'config.gan.dtype').
"""

import contextlib
import re
from typing import Any

import ml_collections

from input_pipeline.errors import UserInputError
from resnet_jax import report


# config.data keys a sub-run keeps from its own config (they depend on the
# model); all other keys come from the study's shared data block, and the
# per-cell keys are set by the study.
CONSUMER_DATA_KEYS = ('resolution', 'augment', 'synthetic_ratio')
CELL_DATA_KEYS = ('fold', 'class_filter', 'synthetic_dir', 'split_seed')


def sub_config(block: ml_collections.ConfigDict,
               shared_data: ml_collections.ConfigDict,
               **fields: Any) -> ml_collections.ConfigDict:
  """A sub-run's config: `block` with the study's data block copied in.

  Keys of `shared_data` other than CONSUMER_DATA_KEYS/CELL_DATA_KEYS replace
  the block's own `data` keys; `fields` then set top-level keys, and keys
  named 'data.xxx' (written data__xxx) set the per-cell data keys.
  """
  sub = block.copy_and_resolve_references()
  with sub.unlocked():
    for key in shared_data:
      if key in CONSUMER_DATA_KEYS or key in CELL_DATA_KEYS:
        continue
      value = shared_data[key]
      if isinstance(value, ml_collections.ConfigDict):
        value = value.copy_and_resolve_references()
      sub.data[key] = value
    for key, value in fields.items():
      if key.startswith('data__'):
        sub.data[key[len('data__'):]] = value
      else:
        sub[key] = value
  return sub


def study_keys(message: str, block: str) -> str:
  """A sub-run's error message with its config keys named as the study's.

  A GAN, classifier or quality run names its own keys ('config.dtype'); in
  the study those are 'config.<block>.dtype'. Data keys keep their name
  (the study copies config.data into the GAN's and the classifier's runs,
  and the quality step reads it directly), except those the GAN and the
  classifier keep for themselves (CONSUMER_DATA_KEYS). Paths, file names
  and command-line flags that contain 'config.' are left alone.
  """
  def rename(m: re.Match) -> str:
    key = m.group(1)
    parts = key.split('.')
    if parts[0] == 'data' and (block == 'quality' or len(parts) > 1 and
                               parts[1] not in CONSUMER_DATA_KEYS):
      return m.group(0)
    return f'config.{block}.{key}'
  return re.sub(r'(?<![\w./\\-])config\.(?!json\b)'
                r'([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)', rename, message)


@contextlib.contextmanager
def keys_of(block: str):
  """Re-raises a sub-run's UserInputError with study_keys(..., block)."""
  try:
    yield
  except UserInputError as e:
    raise type(e)(study_keys(str(e), block)) from e


def in_block(block: str, fn):
  """fn, whose UserInputErrors name the study's keys (study_keys)."""
  def wrapped(*args, **kwargs):
    with keys_of(block):
      return fn(*args, **kwargs)
  return wrapped


def check_sub_configs(config: ml_collections.ConfigDict,
                      arms: list[str]) -> None:
  """The GAN's, the quality metrics' and the classifier's own keys, before
  anything trains.

  Otherwise a bad value there (say config.gan.dtype) would stop the study
  only when the first GAN or arm starts, possibly hours in.
  """
  from pggan_jax import train as pggan_train  # pylint: disable=g-import-not-at-top
  from resnet_jax import gan_metrics  # pylint: disable=g-import-not-at-top
  from resnet_jax import train as resnet_train  # pylint: disable=g-import-not-at-top
  if any('gan' in a for a in arms):
    sub = sub_config(config.gan, config.data, seed=config.seed,
                     data__class_filter=-1)
    if config.gan_mode == 'conditional':
      set_conditional(sub)
    with keys_of('gan'):
      pggan_train.check_config(sub)
    if config.quality.enabled:
      with keys_of('quality'):
        gan_metrics.check_config(config.quality.metrics)
  with keys_of('classifier'):
    for arm in arms:
      resnet_train.check_config(sub_config(
          config.classifier, config.data, seed=config.seed, arm=arm))


def check_config(config: ml_collections.ConfigDict) -> list[str]:
  """The study's own keys (arms, modes, counts, shard); -> the arms."""
  arms = list(config.arms)
  bad = [a for a in arms if a not in report.ARMS]
  if bad or not arms:
    raise UserInputError(f'config.arms={arms} must be a non-empty subset '
                         f'of {list(report.ARMS)}')
  if config.gan_mode not in ('per_class', 'conditional'):
    raise UserInputError(f'config.gan_mode={config.gan_mode!r} must be '
                         "'per_class' or 'conditional'")
  if config.num_repeats < 1:
    raise UserInputError(
        f'config.num_repeats={config.num_repeats} must be >= 1')
  if config.num_synthetic_per_class < 1:
    raise UserInputError('config.num_synthetic_per_class must be >= 1')
  if config.synthetic_class_balance not in ('prevalence', 'equal'):
    raise UserInputError(
        f'config.synthetic_class_balance={config.synthetic_class_balance!r}'
        " must be 'prevalence' or 'equal'")
  if config.on_config_change not in ('error', 'recompute'):
    raise UserInputError(
        f'config.on_config_change={config.on_config_change!r} must be '
        "'error' or 'recompute'")
  fraction = config.report.gate_max_failed_fraction
  if not 0.0 <= fraction <= 1.0:
    raise UserInputError(
        f'config.report.gate_max_failed_fraction={fraction} must be a '
        'fraction in [0, 1] (0.25: at most a quarter of the per-class '
        'measurements may fail the quality gate on their own)')
  parse_shard(config.shard)
  return arms


def selected_folds(config, num_folds: int) -> list[int]:
  """config.folds, or every fold when it is empty; checked."""
  folds = list(config.folds) if config.folds else list(range(num_folds))
  bad = [f for f in folds if not 0 <= f < num_folds]
  if bad:
    raise UserInputError(f'config.folds={folds}: folds must lie in '
                         f'[0, {num_folds}) (config.data.num_folds)')
  return folds


def parse_shard(shard: str) -> tuple[int, int]:
  """'i/N' -> (i, N); '' -> (0, 1)."""
  if not shard:
    return 0, 1
  try:
    i, n = (int(x) for x in shard.split('/'))
  except ValueError:
    i, n = -1, 0
  if not 0 <= i < n:
    raise UserInputError(f'config.shard={shard!r} must be i/N with '
                         '0 <= i < N, e.g. 0/4')
  return i, n


def as_merge(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of config that merges (config.merge=True) every shard."""
  merged = config.copy_and_resolve_references()
  with merged.unlocked():
    merged.merge = True
    merged.shard = ''
  return merged


def set_conditional(sub: ml_collections.ConfigDict) -> None:
  """Switches a PGGAN config to its class-conditional variant."""
  for path in ('conditional', 'model.conditional'):
    node, *rest = path.split('.')
    parent = sub
    if rest:
      if node not in sub:
        continue
      parent, node = sub[node], rest[0]
    if node in parent:
      parent[node] = True
      return
  raise UserInputError("config.gan_mode='conditional' but config.gan has no "
                       "'conditional' switch")
