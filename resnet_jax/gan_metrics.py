"""Synthetic-image quality: realism, diversity, memorisation, usefulness.

  python main.py --config=configs/gan_metrics.py --config.real_dir=R \\
      --config.synthetic_dir=S --workdir=W

`evaluate` compares synthetic images with real held-out images (and the real
training images the GAN saw) and returns a JSON-safe dict; `quality_gate`
turns it into pass / fail with reasons; `run` is the CLI. Floor 3: feature
metrics use a network trained here, on the real *training* images only
(`gan_classifiers.py`); Inception features are neither available offline nor
a good judge of CT (Woodland et al. 2023), so the Fréchet distance is called
`fd` (fd_resnet), never FID.

Metrics (A = real held-out, B = synthetic, T = real training images):
  swd                multi-scale SWD of A vs B, x 1e3 (pggan_jax.quality).
  fd                 ||mu_A - mu_B||^2 + Tr(S_A + S_B - 2 (S_A S_B)^1/2) on
                     the feature network's pooled features (Heusel et al.
                     2017, with our features).
  kid, kid_std       unbiased MMD^2, kernel k(x, y) = (x.y / d + 1)^3, mean
                     and std over random subsets (Bińkowski et al. 2018;
                     clean-fid's `kernel_distance`).
  precision, recall  improved precision / recall: fraction of B inside the
                     union of k-NN balls of A, and of A inside B's
                     (Kynkäänniemi et al. 2019, k = 3), on equal-size sets.
  c2st_*             accuracy of a CNN telling A from B on a held-out part,
                     95 % Clopper-Pearson interval (Lopez-Paz & Oquab 2017).
                     0.5 = indistinguishable, 1 = trivially told apart.
  tstr_*, trtr_*     train on synthetic / real training images, test on A
                     (Esteban et al. 2017): accuracy and AUC.
  nn_distance_ratio  median_B NN(B, T) / median_A NN(A, T), pixel RMS
                     distance; also in features. ~1: synthetic images are
                     as far from the training set as new patients are; -> 0:
                     copies. num_exact_copies counts B with NN RMS below
                     `exact_copy_rms`.
  ms_ssim_*          mean pairwise MS-SSIM of B and of A + T; synthetic well
                     above real = mode collapse (Odena et al. 2017).
  spectral_*         B's mean power spectrum against A's at high spatial
                     frequencies: the largest excess and deficit (log10
                     power ratio; 0.3 = twice the power), the frequency of
                     the excess, the random splits' 95th / 5th percentiles
                     and permutation p-values (quality.spectral_test):
                     upsampling stripes and grids show as excess (Durall et
                     al. 2020), blur as deficit. Reported, not part of the
                     gate.
"""

import os
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import scipy.linalg
import scipy.spatial.distance
from sklearn import model_selection

from input_pipeline import files
from input_pipeline import images as image_io
from input_pipeline import preprocess
from input_pipeline import provenance
from input_pipeline import sources
from input_pipeline import transforms
from input_pipeline.errors import UserInputError
from pggan_jax import quality
from resnet_jax import gan_classifiers

# ---------------------------------------------------------------- formulas


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), features [N, F]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError('frechet_distance needs >= 2 samples per set')
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s_a @ s_b)
  if not np.all(np.isfinite(covmean)):
    # Singular product (n < F): regularise as pytorch-fid does.
    eps = 1e-6 * np.eye(len(s_a))
    covmean = scipy.linalg.sqrtm((s_a + eps) @ (s_b + eps))
  fd = (np.sum(np.square(mu_a - mu_b)) + np.trace(s_a) + np.trace(s_b)
        - 2 * np.trace(np.real(covmean)))
  return float(max(fd, 0.0))


