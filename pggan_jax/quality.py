"""Pixel-level quality metrics of generated images: multi-scale SWD, MS-SSIM.

Floor 2: numpy/scipy only, no trained network, so the PGGAN training loop can
log them at every tick. Metrics that need a feature network (Fréchet distance,
KID, precision/recall, C2ST) live on floor 3, in `resnet_jax/gan_metrics.py`.

Images are numpy arrays [N, H, W, C] (or [N, H, W]), either float in [-1, 1]
or uint8 in [0, 255]; uint8 is mapped to [-1, 1] first.

  sliced_wasserstein(real, fake)  Karras et al. 2018, §5 and appendix D.
  ms_ssim(x, y)                   Wang, Simoncelli & Bovik 2003.
  mean_pairwise_ms_ssim(images)   diversity of one set (Odena et al. 2017).
  spectral_test(real, fake)       excess or missing power at high spatial
                                  frequencies, with permutation p-values
                                  (upsampling artifacts: Durall et al. 2020).
"""

import numpy as np
import scipy.fft
import scipy.ndimage

# Binomial 5-tap filter of cv2.pyrDown / the official SWD code, separable:
# the 5x5 kernel of Karras et al. is outer([1, 4, 6, 4, 1]) / 256.
_BINOMIAL = np.array([1., 4., 6., 4., 1.], np.float32) / 16.

# Wang et al. 2003, Table/§3: per-scale exponents, finest scale first.
_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
# Gaussian window side: MS-SSIM needs images at least this wide.
SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _as_float_images(images, name: str) -> np.ndarray:
  """[N, H, W, C] float32 in [-1, 1] from float [-1, 1] or uint8 images."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f'{name}: expected [N, H, W, C] images, got shape '
                     f'{x.shape}')
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 127.5 - 1.0
  return x.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------
# Sliced Wasserstein distance.


def _filter2d(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Separable filter over H and W of [N, H, W, C], reflect-101 borders."""
  x = scipy.ndimage.correlate1d(x, weights, axis=1, mode='mirror')
  return scipy.ndimage.correlate1d(x, weights, axis=2, mode='mirror')


def _pyr_down(x: np.ndarray) -> np.ndarray:
  """cv2.pyrDown: binomial blur, then keep every second pixel."""
  return _filter2d(x, _BINOMIAL)[:, ::2, ::2]


def _pyr_up(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """cv2.pyrUp to `shape`: zero-insertion, then 4 x binomial blur."""
  up = np.zeros((x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]),
                x.dtype)
  up[:, ::2, ::2] = x
  return _filter2d(up, _BINOMIAL * 2.0)[:, :shape[1], :shape[2]]


def laplacian_pyramid(images: np.ndarray, num_levels: int) -> list[np.ndarray]:
  """Levels finest first: band-pass residuals, then the coarsest low-pass."""
  pyramid = [np.asarray(images, np.float32)]
  for _ in range(1, num_levels):
    low = _pyr_down(pyramid[-1])
    pyramid[-1] = pyramid[-1] - _pyr_up(low, pyramid[-1].shape)
    pyramid.append(low)
  return pyramid


def _patches(level: np.ndarray, per_image: int, size: int,
             rng: np.random.Generator) -> np.ndarray:
  """`per_image` random size x size x C patches of each image, [P, s*s*C].

  Patch centres are drawn so the patch lies inside the image, as in the
  official `get_descriptors_for_minibatch`.
  """
  n, h, w, _ = level.shape
  half = size // 2
  img = np.repeat(np.arange(n), per_image)
  cy = rng.integers(half, h - half, size=img.shape)
  cx = rng.integers(half, w - half, size=img.shape)
  off = np.arange(-half, half + 1)
  ys = (cy[:, None] + off)[:, :, None]
  xs = (cx[:, None] + off)[:, None, :]
  return level[img[:, None, None], ys, xs, :].reshape(len(img), -1)


def _normalise(desc: np.ndarray, channels: int) -> np.ndarray:
  """Per-channel standardisation over the whole patch set (official code)."""
  d = desc.reshape(desc.shape[0], -1, channels)
  d = d - d.mean(axis=(0, 1), keepdims=True)
  d = d / np.maximum(d.std(axis=(0, 1), keepdims=True), 1e-8)
  return d.reshape(desc.shape[0], -1)


