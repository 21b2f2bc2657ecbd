"""Tests for pggan_jax.layers and the fade-in of pggan_jax.networks."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pggan_jax import layers
from pggan_jax import networks


def test_equalized_dense_scales_weights_at_runtime():
  layer = layers.EqualizedDense(8, 3, gain=2.0, rngs=nnx.Rngs(0))
  w = np.asarray(layer.kernel[...])
  x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
  # Stored weights are N(0, 1); the He constant gain / sqrt(fan_in) is
  # applied in the forward pass only.
  np.testing.assert_allclose(np.asarray(layer(x)), x @ (w * 2.0 / math.sqrt(8)),
                             rtol=1e-5, atol=1e-5)


def test_equalized_conv_scale_uses_kernel_fan_in():
  layer = layers.EqualizedConv(4, 2, 3, rngs=nnx.Rngs(0))
  assert layer.scale == pytest.approx(math.sqrt(2) / math.sqrt(4 * 9))
  x = np.zeros((1, 5, 5, 4), np.float32)
  x[0, 2, 2, :] = 1.0
  y = np.asarray(layer(x))
  w = np.asarray(layer.kernel[...]) * layer.scale
  # A unit impulse at the centre picks the flipped kernel tap sum.
  np.testing.assert_allclose(y[0, 2, 2], w[1, 1].sum(0), rtol=1e-5)


def test_pixel_norm_unit_rms_per_pixel():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 16)) * 7.0
  y = np.asarray(layers.pixel_norm(x))
  np.testing.assert_allclose(np.sqrt((y ** 2).mean(-1)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(y[0, 0, 0] / y[0, 0, 0, 0],
                             np.asarray(x[0, 0, 0] / x[0, 0, 0, 0]), rtol=1e-5)


def test_minibatch_stddev_shape_and_value():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)
  y = np.asarray(layers.minibatch_stddev(jnp.asarray(x), group_size=4))
  assert y.shape == (8, 2, 2, 4)
  np.testing.assert_array_equal(y[..., :3], x)
  # Official grouping: image i is in group i % (N / G).
  for m in range(2):
    group = x[m::2]
    expected = np.sqrt(group.var(axis=0) + 1e-8).mean()
    np.testing.assert_allclose(y[m::2, ..., 3], expected, rtol=1e-5)


def test_up_and_down_sampling():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(layers.downsample2x(layers.upsample2x(x)), x)
  np.testing.assert_allclose(layers.downsample2x(x)[0, 0, 0, 0],
                             (0 + 1 + 4 + 5) / 4)


def test_bilinear_upsampling_is_a_low_pass():
  # A constant stays constant; a random image keeps its mean; bilinear
  # leaves far less power than nearest at the high frequencies that
  # upsampling creates (images of each frequency beyond the old Nyquist,
  # 8 cycles per image here, where nearest's duplicated pixels put power).
  c = jnp.full((1, 4, 4, 1), 0.3)
  np.testing.assert_allclose(layers.upsample2x(c, 'bilinear'), 0.3,
                             rtol=1e-6)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 1))
  near, bil = layers.upsample2x(x), layers.upsample2x(x, 'bilinear')
  assert near.shape == bil.shape == (8, 32, 32, 1)
  np.testing.assert_allclose(bil.mean(), x.mean(), atol=1e-5)

  def high(y):   # mean power at 9..16 cycles per image along either axis
    p = jnp.abs(jnp.fft.fft2(y[..., 0])) ** 2
    return float(jnp.mean(p[:, 9:24, :]) + jnp.mean(p[:, :, 9:24]))

  assert high(bil) < 0.5 * high(near)
  with pytest.raises(ValueError, match="'cubic' not in"):
    layers.upsample2x(x, 'cubic')


def _nets(upsample='nearest'):
  kw = dict(resolution=16, channels=1, fmap_base=64, fmap_max=16)
  return (networks.Generator(**kw, upsample=upsample, rngs=nnx.Rngs(0)),
          networks.Discriminator(**kw, rngs=nnx.Rngs(1)))


@pytest.mark.parametrize('stage, upsample', [(1, 'nearest'), (2, 'nearest'),
                                             (2, 'bilinear')])
def test_generator_fade_in_endpoints(stage, upsample):
  g, _ = _nets(upsample)
  z = jax.random.normal(jax.random.key(0), (4, g.latent_size))

  @jax.jit  # one compilation instead of many eager ops
  def run(z):
    x, prev = g._features(z, None, stage)
    return (g(z, alpha=0.0, stage=stage), g(z, alpha=1.0, stage=stage),
            layers.upsample2x(g(z, alpha=1.0, stage=stage - 1)),
            g.to_rgb[stage](x), layers.upsample2x(g.to_rgb[stage - 1](prev)))

  out0, out1, lower_path, new, low = map(np.asarray, run(z))
  # alpha = 0: the lower-resolution image, upsampled; alpha = 1: new block.
  np.testing.assert_allclose(out0, lower_path, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(low, lower_path, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out1, new, rtol=1e-5, atol=1e-6)
  assert not np.allclose(new, low, atol=1e-3)


@pytest.mark.parametrize('stage', [1, 2])
def test_discriminator_fade_in_endpoints(stage):
  _, d = _nets()
  r = 4 * 2 ** stage
  x = jax.random.normal(jax.random.key(1), (4, r, r, 1))
  run = jax.jit(lambda x: (d(x, alpha=0.0, stage=stage),
                           d(layers.downsample2x(x), alpha=1.0,
                             stage=stage - 1),
                           d(x, alpha=1.0, stage=stage)))
  out0, lower, out1 = map(np.asarray, run(x))
  # alpha = 0: the critic of the lower stage on the average-pooled input.
  np.testing.assert_allclose(out0, lower, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out1, lower, atol=1e-4)
  # alpha = 1: only the new fromRGB + block (the old fromRGB is unused).
  d.from_rgb[stage - 1].bias[...] = d.from_rgb[stage - 1].bias[...] + 1.0
  np.testing.assert_allclose(np.asarray(run(x)[2]), out1, rtol=1e-5,
                             atol=1e-6)


def test_feature_maps_follow_official_formula():
  g = nnx.eval_shape(lambda: networks.Generator(
      resolution=256, fmap_base=8192, fmap_max=512, rngs=nnx.Rngs(0)))
  assert g.latent_size == 512
  # nf(r - 1) = min(8192 / 2**(r - 1), 512): 512 up to 32x32, then 256,
  # 128 at 64x64, 128x128, 256x256 -> 256, 128, 64.
  outs = [b[1].kernel.shape[-1] for b in g.blocks]
  assert outs == [512, 512, 512, 256, 128, 64]


def test_generator_first_pixel_norm_is_per_pixel():
  g, _ = _nets()
  z = jax.random.normal(jax.random.key(0), (2, g.latent_size))
  x = np.asarray(g.dense(layers.pixel_norm(z))).reshape(2, 4, 4, -1)
  x = np.maximum(x, 0.2 * x)
  # Official G_paper: reshape to 4x4, then normalise each pixel's features.
  x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-8)
  expected = layers.pixel_norm(layers.leaky_relu(g.conv4(jnp.asarray(x))))
  got, _ = g._features(z, None, 0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                             rtol=1e-4, atol=1e-5)


def test_generator_upsampling_option():
  """model.upsample changes G's blocks, not its parameters."""
  near, _ = _nets('nearest')
  bil, _ = _nets('bilinear')
  z = jax.random.normal(jax.random.key(1), (2, near.latent_size))
  a, b = near(z, stage=2), bil(z, stage=2)
  assert a.shape == b.shape == (2, 16, 16, 1)
  assert not np.allclose(a, b, atol=1e-3)
  np.testing.assert_array_equal(near(z, stage=0), bil(z, stage=0))