def kernel_distance(a: np.ndarray, b: np.ndarray, *, num_subsets: int = 100,
                    max_subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
  """KID: (mean, std) over subsets of the unbiased MMD^2 estimate.

  Subset size m = min(|a|, |b|, max_subset_size); per subset, with the
  cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,

    MMD^2_u = [sum_{i!=j} k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
              - 2 / m^2 sum_{i,j} k(x_i, y_j)

  exactly as clean-fid's `kernel_distance` (whose mean this is).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = a.shape[1]
  m = min(len(a), len(b), max_subset_size)
  if m < 2:
    raise ValueError('kernel_distance needs >= 2 samples per set')
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = b[rng.choice(len(b), m, replace=False)]
    y = a[rng.choice(len(a), m, replace=False)]
    kxx = (x @ x.T / d + 1)**3
    kyy = (y @ y.T / d + 1)**3
    kxy = (x @ y.T / d + 1)**3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy))
    values.append(within / (m * (m - 1)) - 2 * kxy.sum() / m**2)
  return float(np.mean(values)), float(np.std(values))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
  """Distance of each point to its k-th nearest other point."""
  d = scipy.spatial.distance.cdist(x, x)
  return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, *,
                     k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019).

    precision = 1/|F| sum_f [exists r: ||f - r|| <= NN_k(r, R)]
    recall    = 1/|R| sum_r [exists f: ||r - f|| <= NN_k(f, F)]

  with NN_k(r, R) the distance from r to its k-th nearest neighbour in R.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f'precision_recall needs > k={k} samples per set')
  r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
  d = scipy.spatial.distance.cdist(fake, real)  # [F, R]
  precision = np.mean(np.any(d <= r_real[None, :], axis=1))
  recall = np.mean(np.any(d.T <= r_fake[None, :], axis=1))
  return float(precision), float(recall)


def nearest(queries: np.ndarray, reference: np.ndarray,
            rms: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(distance, index) of each query's nearest reference row (L2).

  rms=True divides by sqrt(dimension): the root-mean-square pixel
  difference, in the images' [-1, 1] units.
  """
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(reference, np.float64).reshape(len(reference), -1)
  d = scipy.spatial.distance.cdist(q, r)
  idx = np.argmin(d, axis=1)
  dist = d[np.arange(len(q)), idx]
  if rms:
    dist = dist / np.sqrt(q.shape[1])
  return dist, idx


# -------------------------------------------------------------- evaluation


FEATURE_NETS = ('auto', 'trained', 'random')


def check_config(config: ml_collections.ConfigDict) -> None:
  """The metrics block's own keys, before any image is read."""
  if config.feature_net not in FEATURE_NETS:
    raise UserInputError(f'config.metrics.feature_net={config.feature_net!r}'
                         f' is not one of {list(FEATURE_NETS)}')
  n = config.spectral_permutations
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise UserInputError(f'config.metrics.spectral_permutations={n!r} must '
                         'be a whole number >= 1')
  gan_classifiers.check_config(config.classifier)


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with `fast` applied: shorter training, fewer estimates."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  if cfg.fast:
    cfg.classifier.kimg = cfg.classifier.kimg / 3
    cfg.kid_subsets = min(cfg.kid_subsets, 20)
    cfg.ms_ssim_pairs = min(cfg.ms_ssim_pairs, 100)
    cfg.swd.num_directions = min(cfg.swd.num_directions, 128)
    cfg.spectral_permutations = min(cfg.spectral_permutations, 100)
  return cfg


def _check_images(name: str, x: np.ndarray, labels, min_n: int = 2):
  x = np.asarray(x, np.float32)
  if x.ndim != 4:
    raise ValueError(f'{name}: expected [N, R, R, C] images, got {x.shape}')
  if len(x) < min_n:
    raise ValueError(f'{name}: needs >= {min_n} images, got {len(x)}')
  if labels is not None:
    labels = np.asarray(labels, np.int64)
    if labels.shape != (len(x),):
      raise ValueError(f'{name}: labels {labels.shape} do not match '
                       f'{len(x)} images')
  return x, labels


def _subsample(x: np.ndarray, n: int, rng) -> np.ndarray:
  return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, False))]


