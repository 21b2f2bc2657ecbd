"""Tests for pggan_jax/quality.py: multi-scale SWD and MS-SSIM."""

import numpy as np
import pytest
import scipy.ndimage

from pggan_jax import quality


def _textures(n, size=32, seed=0, smooth=1.5):
  """Smooth random textures in [-1, 1], [n, size, size, 1]."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, size, size, 1))
  x = scipy.ndimage.gaussian_filter(x, (0, smooth, smooth, 0))
  return np.tanh(3 * x / x.std()).astype(np.float32)


def _blur(x, sigma):
  return scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0)).astype(
      np.float32)


def test_swd_self_is_zero_and_keys():
  x = _textures(20, size=64)
  out = quality.sliced_wasserstein(x, x)
  assert set(out) == {'swd', 'swd/64', 'swd/32', 'swd/16'}
  assert out['swd'] == pytest.approx(0.0, abs=1e-6)


def test_swd_grows_with_blur():
  x = _textures(40, size=32, seed=1)
  y = _textures(40, size=32, seed=2)
  floor = quality.sliced_wasserstein(x, y)['swd']
  values = [quality.sliced_wasserstein(x, _blur(y, s))['swd']
            for s in (0.7, 1.5, 3.0)]
  assert floor < values[0] < values[1] < values[2]
  # An independent sample of the same textures is far closer than a blur.
  assert values[1] > 2 * floor


def test_swd_uint8_matches_float_and_unequal_n():
  x = _textures(30, size=32, seed=3)
  y = _textures(12, size=32, seed=4)
  u = np.round((x + 1) * 127.5).astype(np.uint8)
  a = quality.sliced_wasserstein(x, y)['swd']
  b = quality.sliced_wasserstein(u, y)['swd']
  # uint8 rounding only: per-set normalisation removes the scale.
  assert b == pytest.approx(a, rel=0.02)


def test_swd_small_images_single_level():
  x, y = _textures(6, size=8, seed=5), _textures(6, size=8, seed=6)
  out = quality.sliced_wasserstein(x, y)
  assert set(out) == {'swd', 'swd/8'}
  assert out['swd'] > 0


def test_swd_matches_one_dimensional_wasserstein():
  # One 1x1 'patch' per image of a constant image: SWD is the 1-D W1 of the
  # standardised pixel values, here two point sets with known distance.
  a = np.array([-1., 0., 1.], np.float32)[:, None, None, None]
  b = np.array([-1., 0., 1.], np.float32)[::-1, None, None, None] * 1.0
  out = quality.sliced_wasserstein(a, b, patch_size=1, patches_per_image=1,
                                   min_resolution=1)
  assert out['swd'] == pytest.approx(0.0, abs=1e-6)
  c = np.array([-1., -1., 1.], np.float32)[:, None, None, None]
  out = quality.sliced_wasserstein(a, c, patch_size=1, patches_per_image=1,
                                   min_resolution=1)
  # Standardised: a -> (-1.2247, 0, 1.2247), c -> (-0.7071, -0.7071, 1.4142).
  za = np.array([-1., 0., 1.]) / np.std([-1., 0., 1.])
  zc = (np.array([-1., -1., 1.]) + 1 / 3) / np.std([-1., -1., 1.])
  assert out['swd'] == pytest.approx(1e3 * np.mean(np.abs(za - zc)),
                                     rel=1e-4)


def test_swd_rejects_size_mismatch():
  with pytest.raises(ValueError, match='differ in size'):
    quality.sliced_wasserstein(_textures(2, 32), _textures(2, 16))


def test_ms_ssim_identical_is_one():
  x = _textures(4, size=64, seed=7)
  np.testing.assert_allclose(quality.ms_ssim(x, x), 1.0, atol=1e-9)
  assert quality.ms_ssim(x[0], x[0]) == pytest.approx(1.0)


def test_ms_ssim_orders_distortions():
  x = _textures(4, size=64, seed=8)
  y = _textures(4, size=64, seed=9)
  mild = quality.ms_ssim(x, _blur(x, 0.5)).mean()
  strong = quality.ms_ssim(x, _blur(x, 2.0)).mean()
  unrelated = quality.ms_ssim(x, y).mean()
  assert 1.0 > mild > strong > unrelated >= 0.0


def test_ms_ssim_scales():
  assert quality.num_ms_ssim_scales(256) == 5
  assert quality.num_ms_ssim_scales(64) == 3
  assert quality.num_ms_ssim_scales(11) == 1
  with pytest.raises(ValueError):
    quality.num_ms_ssim_scales(8)


def test_ms_ssim_single_scale_is_ssim_by_hand():
  # 11x11 images: one scale, one window position; SSIM from the formula.
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (11, 11, 1))
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1)
  g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5)**2)
  w = np.outer(g, g) / np.outer(g, g).sum()
  a, b = (x[..., 0] + 1) / 2, (y[..., 0] + 1) / 2  # [0, 1], data range 1.
  mx, my = (w * a).sum(), (w * b).sum()
  vx = (w * a**2).sum() - mx**2
  vy = (w * b**2).sum() - my**2
  cxy = (w * a * b).sum() - mx * my
  c1, c2 = 0.01**2, 0.03**2
  want = ((2 * mx * my + c1) * (2 * cxy + c2) /
          ((mx**2 + my**2 + c1) * (vx + vy + c2)))
  assert quality.ms_ssim(x, y) == pytest.approx(want, rel=1e-6)


def test_mean_pairwise_ms_ssim_detects_collapse():
  diverse = _textures(12, size=64, seed=10)
  collapsed = np.repeat(diverse[:1], 12, axis=0)
  collapsed = collapsed + np.random.default_rng(0).normal(
      0, 0.02, collapsed.shape).astype(np.float32)
  d = quality.mean_pairwise_ms_ssim(diverse, num_pairs=30)
  c = quality.mean_pairwise_ms_ssim(collapsed, num_pairs=30)
  assert c > 0.9 > d
  # All pairs when few: the same with any seed.
  assert quality.mean_pairwise_ms_ssim(diverse[:4], seed=1) == pytest.approx(
      quality.mean_pairwise_ms_ssim(diverse[:4], seed=2))
  with pytest.raises(ValueError):
    quality.mean_pairwise_ms_ssim(diverse[:1])


def _stripes(x, amplitude):
  """x plus horizontal lines alternating every row (period 2 px: the
  Nyquist row frequency), as nearest-neighbour upsampling leaves."""
  rows = np.where(np.arange(x.shape[1]) % 2 == 0, 1.0, -1.0)
  return (x + amplitude * rows[None, :, None, None]).astype(np.float32)


def test_spectral_test_same_distribution_is_not_significant():
  # Independent draws of the same textures, the held-out set smaller (as in
  # the study): no excess or deficit beyond what random splits give.
  real, fake = _textures(20, size=32, seed=11), _textures(60, size=32, seed=12)
  out = quality.spectral_test(real, fake, num_permutations=99, seed=0)
  assert out['spectral_excess_p'] > 0.05
  assert out['spectral_deficit_p'] > 0.05
  assert out['spectral_permutations'] == 99


def test_spectral_test_finds_stripes_where_they_are():
  real = _textures(20, size=32, seed=11)
  fake = _stripes(_textures(60, size=32, seed=12), 0.05)
  out = quality.spectral_test(real, fake, num_permutations=99, seed=0)
  # The smallest p-value 99 splits can give; the excess at the row
  # frequency 16 cycles per image (fy = -16 after centring), fx = 0, to
  # within the 3 x 3 smoothing.
  assert out['spectral_excess_p'] == pytest.approx(0.01)
  assert out['spectral_excess'] > 0.5   # over 3x the power
  fy, fx = out['spectral_excess_at']
  assert abs(fy) >= 15 and abs(fx) <= 1
  # Nothing is missing: the stripes only add power.
  assert out['spectral_deficit_p'] > 0.05


def test_spectral_test_finds_blur_as_a_deficit():
  real = _textures(20, size=32, seed=11)
  fake = _blur(_textures(60, size=32, seed=12), 1.0)
  out = quality.spectral_test(real, fake, num_permutations=99, seed=0)
  assert out['spectral_deficit_p'] == pytest.approx(0.01)
  assert out['spectral_deficit'] < -1.0
  assert out['spectral_excess_p'] > 0.05


def test_spectral_test_is_seeded_and_takes_uint8():
  real, fake = _textures(10, size=16, seed=1), _textures(12, size=16, seed=2)
  a = quality.spectral_test(real, fake, num_permutations=30, seed=3)
  assert a == quality.spectral_test(real, fake, num_permutations=30, seed=3)
  to_u8 = lambda x: np.round((x + 1) * 127.5).astype(np.uint8)
  b = quality.spectral_test(to_u8(real), to_u8(fake), num_permutations=30,
                            seed=3)
  assert b['spectral_excess'] == pytest.approx(a['spectral_excess'], abs=0.02)


def test_spectral_test_rejects_bad_shapes():
  with pytest.raises(ValueError, match='square images of one size'):
    quality.spectral_test(_textures(4, size=16), _textures(4, size=32))
  with pytest.raises(ValueError, match='at least 8 px'):
    quality.spectral_test(_textures(4, size=4), _textures(4, size=4))
  with pytest.raises(ValueError, match='num_permutations=0'):
    quality.spectral_test(_textures(4, size=8), _textures(4, size=8),
                          num_permutations=0)


def test_spectral_test_p_values_are_calibrated_under_the_null():
  # 40 comparisons of independent sets of the same textures (sizes as in a
  # study cell): p-values spread over (0, 1], not piled up near 0.
  p = np.array([quality.spectral_test(
      _textures(20, size=16, seed=100 + i),
      _textures(40, size=16, seed=200 + i), num_permutations=49,
      seed=i)['spectral_excess_p'] for i in range(40)])
  assert np.mean(p <= 0.1) <= 0.2
  assert 0.3 <= np.median(p) <= 0.7


def test_spectral_test_ignores_low_frequencies_and_brightness():
  # Fakes that differ from the reals only below min_radius (a shading of
  # 2 cycles across the image, periodic as the FFT assumes) or in
  # brightness: not flagged; the same fakes with stripes are.
  real = _textures(20, size=32, seed=11)
  fake = _textures(60, size=32, seed=12)
  ramp = 0.5 * np.cos(2 * np.pi * 2 * np.arange(32) / 32).astype(
      np.float32)[None, :, None, None]
  for shifted in (fake + ramp, fake + 0.4):
    out = quality.spectral_test(real, shifted, num_permutations=99, seed=0)
    assert out['spectral_excess_p'] > 0.05, out
    assert out['spectral_excess'] < out['spectral_excess_null95'] + 0.05
  out = quality.spectral_test(real, _stripes(fake + ramp, 0.05),
                              num_permutations=99, seed=0)
  assert out['spectral_excess_p'] == pytest.approx(0.01)
  assert out['spectral_excess'] > out['spectral_excess_null95']
