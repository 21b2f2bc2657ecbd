"""Synthetic-image quality metrics (resnet_jax/gan_metrics.py).

  python main.py --config=configs/gan_metrics.py --workdir=/tmp/gan_metrics \\
      --config.real_dir=R --config.synthetic_dir=S
    R and S in the image_folder layout (one subfolder per class; S may hold
    some of R's classes, or be a flat folder of unlabelled PNGs, e.g. the
    sample CLI's output). The held-out real images (compared with S) are
    --config.real_heldout_dir's; without it, where S's manifest.json (the
    sampler's) records the images its GAN trained on and R is that GAN's
    image-folder dataset, those are R's real training images (feature
    network, TRTR, nearest-neighbour reference) and the rest of R is held
    out; otherwise R is split 50/50 (stratified, seeded), with a warning
    that a GAN trained on R would have seen part of the held-out half.
    (Near-duplicates of training images are not removed from R's held-out
    images here; the study's metrics use its leak-free folds.) When S holds some of R's classes
    (one class's GAN), only those classes' real images are used, as in the
    study's per-class metrics (one class: random-network features, no
    TRTR). Writes W/gan_metrics.json and
    W/nearest_neighbours.png. Measured on the shared 2-core CPU with
    R = Head CT half A (100 images: 50 train + 50 held out) and S = half B
    (100 real images standing in for synthetic ones, i.e. the floor):
    37 s wall when the CPU was otherwise quiet, 31 s of it in evaluate()
    (~10 s compilation); 57-79 s while other jobs shared the cores. A
    later call in the same process (as in the study) reuses the compiled
    steps: ~14-20 s for a one-class call (70 train / 20 held-out / 200
    synthetic). Floor figures (deterministic for a seed):
    swd 41.9, fd 1.82, kid 0.0010 +- 0.0027, precision 0.80, recall 0.88,
    c2st 0.54 [0.39, 0.68] (n=50), tstr / trtr accuracy 0.70 / 0.76,
    nn_distance_ratio 0.99, ms_ssim synthetic / real 0.25 / 0.24; gate
    passed. The same with S blurred (sigma 2 px): swd 139, fd 15.3, recall
    0.14, c2st 1.00; gate failed.
  python main.py --config=configs/gan_metrics.py:tiny --workdir=W ...
    32x32, _resnet1 width 4, a few steps; seconds (the tests use it).

`get_metrics_config()` is the `metrics` block alone, for other configs (the
study) that call `gan_metrics.evaluate` themselves.
"""

import ml_collections


def get_metrics_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The block `gan_metrics.evaluate(..., config=...)` reads."""
  m = ml_collections.ConfigDict()
  # True: a third of the classifier training and fewer subsets / pairs /
  # directions; roughly halves the time for noisier figures.
  m.fast = False

  # One classifier recipe for the feature network (= TRTR), C2ST and TSTR:
  # the project's ResNet and training steps (resnet_jax/steps.py).
  c = m.classifier = ml_collections.ConfigDict()
  # resnet10 (one block per stage) | resnet18 | ... | _resnet1 (tests).
  c.model = 'resnet10'
  c.num_filters = 16
  c.dtype = 'float32'
  c.optimizer = 'sgd'
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.warmup_fraction = 0.1
  c.label_smoothing = 0.1
  c.batch_size = 32
  c.eval_batch_size = 64
  # Training length of every classifier in thousands of images shown
  # (3 kimg = 94 steps of 32), fixed so all share one compiled step.
  c.kimg = 3.0
  # Random horizontal flips while training (head CT is near-symmetric).
  c.flip = True

  # auto: trained on the real training labels when they have >= 2 classes,
  # else a random network with calibrated BatchNorm (one class, e.g. a
  # per-class GAN); or force 'trained' / 'random'.
  m.feature_net = 'auto'
  # KID: subsets and their maximum size (clean-fid: 100 x 1000).
  m.kid_subsets = 100
  m.kid_subset_size = 1000
  # k of the k-NN balls of improved precision / recall (the paper's 3).
  m.pr_k = 3
  # Fraction of each (balanced) set the C2ST tests on.
  m.c2st_test_fraction = 0.5
  # Random distinct pairs for each mean pairwise MS-SSIM.
  m.ms_ssim_pairs = 500
  # Multi-scale SWD of pggan_jax.quality (the PGGAN paper's 7x7 patches,
  # levels down to 16x16; 64 patches per image instead of 128, as the sets
  # here are small).
  m.swd = ml_collections.ConfigDict(dict(
      patches_per_image=64, patch_size=7, num_directions=512, num_repeats=4,
      min_resolution=16))
  # Random splits of the permutation test of pggan_jax.quality's
  # spectral_test (power at high frequencies; p-values down to 1/201).
  m.spectral_permutations = 200
  # A synthetic image whose nearest real training image is closer than
  # this pixel RMS ([-1, 1] units; 0.01 = 1.3 grey levels of 255) is an
  # exact copy: only rounding or re-encoding differs.
  m.exact_copy_rms = 0.01
  # Closest (synthetic, real) pairs drawn in nearest_neighbours.png.
  m.nn_grid_pairs = 16

  # Quality gate (gan_metrics.quality_gate). It catches plainly bad GANs,
  # not subtle ones:
  # C2ST accuracy at or above this: a small CNN tells the sets apart almost
  # always (0.5 = indistinguishable).
  m.gate_c2st = 0.95
  # Median synthetic->train NN distance at most this fraction of the median
  # held-out-real->train one: the typical synthetic image is twice as close
  # to a training image as a new patient's image is, i.e. near-copies. (A
  # faithful generator gives ~1; blur alone lowers pixel distances a bit,
  # hence not a threshold near 1.)
  m.gate_min_nn_ratio = 0.5
  # More than this fraction of exact copies: the 'gan' arm partly replays
  # training images (oversampling, not generation).
  m.gate_max_exact_copy_fraction = 0.1
  # Synthetic MS-SSIM above real + this: mode collapse. 0.1 is several times
  # the sampling noise of a 500-pair mean (~0.01-0.02).
  m.gate_ms_ssim_margin = 0.1

  if arg == 'tiny':
    m.classifier.model = '_resnet1'
    m.classifier.num_filters = 4
    m.classifier.batch_size = 8
    m.classifier.eval_batch_size = 16
    m.classifier.kimg = 0.08  # 10 steps
    m.kid_subsets = 10
    m.ms_ssim_pairs = 20
    m.spectral_permutations = 20
    m.swd.num_directions = 64
    m.swd.patches_per_image = 16
  elif arg:
    raise ValueError(f'Unknown variant {arg!r}; use '
                     'configs/gan_metrics.py[:tiny]')
  return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: None (default, CPU) | 'tiny' (tests)."""
  config = ml_collections.ConfigDict()
  config.task = 'gan_metrics'
  # Seeds the real split and everything in evaluate().
  config.seed = 0
  # image_folder layouts (one subfolder per class).
  config.real_dir = ''
  # Subfolders named after some of real_dir's classes, or flat PNGs.
  config.synthetic_dir = ''
  # Optional: real images the GAN never saw; then real_dir is all training
  # images and is not split.
  config.real_heldout_dir = ''
  # Fraction of real_dir held out (stratified) when real_heldout_dir is ''.
  config.heldout_fraction = 0.5
  # Images are read with input_pipeline.preprocess.load_square at this size
  # (grayscale, aspect kept, padded square).
  config.resolution = 64
  config.metrics = get_metrics_config(arg)
  if arg == 'tiny':
    config.resolution = 32
  return config