def evaluate(real_train: np.ndarray, real_train_labels: np.ndarray,
             real_heldout: np.ndarray, real_heldout_labels: np.ndarray,
             synthetic: np.ndarray, synthetic_labels: np.ndarray | None, *,
             config: ml_collections.ConfigDict, seed: int = 0,
             workdir: str | None = None) -> dict[str, Any]:
  """All metrics of `synthetic` against the real images; see module doc.

  Args:
    real_train: float32 [N, R, R, C] in [-1, 1], the images the GAN was
      trained on (feature network, TRTR, nearest-neighbour reference).
    real_train_labels: int [N].
    real_heldout: [M, R, R, C] real images the GAN never saw (the reference
      of every distribution metric and the TSTR / TRTR test set).
    real_heldout_labels: int [M].
    synthetic: [S, R, R, C] generated images.
    synthetic_labels: int [S] in the real label space, or None (unlabelled:
      TSTR is then None with a `tstr_note`).
    config: the `metrics` block of configs/gan_metrics.py.
    seed: seeds every subsample, split and network.
    workdir: if given, nearest_neighbours.png is written there.

  Returns:
    A JSON-safe dict (floats, ints, strings, None, lists).
  """
  t0 = time.time()
  check_config(config)
  cfg = _effective(config)
  real_train, real_train_labels = _check_images(
      'real_train', real_train, real_train_labels)
  real_heldout, real_heldout_labels = _check_images(
      'real_heldout', real_heldout, real_heldout_labels)
  synthetic, synthetic_labels = _check_images('synthetic', synthetic,
                                              synthetic_labels)
  if not (real_train.shape[1:] == real_heldout.shape[1:]
          == synthetic.shape[1:]):
    raise ValueError('real_train, real_heldout and synthetic images differ in '
                     f'shape: {real_train.shape}, {real_heldout.shape}, '
                     f'{synthetic.shape}')
  rng = np.random.default_rng(seed)
  all_labels = [real_train_labels, real_heldout_labels]
  if synthetic_labels is not None:
    all_labels.append(synthetic_labels)
  num_classes = int(max(int(y.max()) for y in all_labels)) + 1
  out: dict[str, Any] = {
      'num_real_train': len(real_train), 'num_real_heldout': len(real_heldout),
      'num_synthetic': len(synthetic), 'resolution': int(synthetic.shape[1]),
  }

  # Pixel metrics (floor 2). Tiny images (early PGGAN stages, tests): the
  # patch shrinks to the largest odd size that fits; MS-SSIM needs >= 11 px.
  s = cfg.swd
  side = min(synthetic.shape[1:3])
  out.update(quality.sliced_wasserstein(
      real_heldout, synthetic, patches_per_image=s.patches_per_image,
      patch_size=min(s.patch_size, (side - 1) | 1),
      num_directions=s.num_directions, num_repeats=s.num_repeats,
      min_resolution=s.min_resolution, seed=seed))
  if side >= quality.SSIM_WINDOW:
    out['ms_ssim_synthetic'] = quality.mean_pairwise_ms_ssim(
        synthetic, num_pairs=cfg.ms_ssim_pairs, seed=seed)
    out['ms_ssim_real'] = quality.mean_pairwise_ms_ssim(
        np.concatenate([real_train, real_heldout]),
        num_pairs=cfg.ms_ssim_pairs, seed=seed)
  else:
    out['ms_ssim_synthetic'] = out['ms_ssim_real'] = None
    out['ms_ssim_note'] = (f'{side}px images: MS-SSIM needs >= '
                           f'{quality.SSIM_WINDOW}')
  if side >= 8 and synthetic.shape[1] == synthetic.shape[2]:
    out.update(quality.spectral_test(
        real_heldout, synthetic, num_permutations=cfg.spectral_permutations,
        seed=seed))
  else:
    out['spectral_excess'] = out['spectral_deficit'] = None
    out['spectral_note'] = (f'{synthetic.shape[1]}x{synthetic.shape[2]} '
                            'images: the spectral test needs square ones '
                            'of >= 8 px')

  # Feature network: trained on the real training labels when there are
  # two or more classes, else random (see gan_classifiers.random_network).
  train_classes = np.unique(real_train_labels)
  mode = cfg.feature_net
  if mode == 'trained' and len(train_classes) < 2:
    raise UserInputError("config.metrics.feature_net='trained' needs >= 2 "
                         'classes in the real training images compared '
                         '(those of the synthetic images)')
  if mode == 'random' or len(train_classes) < 2:
    net = gan_classifiers.random_network(real_train, cfg.classifier,
                                         seed=seed)
  else:
    net = gan_classifiers.fit(real_train, real_train_labels, num_classes,
                              cfg.classifier, seed=seed)
  out['feature_net'] = 'trained' if net.trained else 'random'
  f_train, _ = gan_classifiers.predict(net, real_train)
  f_held, p_held = gan_classifiers.predict(net, real_heldout)
  f_syn, _ = gan_classifiers.predict(net, synthetic)
  out['fd'] = frechet_distance(f_held, f_syn)
  out['kid'], out['kid_std'] = kernel_distance(
      f_held, f_syn, num_subsets=cfg.kid_subsets,
      max_subset_size=cfg.kid_subset_size, seed=seed)
  n_pr = min(len(f_held), len(f_syn))
  if n_pr > cfg.pr_k:
    out['precision'], out['recall'] = precision_recall(
        _subsample(f_held, n_pr, rng), _subsample(f_syn, n_pr, rng),
        k=cfg.pr_k)
  else:
    out['precision'] = out['recall'] = None
  out['pr_n'] = int(n_pr)

  out.update(gan_classifiers.tstr_trtr(
      net, real_heldout, real_heldout_labels, p_held, synthetic,
      synthetic_labels, num_classes, cfg, seed))
  out.update(gan_classifiers.c2st(
      real_heldout, synthetic, cfg.classifier,
      test_fraction=cfg.c2st_test_fraction, seed=seed))
  out.update(_memorisation(real_train, real_heldout, synthetic, f_train,
                           f_held, f_syn, cfg, workdir))
  out['seconds'] = round(time.time() - t0, 1)
  return files.jsonable(out)


