"""PGGAN building blocks (Karras et al. 2018, section 4), NHWC, Flax NNX.

* Equalized learning rate: weights are stored as N(0, 1) and multiplied at
  run time by the He constant `gain / sqrt(fan_in)`, so Adam sees every
  weight on the same scale (paper section 4.1).
* Pixelwise feature normalisation: `x / sqrt(mean_c(x^2) + eps)` (4.2).
* Minibatch standard deviation as one extra feature map (3).
* Nearest-neighbour upsampling, 2x2 average-pool downsampling.

Parameters are float32; `dtype` is the compute dtype (bfloat16 for mixed
precision): weights and inputs are cast to it just before each matmul/conv.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

SQRT2 = math.sqrt(2.0)


def leaky_relu(x: jax.Array, slope: float = 0.2) -> jax.Array:
  return jnp.maximum(x, x * slope)


UPSAMPLE_METHODS = ('nearest', 'bilinear')


def upsample2x(x: jax.Array, method: str = 'nearest') -> jax.Array:
  """2x upsampling of NHWC images: nearest neighbour (the PGGAN paper's)
  or bilinear (jax.image.resize; a low-pass that leaves less power at the
  new Nyquist frequency, as StyleGAN's filtered upsampling)."""
  if method == 'nearest':
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if method == 'bilinear':
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), 'bilinear')
  raise ValueError(f'upsample method {method!r} not in {UPSAMPLE_METHODS}')


def downsample2x(x: jax.Array) -> jax.Array:
  """2x2 box filter (average pooling, stride 2) of NHWC images."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def pixel_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Normalises each pixel's feature vector to unit RMS over channels."""
  ms = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(ms + eps).astype(x.dtype)


def minibatch_stddev(x: jax.Array, group_size: int = 4) -> jax.Array:
  """Appends the mean over features of the per-group stddev as a channel.

  The batch is split into groups of `min(group_size, N)` images (N must be
  divisible by it, as in the official code); images `i` and `i + N/G` share a
  group (the official reshape `[G, M, ...]`). Within a group the stddev of
  every feature and pixel is taken, averaged to one scalar per group and
  broadcast as an extra [H, W, 1] feature map.
  """
  n, h, w, c = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(f'batch {n} is not divisible by mbstd group size {g}')
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, c)
  y = y - y.mean(axis=0, keepdims=True)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)    # [M, H, W, C]
  y = y.mean(axis=(1, 2, 3))                                # [M]
  y = jnp.tile(y, g).astype(x.dtype)                        # [N]
  y = jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1))
  return jnp.concatenate([x, y], axis=-1)


class EqualizedDense(nnx.Module):
  """Dense layer with equalized learning rate: y = x @ (w * c) + b."""

  def __init__(self, in_features: int, out_features: int, *,
               gain: float = SQRT2, use_bias: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = gain / math.sqrt(in_features)
    self.dtype = dtype
    self.kernel = nnx.Param(jax.random.normal(
        rngs.params(), (in_features, out_features), param_dtype))
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype))
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    w = (self.kernel[...] * self.scale).astype(self.dtype)
    y = jnp.dot(x.astype(self.dtype), w)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class EqualizedConv(nnx.Module):
  """'SAME' stride-1 conv (NHWC, HWIO kernel) with equalized learning rate."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               gain: float = SQRT2, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = gain / math.sqrt(in_features * kernel_size * kernel_size)
    self.dtype = dtype
    self.kernel = nnx.Param(jax.random.normal(
        rngs.params(), (kernel_size, kernel_size, in_features, out_features),
        param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    w = (self.kernel[...] * self.scale).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + self.bias[...].astype(self.dtype)
