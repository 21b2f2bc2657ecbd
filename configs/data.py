"""Validate and prepare a dataset; write a report.

  python main.py --config=configs/data.py --workdir=/tmp/data
  python main.py --config=configs/data.py --config.data.name=head_ct \\
      --config.data.dir=../shared/data/head_ct --workdir=/tmp/data_head_ct

Writes W/data_report.md (counts per class, fold and role; sizes and modes
before preprocessing; duplicate groups), W/examples.png (stored images, one
row per class, the class on the left and each image's id under it) and
W/splits.json. The first run preprocesses into the TFDS
cache (data.tfds_dir, ~5 s for head_ct on 2 CPU cores); later runs reuse it.
Bad input fails with one `error: ...` line naming the file or key (exit 2).
Variant `:tiny` (8 + 8 synthetic phantoms at 64 px) runs in seconds; tests
use it.
"""

import ml_collections

from input_pipeline.config import get_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'data'
  # One seed for everything random in this job (splits use data.split_seed).
  config.seed = 0
  config.data = get_data_config()
  if arg == 'tiny':
    config.data.synthetic_per_class = 8
    config.data.synthetic_size = 64
    config.data.storage_size = 64
    config.data.resolution = 32
    config.data.num_folds = 2
    config.data.val_fraction = 0.25
  elif arg:
    raise ValueError(f'Unknown variant {arg!r}; use configs/data.py[:tiny]')
  return config
