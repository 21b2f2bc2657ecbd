"""Entry point: `python main.py --config=configs/<job>.py[:variant] --workdir=W`.

Intentionally thin (as in the Flax examples): parse flags, log the devices,
dispatch on `config.task`. All logic lives in importable libraries.
"""

import importlib
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from input_pipeline import cli
from input_pipeline import logs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file (path.py:variant).',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, outputs.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (multi-host runs).')
# Unset: JAX detects them from the cluster (SLURM, Cloud TPU, ...).
flags.DEFINE_string('coordinator_address', None,
                    'With --distributed: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'With --distributed: processes.')
flags.DEFINE_integer('process_id', None, 'With --distributed: this process.')
_DIST = ('coordinator_address', 'num_processes', 'process_id')
flags.mark_flags_as_required(['config'])

# config.task -> 'module:function'; each function takes (config, workdir).
_TASKS = {
    'data': 'input_pipeline.report:prepare_and_report',
    'pggan': 'pggan_jax.train:train_and_evaluate',
    'sample': 'pggan_jax.sample:sample_from_config',
    'resnet': 'resnet_jax.train:run',
    'study': 'resnet_jax.study:run_study',
    'gan_metrics': 'resnet_jax.gan_metrics:run',
    'predict': 'resnet_jax.predict:predict_from_config',
    'compare': 'resnet_jax.compare:compare_from_config',
    'vtt': 'resnet_jax.vtt:make_from_config',
    'vtt_score': 'resnet_jax.vtt:score_from_config',
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logs.quiet_libraries()  # library INFO off unless --verbosity is given
  # Before any backend starts (see cli.XLA_DEFAULTS).
  os.environ['XLA_FLAGS'] = cli.xla_flags_with_defaults(
      os.environ.get('XLA_FLAGS', ''))
  import jax  # pylint: disable=g-import-not-at-top

  given = {k: FLAGS[k].value for k in _DIST if FLAGS[k].value is not None}
  if given and not FLAGS.distributed:
    cli.fail(f'--{next(iter(given))} needs --distributed')
  if FLAGS.distributed:
    jax.distributed.initialize(**given)
  config = FLAGS.config
  task = config.get('task')
  if task not in _TASKS:
    cli.fail(f'config.task={task!r} is not one of {sorted(_TASKS)}')
  cli.check_process_count(task, jax.process_count())
  logging.info('JAX process %d/%d, local devices: %s, XLA_FLAGS=%r',
               jax.process_index(), jax.process_count(), jax.local_devices(),
               os.environ['XLA_FLAGS'])
  module_name, fn_name = _TASKS[task].split(':')
  fn = getattr(importlib.import_module(module_name), fn_name)
  # Bad input (a file, a label, a config value) or a diverged run: one
  # `error:` line naming the file, key or step, and a non-zero exit.
  cli.run_task(fn, config, FLAGS.workdir)


if __name__ == '__main__':
  # A misspelt --config.key or an unknown :variant is one line too.
  app.run(main, flags_parser=cli.parse_flags)