def _memorisation(real_train, real_heldout, synthetic, f_train, f_held,
                  f_syn, cfg, workdir) -> dict[str, Any]:
  """Nearest real training image of each synthetic (and held-out) image."""
  d_syn, i_syn = nearest(synthetic, real_train, rms=True)
  d_held, _ = nearest(real_heldout, real_train, rms=True)
  fd_syn, _ = nearest(f_syn, f_train)
  fd_held, _ = nearest(f_held, f_train)

  def ratio(a, b):
    return (float(np.median(a) / np.median(b)) if np.median(b) > 0
            else None)

  order = np.argsort(d_syn, kind='stable')[:cfg.nn_grid_pairs]
  out = {
      'nn_distance_ratio': ratio(d_syn, d_held),
      'nn_distance_ratio_features': ratio(fd_syn, fd_held),
      'nn_median_rms_synthetic': float(np.median(d_syn)),
      'nn_median_rms_heldout': float(np.median(d_held)),
      'nn_min_rms_synthetic': float(d_syn.min()),
      'num_exact_copies': int(np.sum(d_syn < cfg.exact_copy_rms)),
      'nearest_pairs': [{'synthetic': int(i), 'real_train': int(i_syn[i]),
                         'rms': float(d_syn[i])} for i in order],
  }
  if workdir:
    save_nearest_grid(synthetic[order], real_train[i_syn[order]],
                      d_syn[order],
                      os.path.join(workdir, 'nearest_neighbours.png'))
  return out


