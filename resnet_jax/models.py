"""ResNet v1.5 in Flax NNX (NHWC), for binary CT classification.

v1.5 puts the stride of a bottleneck block on its 3x3 convolution (not on the
first 1x1), as torchvision and the Flax ImageNet example do. Variants are
partials of one class, like the Flax example:

  model = ResNet18(num_classes=2, num_channels=1, num_filters=16,
                   rngs=nnx.Rngs(0))
  model.train()   # BatchNorm uses batch statistics and updates its averages
  model.eval()    # BatchNorm uses the running averages

`dtype` is the compute dtype (e.g. bfloat16); parameters stay float32
(`param_dtype`) and the logits are returned as float32.

`pointwise_dot` (default True) computes the 1x1 convolutions (all of them
strided or not: bottleneck in/out and projections) as a matmul over
channels. Same parameters ([1, 1, cin, cout] kernels) and the same maths as
the convolution; on XLA:CPU it is much faster, mainly in the backward pass:
XLA lowers a 1x1 conv's weight gradient to a convolution with an HxW window
plus layout transposes, whereas the dot's is a single GEMM (see
benchmarks/resnet_step.py).

Two variants of the stem, for benchmarks/resnet_step.py to time on a GPU
(same parameters, outputs and gradients; defaults unchanged):
`stem_pad_channels=4` zero-pads the input channels of the 7x7 convolution
(and its kernel, in the computation only) to 4, and `max_pool='slices'`
takes the 3x3/2 max-pool as the maximum of 9 strided slices, whose
gradient is elementwise selects instead of select-and-scatter (at ties it
splits the gradient; after a ReLU the ties are zeros, whose gradient the
ReLU stops).
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

# He (fan_out) initialisation, as torchvision's ResNet.
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _pointwise_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                    rhs_dilation=None, dimension_numbers=None,
                    feature_group_count=1, precision=None, **kwargs):
  """lax.conv_general_dilated for nnx.Conv's NHWC/HWIO 1x1 convs, as a dot.

  y[b, i, j, o] = sum_c x[b, s*i, s*j, c] * w[0, 0, c, o] is exactly a 1x1
  convolution with zero padding and stride s. Anything else falls through to
  lax.conv_general_dilated.
  """
  simple = (
      rhs.ndim == 4 and rhs.shape[:2] == (1, 1) and feature_group_count == 1
      and all(tuple(p) == (0, 0) for p in padding)
      and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
      and tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1),
                                       (0, 3, 1, 2))
      and not kwargs.get('out_sharding'))
  if not simple:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        **kwargs)
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    lhs = lhs[:, ::sh, ::sw, :]
  return lax.dot_general(
      lhs, rhs.reshape(rhs.shape[2:]), (((3,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=kwargs.get('preferred_element_type'))


def _padded_channels_conv(channels: int):
  """lax.conv_general_dilated with the input channels (NHWC lhs, HWIO rhs)
  zero-padded to `channels`: the same output and weight gradient."""
  def conv(lhs, rhs, *args, **kwargs):
    extra = channels - lhs.shape[-1]
    if extra > 0:
      lhs = jnp.pad(lhs, ((0, 0),) * 3 + ((0, extra),))
      rhs = jnp.pad(rhs, ((0, 0),) * 2 + ((0, extra), (0, 0)))
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
  return conv


def _max_pool_slices(x: jax.Array) -> jax.Array:
  """nnx.max_pool(x, (3, 3), (2, 2), padding 1) as the max of 9 strided
  slices: its gradient is elementwise selects, not select_and_scatter."""
  h, w = x.shape[1:3]
  oh, ow = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
               constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      s = xp[:, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2, :]
      out = s if out is None else jnp.maximum(out, s)
  return out


def _conv(cin: int, cout: int, kernel: int, stride: int, *, dtype: Any,
          rngs: nnx.Rngs, pointwise_dot: bool = True,
          pad_channels: int = 0) -> nnx.Conv:
  pad = (kernel - 1) // 2
  extra = {}
  if pointwise_dot and kernel == 1:
    extra['conv_general_dilated'] = _pointwise_conv
  elif pad_channels > cin:
    extra['conv_general_dilated'] = _padded_channels_conv(pad_channels)
  return nnx.Conv(
      cin, cout, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
      param_dtype=jnp.float32, kernel_init=_conv_init, rngs=rngs, **extra)


def _norm(features: int, *, dtype: Any, rngs: nnx.Rngs,
          zero_init: bool = False) -> nnx.BatchNorm:
  # momentum 0.9 / eps 1e-5 as torch and the Flax ImageNet example. A
  # zero-initialised last scale makes each residual block start as identity.
  return nnx.BatchNorm(
      features, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=(nnx.initializers.zeros_init() if zero_init
                  else nnx.initializers.ones_init()),
      rngs=rngs)


class ResNetBlock(nnx.Module):
  """Basic block: 3x3 -> 3x3, output channels = filters."""

  expansion = 1

  def __init__(self, in_features: int, filters: int, *, strides: int = 1,
               dtype: Any = jnp.float32, pointwise_dot: bool = True,
               rngs: nnx.Rngs):
    c = functools.partial(_conv, dtype=dtype, rngs=rngs,
                          pointwise_dot=pointwise_dot)
    self.conv1 = c(in_features, filters, 3, strides)
    self.bn1 = _norm(filters, dtype=dtype, rngs=rngs)
    self.conv2 = c(filters, filters, 3, 1)
    self.bn2 = _norm(filters, dtype=dtype, rngs=rngs, zero_init=True)
    if strides != 1 or in_features != filters:
      self.proj = c(in_features, filters, 1, strides)
      self.proj_bn = _norm(filters, dtype=dtype, rngs=rngs)
    else:
      self.proj = self.proj_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.proj is None else self.proj_bn(self.proj(x))
    return nnx.relu(residual + y)


class BottleneckResNetBlock(nnx.Module):
  """Bottleneck: 1x1 -> 3x3 (strided, v1.5) -> 1x1, output = 4 * filters."""

  expansion = 4

  def __init__(self, in_features: int, filters: int, *, strides: int = 1,
               dtype: Any = jnp.float32, pointwise_dot: bool = True,
               rngs: nnx.Rngs):
    c = functools.partial(_conv, dtype=dtype, rngs=rngs,
                          pointwise_dot=pointwise_dot)
    out = filters * self.expansion
    self.conv1 = c(in_features, filters, 1, 1)
    self.bn1 = _norm(filters, dtype=dtype, rngs=rngs)
    self.conv2 = c(filters, filters, 3, strides)
    self.bn2 = _norm(filters, dtype=dtype, rngs=rngs)
    self.conv3 = c(filters, out, 1, 1)
    self.bn3 = _norm(out, dtype=dtype, rngs=rngs, zero_init=True)
    if strides != 1 or in_features != out:
      self.proj = c(in_features, out, 1, strides)
      self.proj_bn = _norm(out, dtype=dtype, rngs=rngs)
    else:
      self.proj = self.proj_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    residual = x if self.proj is None else self.proj_bn(self.proj(x))
    return nnx.relu(residual + y)


class ResNet(nnx.Module):
  """ResNet v1.5: 7x7/2 stem, 3x3/2 max-pool, stages, global average pool.

  Stage i has `num_filters * 2**i` filters; its first block strides by 2
  (except stage 0, which follows the max-pool).
  """

  def __init__(self, *, stage_sizes: Sequence[int], block_cls: Callable[...,
                                                                       Any],
               num_classes: int = 2, num_filters: int = 64,
               num_channels: int = 1, dtype: Any = jnp.float32,
               pointwise_dot: bool = True, stem_pad_channels: int = 0,
               max_pool: str = 'window', rngs: nnx.Rngs):
    if max_pool not in ('window', 'slices'):
      raise ValueError(f"max_pool={max_pool!r}: 'window' or 'slices'")
    self.dtype = dtype
    self.max_pool = max_pool
    self.stem = _conv(num_channels, num_filters, 7, 2, dtype=dtype, rngs=rngs,
                      pad_channels=stem_pad_channels)
    self.stem_bn = _norm(num_filters, dtype=dtype, rngs=rngs)
    blocks = []
    features = num_filters
    for i, size in enumerate(stage_sizes):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(block_cls(features, num_filters * 2**i, strides=strides,
                                dtype=dtype, pointwise_dot=pointwise_dot,
                                rngs=rngs))
        features = num_filters * 2**i * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = features
    self.head = nnx.Linear(features, num_classes, dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] images -> penultimate (global-average-pooled) features."""
    x = x.astype(self.dtype)
    x = nnx.relu(self.stem_bn(self.stem(x)))
    if self.max_pool == 'slices':
      x = _max_pool_slices(x)
    else:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] images in [-1, 1] -> float32 logits [B, num_classes]."""
    return self.head(self.features(x)).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BottleneckResNetBlock)

# Tiny variant for tests only.
_ResNet1 = functools.partial(ResNet, stage_sizes=(1,), block_cls=ResNetBlock)

MODELS = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    '_resnet1': _ResNet1,
}
