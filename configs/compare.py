r"""Classifier runs side by side: metrics, differences, config differences.

  python main.py --config=configs/compare.py --config.runs=A,B
    A and B are classifier workdirs (configs/resnet.py). Prints val/test
    metrics of each with B-A, then every config key (dotted) and synthetic
    provenance field (folder, ratio, GAN workdir/checkpoint) that differs.
    Under 1 s on the shared 2-core CPU (it only reads JSON).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'configs/compare.py has no variants, not {arg!r}')
  config = ml_collections.ConfigDict()
  config.task = 'compare'
  # Comma-separated classifier workdirs; the first is the reference.
  config.runs = ''
  return config