def save_nearest_grid(synthetic: np.ndarray, real: np.ndarray,
                      distances: np.ndarray, path: str,
                      pairs_per_row: int = 4) -> None:
  """Grid of (synthetic | nearest real training image) pairs, closest first,
  each titled with its pixel RMS distance (matplotlib Agg, no pyplot)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  n = len(synthetic)
  rows = max(1, -(-n // pairs_per_row))
  fig = Figure(figsize=(3.2 * pairs_per_row, 1.8 * rows + 0.5))
  fig.suptitle('closest pairs: synthetic | nearest real training image '
               '(pixel RMS, [-1, 1] units)', fontsize=8)
  for i in range(rows * pairs_per_row):
    ax = fig.add_subplot(rows, pairs_per_row, i + 1)
    ax.set_axis_off()
    if i >= n:
      continue
    pair = np.concatenate([synthetic[i], np.ones_like(synthetic[i][:, :2]),
                           real[i]], axis=1)
    img = image_io.to_uint8(pair)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray',
              vmin=0, vmax=255)
    ax.set_title(f'{distances[i]:.3f}', fontsize=7)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp.png'
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)


def quality_gate(metrics: dict[str, Any],
                 config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'passed', 'reasons', 'skipped'}: fails on plainly bad synthetic images.

  Fails when the synthetic images are trivially told from real ones
  (c2st_accuracy >= gate_c2st), copy the training set (nn_distance_ratio <=
  gate_min_nn_ratio, or more than gate_max_exact_copy_fraction exact
  copies) or collapsed (ms_ssim_synthetic > ms_ssim_real +
  gate_ms_ssim_margin). A metric that is None is listed in 'skipped'; a
  missing C2ST fails the gate (realism unknown is not a pass).
  """
  reasons, skipped = [], []

  def check(key, bad, message):
    value = metrics.get(key)
    if value is None:
      skipped.append(key)
    elif bad(value):
      reasons.append(message(value))

  if metrics.get('c2st_accuracy') is None:
    # Nothing measured is not a pass.
    reasons.append('C2ST not measured: realism unknown')
  check('c2st_accuracy', lambda v: v >= config.gate_c2st,
        lambda v: f'C2ST accuracy {v:.3f} >= {config.gate_c2st}: a small CNN '
        'tells synthetic from real images')
  check('nn_distance_ratio', lambda v: v <= config.gate_min_nn_ratio,
        lambda v: f'nearest-neighbour distance ratio {v:.3f} <= '
        f'{config.gate_min_nn_ratio}: synthetic images sit on training images '
        '(memorisation)')
  n = metrics.get('num_synthetic') or 0
  check('num_exact_copies',
        lambda v: n and v / n > config.gate_max_exact_copy_fraction,
        lambda v: f'{v} of {n} synthetic images are exact copies of training '
        'images')
  if metrics.get('ms_ssim_real') is None:
    skipped.append('ms_ssim_real')
  else:
    limit = metrics['ms_ssim_real'] + config.gate_ms_ssim_margin
    check('ms_ssim_synthetic', lambda v: v > limit,
          lambda v: f'MS-SSIM of synthetic pairs {v:.3f} > real '
          f'{metrics["ms_ssim_real"]:.3f} + {config.gate_ms_ssim_margin}: '
          'mode collapse')
  return {'passed': not reasons, 'reasons': reasons, 'skipped': skipped}


# --------------------------------------------------------------------- CLI


def load_image_folder(path: str, resolution: int, *, key: str,
                      allow_flat: bool = False):
  """DIR/<class>/*.{png,jpg,jpeg} (or, with allow_flat, DIR/*.png).

  Returns (images float32 [N, R, R, 1] in [-1, 1], labels int [N] or None
  when flat, class names, paths). Images go through the project's
  preprocessing (grayscale, aspect kept, padded square). Other files (e.g.
  the sampler's manifest.json) are ignored.
  """
  if not path:
    raise UserInputError(f'config.{key} is required')
  found = sources.list_image_folder(path, key, allow_flat=allow_flat)
  classes = [c for c in found if c is not None]
  paths = [p for c in found for p in found[c]]
  labels = [label for label, c in enumerate(classes) for _ in found[c]]
  images = np.stack([preprocess.load_square(p, resolution)[0]
                     for p in paths])
  return (transforms.to_float(images),
          np.asarray(labels, np.int64) if classes else None, classes, paths)


def _relabel(labels, names, real_names, key, path):
  unknown = [n for n in names if n not in real_names]
  if unknown:
    raise UserInputError(f'config.{key}={path!r}: class folder(s) {unknown} '
                         f'are not classes of config.real_dir {real_names}')
  return np.asarray([real_names.index(names[y]) for y in labels], np.int64)


