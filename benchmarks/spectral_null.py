r"""How often the spectral test flags real images against real images.

  python benchmarks/spectral_null.py --name=head_ct --dir=DIR \
      [--resolution=64] [--repeats=3] [--permutations=200]

For every repeat (split seed 0, 1, ...) and fold of the study's stratified
k-fold split, and each class and both together, runs
pggan_jax.quality.spectral_test with the fold's real training images in
place of synthetic ones against its held-out test images, as the study's
quality step compares a GAN's samples. The fold's test images (a fifth)
and training images (the rest, less validation) are a stratified random
split of one population, so the images are exchangeable and the
permutation test is exact: a p-value at most 0.05 should come up about 5 %
of the time. This checks that on the real data (the comparisons overlap,
so their rate is only roughly binomial). Prints every comparison and the
share of p-values at most 0.05 and 0.01.

Measured on the shared 2-core CPU (2026-11-27; Head CT, 3 repeats x 5
folds x 3 sets = 45 comparisons each; 200 permutations; about 9 s a
resolution): excess p <= 0.05 in 2 of 45 (4.4 %) at 64 and at 128 px,
deficit in 2 and 5 (4.4 % and 11.1 %); medians 0.47-0.53 (README,
"Upsampling artifacts: the spectral test").
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
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('name', 'synthetic_head_ct', 'config.data.name')
flags.DEFINE_string('dir', '', 'config.data.dir')
flags.DEFINE_integer('resolution', 64, 'Image side (and storage size).')
flags.DEFINE_integer('repeats', 3, 'Split seeds 0 .. repeats - 1.')
flags.DEFINE_integer('permutations', 200, 'Random splits per test.')
FLAGS = flags.FLAGS


def main(_):
  data = data_config.get_data_config()
  data.name, data.dir = FLAGS.name, FLAGS.dir
  data.storage_size = FLAGS.resolution
  prep0 = dataset.prepare(data)
  names = list(prep0.class_names)
  rows = []
  print(f'{"repeat":>6} {"fold":>4} {"set":>10} {"n train":>7} '
        f'{"n held":>6} {"excess":>7} {"p":>6} {"deficit":>7} {"p":>6}')
  for repeat in range(FLAGS.repeats):
    prep = prep0 if repeat == 0 else prep0.with_split_seed(
        int(data.split_seed) + repeat)
    for fold in range(int(data.num_folds)):
      real = {role: pipeline.load_arrays(
          prep, data, role=role, resolution=FLAGS.resolution, fold=fold,
          class_filter=-1)[:2] for role in ('train', 'test')}
      for c, name in [*enumerate(names), (-1, 'all')]:
        pick = lambda x, y: x if c < 0 else x[y == c]
        train, held = pick(*real['train']), pick(*real['test'])
        out = quality.spectral_test(held, train,
                                    num_permutations=FLAGS.permutations,
                                    seed=100 * repeat + fold)
        rows.append(out)
        print(f'{repeat:>6} {fold:>4} {name:>10} {len(train):>7} '
              f'{len(held):>6} {out["spectral_excess"]:>7.2f} '
              f'{out["spectral_excess_p"]:>6.3f} '
              f'{out["spectral_deficit"]:>7.2f} '
              f'{out["spectral_deficit_p"]:>6.3f}', flush=True)
  for key in ('spectral_excess_p', 'spectral_deficit_p'):
    p = np.array([r[key] for r in rows])
    print(f'{key}: {np.mean(p <= 0.05):.1%} of {len(p)} at most 0.05, '
          f'{np.mean(p <= 0.01):.1%} at most 0.01, median {np.median(p):.2f}')


if __name__ == '__main__':
  app.run(main)