def _swd_1d(a: np.ndarray, b: np.ndarray, num_directions: int,
            num_repeats: int, rng: np.random.Generator) -> float:
  """Mean over repeats of mean_dirs mean_i |sort(a.d)_i - sort(b.d)_i|."""
  per_repeat = max(1, num_directions // num_repeats)
  # Projections as C-contiguous [directions, patches] (dirs^T a^T): sorting
  # contiguous rows is several times faster than sorting the columns of
  # a @ dirs, and BLAS transposes for free where a copy would not be.
  a_t, b_t = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
  results = []
  for _ in range(num_repeats):
    dirs = rng.standard_normal((per_repeat, a.shape[1])).astype(np.float32)
    dirs /= np.sqrt(np.sum(np.square(dirs), axis=1, keepdims=True))
    pa = dirs @ a_t
    pb = dirs @ b_t
    pa.sort(axis=1)
    pb.sort(axis=1)
    results.append(float(np.mean(np.abs(pa - pb))))
  return float(np.mean(results))


def sliced_wasserstein(real, fake, *, patches_per_image: int = 64,
                       patch_size: int = 7, num_directions: int = 512,
                       num_repeats: int = 4, min_resolution: int = 16,
                       seed: int = 0) -> dict[str, float]:
  """Multi-scale sliced Wasserstein distance (Karras et al. 2018, App. D).

  Each image set is decomposed into a Laplacian pyramid (cv2.pyrDown/pyrUp
  5-tap binomial filters), levels from the full resolution down to
  `min_resolution` (16 as in the paper). From each level, `patches_per_image`
  random `patch_size` x `patch_size` x C patches per image are drawn; each
  set's patches are standardised per channel by their own mean and std over
  the patch set (so SWD compares local structure, not global brightness).
  Per level, with D random unit directions theta and P patches per set:

    SWD = 1 / D * sum_theta 1 / P * sum_i |sort(A theta)_i - sort(B theta)_i|

  i.e. the 1-D Wasserstein-1 distance between the projected patch sets,
  averaged over directions; `num_directions` in total are drawn in
  `num_repeats` groups (the official 4 x 128). As in the official
  `metrics/sliced_wasserstein.py` of tkarras/progressive_growing_of_gans,
  values are multiplied by 1e3. Lower is better; a set against an independent
  sample of the same distribution gives a small positive floor.

  Args:
    real: [N, H, W, C] (or [N, H, W]) float in [-1, 1] or uint8.
    fake: same layout; N may differ, both are subsampled to the smaller N.
    patches_per_image: patches per image and level (official: 128).
    patch_size: odd patch side (official: 7).
    num_directions: random projection directions in total.
    num_repeats: groups the directions are drawn in (results averaged).
    min_resolution: coarsest pyramid level; images smaller than this give a
      single level at their own size.
    seed: seeds subsampling, patch positions and directions.

  Returns:
    {'swd': mean over levels, 'swd/<res>': per level, e.g. 'swd/64',
     'swd/32', 'swd/16'}, all x 1e3.
  """
  a = _as_float_images(real, 'real')
  b = _as_float_images(fake, 'fake')
  if a.shape[1:] != b.shape[1:]:
    raise ValueError(f'real {a.shape[1:]} and fake {b.shape[1:]} images '
                     'differ in size')
  if patch_size % 2 != 1 or patch_size > min(a.shape[1:3]):
    raise ValueError(f'patch_size={patch_size} must be odd and <= the image '
                     f'size {a.shape[1:3]}')
  rng = np.random.default_rng(seed)
  n = min(len(a), len(b))
  if n < 1:
    raise ValueError('sliced_wasserstein needs at least one image per set')
  if len(a) > n:
    a = a[np.sort(rng.choice(len(a), n, replace=False))]
  if len(b) > n:
    b = b[np.sort(rng.choice(len(b), n, replace=False))]
  num_levels = 1
  res = min(a.shape[1:3])
  while res // 2 >= max(min_resolution, patch_size):
    res //= 2
    num_levels += 1
  channels = a.shape[-1]
  out = {}
  for la, lb in zip(laplacian_pyramid(a, num_levels),
                    laplacian_pyramid(b, num_levels)):
    # The same patch positions in both sets (the official code draws them
    # independently): the expectation is unchanged, the variance of a
    # comparison is lower, and a set against itself gives exactly 0.
    seed_level = rng.integers(2**32)
    da = _normalise(_patches(la, patches_per_image, patch_size,
                             np.random.default_rng(seed_level)), channels)
    db = _normalise(_patches(lb, patches_per_image, patch_size,
                             np.random.default_rng(seed_level)), channels)
    out[f'swd/{la.shape[1]}'] = 1e3 * _swd_1d(da, db, num_directions,
                                              num_repeats, rng)
  out['swd'] = float(np.mean(list(out.values())))
  return out


# ----------------------------------------------------------------------------
# MS-SSIM.


def _gaussian_window() -> np.ndarray:
  r = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
  g = np.exp(-0.5 * np.square(r / _SSIM_SIGMA))
  return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable Gaussian over H and W of [N, H, W, C], 'valid' output."""
  half = len(g) // 2
  x = scipy.ndimage.correlate1d(x, g, axis=1, mode='constant')
  x = scipy.ndimage.correlate1d(x, g, axis=2, mode='constant')
  return x[:, half:x.shape[1] - half, half:x.shape[2] - half]


def _ssim_terms(x: np.ndarray, y: np.ndarray,
                data_range: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-image mean SSIM and contrast-structure term, each [N]."""
  g = _gaussian_window()
  c1 = (_SSIM_K1 * data_range)**2
  c2 = (_SSIM_K2 * data_range)**2
  mx, my = _filter_valid(x, g), _filter_valid(y, g)
  sxx = _filter_valid(x * x, g) - mx * mx
  syy = _filter_valid(y * y, g) - my * my
  sxy = _filter_valid(x * y, g) - mx * my
  cs = (2 * sxy + c2) / (sxx + syy + c2)
  lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
  axes = (1, 2, 3)
  return np.mean(lum * cs, axis=axes), np.mean(cs, axis=axes)


def num_ms_ssim_scales(size: int) -> int:
  """Scales (<= 5) whose image side still holds the 11-pixel window."""
  scales, side = 0, size
  while scales < len(_MS_SSIM_WEIGHTS) and side >= SSIM_WINDOW:
    scales += 1
    side //= 2
  if scales == 0:
    raise ValueError(f'images of side {size} are smaller than the '
                     f'{SSIM_WINDOW}-pixel SSIM window')
  return scales


def ms_ssim(x, y) -> np.ndarray | float:
  """Multi-scale SSIM of image pairs (Wang, Simoncelli & Bovik 2003).

    MS-SSIM = [l_M c_M s_M]^w_M * prod_{j<M} [c_j s_j]^w_j

  with SSIM statistics from an 11-tap Gaussian window (sigma 1.5, 'valid'
  borders), K1 = 0.01, K2 = 0.03, on intensities mapped from [-1, 1] to
  [0, 1] (data range 1: the luminance term assumes non-negative means), 2x2
  average-pool downsampling between scales, and the standard weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Images too small for 5 scales
  (the window must fit the coarsest one: 64x64 gives 3) use the first M
  weights renormalised to sum 1. Negative terms are clipped to 0 before the
  power, as tf.image.ssim_multiscale does. Channels are averaged.

  Args:
    x: [H, W, C] image or [N, H, W, C] batch, float [-1, 1] or uint8.
    y: same shape as x.

  Returns:
    A float for a single pair, else [N] values in [0, 1]; 1 = identical.
  """
  single = np.ndim(x) == 3
  if single:
    x, y = np.asarray(x)[None], np.asarray(y)[None]
  a = (_as_float_images(x, 'x').astype(np.float64) + 1.0) / 2.0
  b = (_as_float_images(y, 'y').astype(np.float64) + 1.0) / 2.0
  if a.shape != b.shape:
    raise ValueError(f'ms_ssim: shapes differ, {a.shape} vs {b.shape}')
  scales = num_ms_ssim_scales(min(a.shape[1:3]))
  weights = _MS_SSIM_WEIGHTS[:scales] / _MS_SSIM_WEIGHTS[:scales].sum()
  result = np.ones(len(a))
  for j in range(scales):
    ssim, cs = _ssim_terms(a, b, data_range=1.0)
    term = ssim if j == scales - 1 else cs
    result *= np.maximum(term, 0.0)**weights[j]
    if j < scales - 1:
      h, w = (a.shape[1] // 2) * 2, (a.shape[2] // 2) * 2
      a = a[:, :h, :w].reshape(len(a), h // 2, 2, w // 2, 2, -1).mean((2, 4))
      b = b[:, :h, :w].reshape(len(b), h // 2, 2, w // 2, 2, -1).mean((2, 4))
  return float(result[0]) if single else result


def mean_pairwise_ms_ssim(images, *, num_pairs: int = 500,
                          seed: int = 0) -> float:
  """Mean MS-SSIM over random pairs of distinct images of one set.

  A diversity measure (Odena et al. 2017): a mode-collapsed generator gives
  values well above those of real images. With at most `num_pairs` possible
  pairs, all N(N-1)/2 are used; otherwise `num_pairs` pairs (i != j) drawn
  without replacement from them.

  Args:
    images: [N, H, W, C] float [-1, 1] or uint8, N >= 2.
    num_pairs: pairs to average over.
    seed: seeds the pair draw.

  Returns:
    Mean MS-SSIM in [0, 1].
  """
  x = _as_float_images(images, 'images')
  n = len(x)
  if n < 2:
    raise ValueError(f'mean_pairwise_ms_ssim needs >= 2 images, got {n}')
  total = n * (n - 1) // 2
  if total <= num_pairs:
    i, j = np.triu_indices(n, k=1)
  else:
    rng = np.random.default_rng(seed)
    if total <= 10**7:
      k = rng.choice(total, num_pairs, replace=False)
      iu, ju = np.triu_indices(n, k=1)
      i, j = iu[k], ju[k]
    else:  # Too many pairs to enumerate; duplicates are then negligible.
      i = rng.integers(n, size=num_pairs)
      j = (i + rng.integers(1, n, size=num_pairs)) % n
  values = []
  for s in range(0, len(i), 256):  # Bounded memory for large num_pairs.
    values.append(ms_ssim(x[i[s:s + 256]], x[j[s:s + 256]]))
  return float(np.mean(np.concatenate(values)))


# ----------------------------------------------------------------------------
# Power spectra.


def power_spectra(images, chunk: int = 64) -> np.ndarray:
  """Per-image power spectra [N, H, W] float32, zero frequency centred.

  Each image's mean is removed first (its brightness is no frequency);
  channels are averaged. Computed `chunk` images at a time in float32, so
  the temporaries stay small beside the [N, H, W] result.
  """
  x = _as_float_images(images, 'images')
  out = np.empty(x.shape[:3], np.float32)
  for i in range(0, len(x), chunk):
    c = x[i:i + chunk]
    c = c - c.mean(axis=(1, 2), keepdims=True)
    f = scipy.fft.fft2(c, axes=(1, 2))
    out[i:i + chunk] = (f.real ** 2 + f.imag ** 2).mean(axis=3)
  return np.fft.fftshift(out, axes=(1, 2))


def spectral_test(real, fake, *, num_permutations: int = 200,
                  min_radius: float = 0.125, smooth: int = 3,
                  seed: int = 0) -> dict:
  """Does `fake` carry more (or less) power than `real` at some frequency?

  Generators that upsample leave periodic artifacts, e.g. the stripes and
  grids of nearest-neighbour upsampling, as excess power at a few high
  spatial frequencies (Durall et al. 2020, "Watch your up-convolution";
  Dzanic et al. 2020); patch and feature metrics can miss them. Blur shows
  as missing power.

  The sets' mean power spectra (power_spectra), each smoothed over
  `smooth` x `smooth` neighbouring frequencies, are compared frequency by
  frequency over radii of at least `min_radius` of the image side (cycles
  per image): `spectral_excess` is the largest log10(fake / real) power
  ratio there (0.3 = twice the power), `spectral_deficit` the most
  negative, `spectral_excess_at` the frequency [fy, fx] (cycles per image;
  one of the pair f, -f, whose power is the same) of the excess.

  Their p-values come from a permutation test: the images of both sets
  are pooled and split at random into sets of the same sizes
  `num_permutations` times, each split's statistic computed exactly as the
  observed one; p = (1 + #{split with a statistic as extreme}) / (1 +
  num_permutations). Where both sets are draws from one distribution the
  images are exchangeable and the test is exact: p <= a has probability
  at most a. The maximum over frequencies makes each a single test (no
  correction for the many frequencies is needed); excess and deficit are
  two one-sided tests, so flagging either at level a happens up to 2a of
  the time. The maximum's own size depends on the set sizes (the smaller
  set's noise), so `spectral_excess_null95` / `spectral_deficit_null05`
  give the splits' 95th / 5th percentile beside it: read the excess
  against that, not as an absolute effect.

  The FFT treats each image as periodic: content that differs at the
  image border (not the black border of a CT scan) puts power along the
  axes, where stripes show too. Needs square images of one size, at least
  8 px.
  """
  p_real, p_fake = power_spectra(real), power_spectra(fake)
  if p_real.shape[1:] != p_fake.shape[1:] or p_real.shape[1] != p_real.shape[2]:
    raise ValueError('spectral_test needs square images of one size: '
                     f'{p_real.shape[1:]} vs {p_fake.shape[1:]}')
  n = p_real.shape[1]
  if n < 8:
    raise ValueError(f'spectral_test needs images of at least 8 px, not {n}')
  if num_permutations < 1:
    raise ValueError(f'num_permutations={num_permutations} must be >= 1')
  fy, fx = np.indices((n, n)) - n // 2
  band = np.hypot(fy, fx) >= min_radius * n
  m, total = len(p_fake), len(p_fake) + len(p_real)
  pooled = np.concatenate([p_fake, p_real]).reshape(total, -1)
  del p_real, p_fake
  # A power floor far below any real power: keeps log10 finite where a set
  # has none at a frequency, without moving any ratio that matters.
  floor = 1e-9 * float(pooled.mean()) + np.finfo(np.float32).tiny

  def log_ratio(order):  # [k, N] orders -> [k, band] log10(fake / real)
    k = len(order)
    w_fake = np.zeros((k, total), np.float32)
    np.put_along_axis(w_fake, order[:, :m], 1.0 / m, axis=1)
    w_real = np.where(w_fake > 0, 0.0, 1.0 / (total - m)).astype(np.float32)
    f, r = [scipy.ndimage.uniform_filter(
        (w @ pooled).reshape(k, n, n), (1, smooth, smooth), mode='wrap')
            for w in (w_fake, w_real)]
    return np.log10((f + floor) / (r + floor))[:, band]

  # The observed split is the identity order, through the same code.
  observed = log_ratio(np.arange(total)[None])[0]
  rng = np.random.default_rng(seed)
  null_hi, null_lo = [], []
  for start in range(0, num_permutations, 50):
    k = min(50, num_permutations - start)
    lr = log_ratio(np.stack([rng.permutation(total) for _ in range(k)]))
    null_hi.append(lr.max(axis=1))
    null_lo.append(lr.min(axis=1))
  null_hi, null_lo = np.concatenate(null_hi), np.concatenate(null_lo)
  hi, lo = float(observed.max()), float(observed.min())
  at = int(np.argmax(observed))
  return {
      'spectral_excess': hi,
      'spectral_excess_p': float((1 + np.sum(null_hi >= hi))
                                 / (1 + num_permutations)),
      'spectral_excess_null95': float(np.quantile(null_hi, 0.95)),
      'spectral_excess_at': [int(fy[band][at]), int(fx[band][at])],
      'spectral_deficit': lo,
      'spectral_deficit_p': float((1 + np.sum(null_lo <= lo))
                                  / (1 + num_permutations)),
      'spectral_deficit_null05': float(np.quantile(null_lo, 0.05)),
      'spectral_permutations': int(num_permutations),
  }
