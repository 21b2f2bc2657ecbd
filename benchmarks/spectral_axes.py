r"""Power at the highest vertical and horizontal frequency, real vs synthetic.

  python benchmarks/spectral_axes.py --name=head_ct --dir=DIR \
      [--resolution=128] [--synthetic_dir=S]

The spectral test (pggan_jax/quality.py) flags the frequency where
synthetic images carry the most power relative to real ones. When that is
the Nyquist row (fy = -n/2: intensity alternating from row to row), this
tells apart a generator that puts power there from real images that lack
it: for the real images of fold 0 (training and test split, as the study
prepares them at --resolution) and, with --synthetic_dir, the images
below it (read as the quality CLI reads its synthetic_dir), the mean
power spectrum's average along the Nyquist row (fy = -n/2, all fx) and
the Nyquist column (fx = -n/2, all fy), and their ratio.

Measured on the shared 2-core CPU (2026-11-27; Head CT at 128 px; the
synthetic set the 400 samples of "128² on the CPU"'s bilinear run):
real training images row / column 27.1 / 42.0 (ratio 0.65), real test
images 28.1 / 45.5 (0.62), synthetic 45.6 / 44.9 (1.02). The real images
alone at 64 px: 0.74 / 0.79 (training / test); at 32 px: 0.68 / 0.62.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np

from input_pipeline import config as data_config
from input_pipeline import dataset
from input_pipeline import pipeline
from pggan_jax import quality
from resnet_jax import gan_metrics
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('name', 'synthetic_head_ct', 'config.data.name')
flags.DEFINE_string('dir', '', 'config.data.dir')
flags.DEFINE_integer('resolution', 128, 'Image side (and storage size).')
flags.DEFINE_string('synthetic_dir', '', 'A folder of synthetic images '
                    '(DIR/<class>/ or flat), as configs/gan_metrics.py '
                    'reads it, at --resolution.')
FLAGS = flags.FLAGS


def _axes(images: np.ndarray) -> tuple[float, float]:
  p = quality.power_spectra(images).mean(axis=0)  # fftshift: [0] = -n/2
  return float(p[0, :].mean()), float(p[:, 0].mean())


def main(_):
  data = data_config.get_data_config()
  data.name, data.dir = FLAGS.name, FLAGS.dir
  data.storage_size = FLAGS.resolution
  prep = dataset.prepare(data)
  sets = {}
  for role in ('train', 'test'):
    x, _, _ = pipeline.load_arrays(prep, data, role=role,
                                   resolution=FLAGS.resolution)
    sets[f'real {role} (fold {data.fold})'] = np.asarray(x, np.float32)
  if FLAGS.synthetic_dir:  # read as the quality CLI reads synthetic_dir
    x = gan_metrics.load_image_folder(FLAGS.synthetic_dir, FLAGS.resolution,
                                      key='synthetic_dir', allow_flat=True)[0]
    sets[f'synthetic ({FLAGS.synthetic_dir})'] = x
  print(f'{"set":>40} {"n":>5} {"row":>8} {"column":>8} {"ratio":>6}')
  for name, x in sets.items():
    row, col = _axes(x)
    print(f'{name:>40} {len(x):>5} {row:8.1f} {col:8.1f} {row / col:6.2f}')


if __name__ == '__main__':
  app.run(main)