def _heldout_split(config, real_y, names, real_paths, classes):
  """(train indices, held-out indices, how) of config.real_dir's images.

  Held-out images must be images the GAN never saw. Where the sampler's
  manifest.json in config.synthetic_dir records the GANs' training images
  and, for every compared class in `classes`, some of them are images of
  config.real_dir (ids are paths relative to the dataset root, so real_dir
  is the GANs' image-folder dataset), those are the real training images
  and the rest are held out ('gan_manifest'). Where they name none of its
  images, real_dir is split at random ('random'), with a warning: if the
  GAN trained on some of its images, the held-out half holds some of them
  and flatters the GAN. Where they cover some compared classes and not
  others, a one-line error: that class's held-out images could not be
  told from its GAN's training images.
  """
  seen = provenance.gan_train_ids(config.synthetic_dir)
  rel = [os.path.relpath(p, config.real_dir).replace(os.sep, '/')
         for p in real_paths]
  in_gan = np.asarray([r in seen for r in rel], bool)
  covered = [c for c in classes if np.any(in_gan & (real_y == c))]
  if covered and len(covered) < len(classes):
    missing = [names[c] for c in classes if c not in covered]
    raise UserInputError(
        f'config.synthetic_dir={config.synthetic_dir!r}: its manifest.json '
        'records the training images of the GAN(s) of class(es) '
        f'{[names[c] for c in covered]} among config.real_dir\'s images but '
        f'none of class(es) {missing}, so their held-out images cannot be '
        'told from their GAN\'s training images; sample every class with '
        'configs/sample.py from GANs trained on config.real_dir, or give '
        'config.real_heldout_dir')
  if covered:
    return np.flatnonzero(in_gan), np.flatnonzero(~in_gan), 'gan_manifest'
  logging.warning(
      'config.real_dir is split at random into real training and held-out '
      'images: %s; if its GAN trained on images of config.real_dir, the '
      'held-out half includes some of them and the metrics flatter the GAN '
      '(give config.real_heldout_dir)',
      f'none of its images is among the {len(seen)} that the manifest.json '
      'of config.synthetic_dir says its GAN trained on' if seen else
      'config.synthetic_dir has no manifest.json that records the images '
      'its GAN trained on')
  counts = np.bincount(real_y, minlength=len(names))
  if counts.min() < 2:
    raise UserInputError(
        f'config.real_dir: class {names[int(np.argmin(counts))]!r} has '
        f'{counts.min()} image(s); the held-out split needs >= 2 per class')
  idx_train, idx_held = model_selection.train_test_split(
      np.arange(len(real_y)), test_size=config.heldout_fraction,
      stratify=real_y, random_state=config.seed)
  return np.sort(idx_train), np.sort(idx_held), 'random'


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """CLI: metrics of config.synthetic_dir against config.real_dir.

  Writes workdir/gan_metrics.json (metrics, gate, counts, class names) and
  workdir/nearest_neighbours.png; prints a short summary.
  """
  if not workdir:
    raise UserInputError('--workdir is required for config.task=gan_metrics')
  if not 0.0 < config.heldout_fraction < 1.0:
    raise UserInputError(f'config.heldout_fraction={config.heldout_fraction} '
                         'must be in (0, 1)')
  res = config.resolution
  real, real_y, names, real_paths = load_image_folder(
      config.real_dir, res, key='real_dir')
  syn, syn_y, syn_names, syn_paths = load_image_folder(
      config.synthetic_dir, res, key='synthetic_dir', allow_flat=True)
  if syn_y is not None:
    syn_y = _relabel(syn_y, syn_names, names, 'synthetic_dir',
                     config.synthetic_dir)
  # The classes compared: those of the samples (e.g. one class's GAN).
  keep = (np.unique(syn_y) if syn_y is not None
          else np.arange(len(names)))
  if config.real_heldout_dir:
    held, held_y, held_names, _ = load_image_folder(
        config.real_heldout_dir, res, key='real_heldout_dir')
    held_y = _relabel(held_y, held_names, names, 'real_heldout_dir',
                      config.real_heldout_dir)
    train_x, train_y, train_paths = real, real_y, real_paths
    heldout_split = 'real_heldout_dir'
  else:
    idx_train, idx_held, heldout_split = _heldout_split(
        config, real_y, names, real_paths, keep)
    train_x, train_y = real[idx_train], real_y[idx_train]
    held, held_y = real[idx_held], real_y[idx_held]
    train_paths = [real_paths[i] for i in idx_train]
  compared = [names[int(c)] for c in keep]
  if len(keep) < len(names):
    # Samples of some classes against the real images of those classes
    # only, as the study's per-class metrics.
    in_train, in_held = np.isin(train_y, keep), np.isin(held_y, keep)
    train_x, train_y = train_x[in_train], train_y[in_train]
    train_paths = [p for p, k in zip(train_paths, in_train) if k]
    held, held_y = held[in_held], held_y[in_held]
  split = {'real_heldout_dir': '',
           'gan_manifest': (' not among the images its GAN trained on '
                            '(manifest.json of config.synthetic_dir)'),
           'random': ' after the held-out split'}[heldout_split]
  for n, what, key in (
      (len(train_x), 'real training', 'real_dir'),
      (len(held), 'held-out real',
       'real_heldout_dir' if config.real_heldout_dir else 'real_dir')):
    if n < 2:
      raise UserInputError(
          f'config.{key}: {n} {what} image(s) of the class(es) compared '
          f'{compared}{split}; the metrics need >= 2')
  os.makedirs(workdir, exist_ok=True)
  metrics = evaluate(train_x, train_y, held, held_y, syn, syn_y,
                     config=config.metrics, seed=config.seed,
                     workdir=workdir)
  for pair in metrics['nearest_pairs']:
    pair['synthetic_path'] = syn_paths[pair['synthetic']]
    pair['real_train_path'] = train_paths[pair['real_train']]
  metrics['gate'] = quality_gate(metrics, config.metrics)
  metrics['class_names'] = names
  metrics['synthetic_classes'] = (sorted(names[i] for i in set(syn_y))
                                  if syn_y is not None else None)
  metrics['real_dir'] = os.path.abspath(config.real_dir)
  metrics['heldout_split'] = heldout_split
  metrics['synthetic_dir'] = os.path.abspath(config.synthetic_dir)
  files.write_json(os.path.join(workdir, 'gan_metrics.json'), metrics)
  print(summary(metrics))
  return metrics


