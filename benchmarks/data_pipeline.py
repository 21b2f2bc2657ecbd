"""Throughput of the full training input pipeline, with augmentation.

  python benchmarks/data_pipeline.py [--name=head_ct --dir=DIR]
      [--workers=0,2] [--resolutions=128,256] [--seconds=5]

Prepares the dataset (cached), then times `pipeline.create_iterator` batches
(read, box-filter downsample, flip + affine + brightness/contrast, batch)
after a warm-up, and prints images per second per configuration; for
in-process runs (workers=0) also images per CPU-second, which is what one
quiet core delivers (wall rates suffer when the machine is shared).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from input_pipeline import config as data_config_lib
from input_pipeline import dataset
from input_pipeline import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

_NAME = flags.DEFINE_string('name', 'synthetic_head_ct', 'config.data.name')
_DIR = flags.DEFINE_string('dir', '', 'config.data.dir')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'grain worker counts')
_RES = flags.DEFINE_list('resolutions', ['128', '256'], 'resolutions')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'batch size')
_SECONDS = flags.DEFINE_float('seconds', 5.0, 'timed seconds per setting')


def _rate(it, batch_size: int, seconds: float) -> tuple[float, float]:
  """(images per wall second, images per CPU second of this process)."""
  for _ in range(3):  # warm-up: worker start, first reads
    next(it)
  n, t0, c0 = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += batch_size
  return (n / (time.perf_counter() - t0), n / (time.process_time() - c0))


def main(argv):
  del argv
  data = data_config_lib.get_data_config()
  data.name = _NAME.value
  data.dir = _DIR.value
  data.augment.enabled = True
  prepared = dataset.prepare(data)
  print(f'{prepared.name}: {len(prepared.ids)} images stored at '
        f'{prepared.storage_size}px; train split of fold 0: '
        f'{len(prepared.indices(0, "train"))}; batch {_BATCH.value}')
  for res in map(int, _RES.value):
    for workers in map(int, _WORKERS.value):
      it = pipeline.create_iterator(
          prepared, data, resolution=res, batch_size=_BATCH.value, seed=0,
          num_workers=workers)
      rate, cpu_rate = _rate(it, _BATCH.value, _SECONDS.value)
      # With workers the work happens in other processes: CPU rate is n/a.
      cpu = f'{cpu_rate:8.0f} img/CPU-s' if workers == 0 else ''
      print(f'resolution {res:4d}  workers {workers}  {rate:8.0f} img/s  '
            f'{cpu}', flush=True)
      del it


if __name__ == '__main__':
  app.run(main)