_SPLITS = {'gan_manifest': "; held out: those its GAN's manifest lacks",
           'random': '; held out: a random split'}


def summary(m: dict[str, Any]) -> str:
  """A few lines for the terminal."""

  def f(v, p=3):
    return 'n/a' if v is None else f'{v:.{p}f}'

  gate = m.get('gate', {})
  lines = [
      f"gan_metrics: {m['num_synthetic']} synthetic vs "
      f"{m['num_real_heldout']} held-out real ({m['num_real_train']} real "
      f"train{_SPLITS.get(m.get('heldout_split'), '')}), "
      f"{m['resolution']}px, {m['seconds']} s",
      f"  swd {f(m['swd'], 2)}  fd {f(m['fd'])}  kid {f(m['kid'], 4)}"
      f" +- {f(m['kid_std'], 4)}  precision {f(m['precision'])}  recall "
      f"{f(m['recall'])}  ({m['feature_net']} features)",
      f"  c2st {f(m['c2st_accuracy'])} [{f(m['c2st_ci_low'])}, "
      f"{f(m['c2st_ci_high'])}] n={m['c2st_n']}  tstr "
      f"{f(m['tstr_accuracy'])} (auc {f(m['tstr_auc'])})  trtr "
      f"{f(m['trtr_accuracy'])} (auc {f(m['trtr_auc'])})",
      f"  nn ratio {f(m['nn_distance_ratio'])} (features "
      f"{f(m['nn_distance_ratio_features'])})  exact copies "
      f"{m['num_exact_copies']}  ms-ssim synthetic "
      f"{f(m['ms_ssim_synthetic'])} real {f(m['ms_ssim_real'])}",
  ]
  if m.get('spectral_excess') is not None:
    lines.append(
        f"  spectrum: excess {f(m['spectral_excess'], 2)} (log10 power; "
        f"random splits' 95% {f(m['spectral_excess_null95'], 2)}, p "
        f"{f(m['spectral_excess_p'])}) at {m['spectral_excess_at']} "
        f"cycles/image, deficit {f(m['spectral_deficit'], 2)} (5% "
        f"{f(m['spectral_deficit_null05'], 2)}, p "
        f"{f(m['spectral_deficit_p'])})")
  if m.get('tstr_note'):
    lines.append(f"  note: {m['tstr_note']}")
  if gate:
    lines.append('  gate: ' + ('passed' if gate['passed'] else
                               'FAILED: ' + '; '.join(gate['reasons'])))
  return '\n'.join(lines)
