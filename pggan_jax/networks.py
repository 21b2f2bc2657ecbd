"""PGGAN generator and critic (the official `G_paper` / `D_paper`), Flax NNX.

Both networks are built at the final resolution; a call runs only the blocks
up to a *static* `stage` (0 = 4x4, 1 = 8x8, ...), and a *traced* `alpha` in
[0, 1] fades the newest block in:

  G(z) = lerp(upsample(toRGB_{s-1}(h_{s-1})), toRGB_s(block_s(h_{s-1})), alpha)
  D(x) = D_{<s}(lerp(fromRGB_{s-1}(avgpool(x)), block_s(fromRGB_s(x)), alpha))

so one compiled step serves a whole phase (stabilise and fade-in). Feature
maps at resolution 2**r are `nf(r - 1)` with `nf(i) = min(fmap_base / 2**i,
fmap_max)` as in the official code (8192 and 512 in the paper).

Class-conditional option (`num_classes > 0`; one model for all classes):
  * G: a learned label embedding (latent_size, N(0,1), pixel-normalised like
    z) is concatenated to the normalised latent, as the official G
    concatenates labels to latents;
  * D: projection discriminator (Miyato & Koyama 2018): score = dense(h) +
    <embed(y), h> on the last hidden features h. Unlike the official AC-GAN
    head this keeps the WGAN-GP critic a single scalar.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

from pggan_jax import layers


def num_features(res_log2: int, fmap_base: int, fmap_max: int) -> int:
  """Official `nf(res - 1)`: feature maps of the block at 2**res_log2."""
  return min(int(fmap_base / 2.0 ** (res_log2 - 1)), fmap_max)


def num_stages(resolution: int) -> int:
  """4 -> 1, 8 -> 2, ...: how many resolution stages reach `resolution`."""
  log2 = int(math.log2(resolution))
  if resolution < 4 or 2 ** log2 != resolution:
    raise ValueError(f'resolution {resolution} is not a power of two >= 4')
  return log2 - 1


def stage_resolution(stage: int) -> int:
  return 4 * 2 ** stage


class Generator(nnx.Module):
  """Progressive generator: latent [N, latent_size] -> images [N, R, R, C]."""

  def __init__(self, *, resolution: int, channels: int = 1,
               latent_size: int | None = None, fmap_base: int = 8192,
               fmap_max: int = 512, num_classes: int = 0,
               upsample: str = 'nearest', dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    nf = lambda r: num_features(r, fmap_base, fmap_max)
    self.num_stages = num_stages(resolution)
    self.latent_size = latent_size or min(fmap_base, fmap_max)
    # How each block upsamples its input features (layers.upsample2x); the
    # fade-in's upsampled toRGB image stays nearest, as the faded reals.
    self.upsample = upsample
    self.num_classes = num_classes
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    in_size = self.latent_size
    if num_classes:
      self.embed = nnx.Param(jax.random.normal(
          rngs.params(), (num_classes, self.latent_size), param_dtype))
      in_size += self.latent_size
    # Gain sqrt(2)/4 matches the official (Theano-derived) 4x4 dense layer.
    self.dense = layers.EqualizedDense(in_size, nf(2) * 16,
                                       gain=layers.SQRT2 / 4, **kw)
    self.conv4 = layers.EqualizedConv(nf(2), nf(2), 3, **kw)
    blocks, to_rgb = [], [layers.EqualizedConv(nf(2), channels, 1, gain=1.0,
                                               **kw)]
    for r in range(3, self.num_stages + 2):
      blocks.append(nnx.List([
          layers.EqualizedConv(nf(r - 1), nf(r), 3, **kw),
          layers.EqualizedConv(nf(r), nf(r), 3, **kw)]))
      to_rgb.append(layers.EqualizedConv(nf(r), channels, 1, gain=1.0, **kw))
    self.blocks = nnx.List(blocks)
    self.to_rgb = nnx.List(to_rgb)

  def _features(self, z, labels, stage):
    """Features after `stage` blocks and after `stage - 1` (or None)."""
    x = layers.pixel_norm(z.astype(jnp.float32))
    if self.num_classes:
      e = layers.pixel_norm(jnp.take(self.embed[...], labels, axis=0))
      x = jnp.concatenate([x, e], axis=-1)
    act = lambda y: layers.pixel_norm(layers.leaky_relu(y))
    # Reshape before the pixel norm: it is per pixel (over the nf(2)
    # channels of each of the 16 positions), as in the official G_paper.
    x = act(self.dense(x).reshape(z.shape[0], 4, 4, -1))
    x = act(self.conv4(x))
    prev = None
    for conv0, conv1 in self.blocks[:stage]:
      prev = x
      x = act(conv0(layers.upsample2x(x, self.upsample)))
      x = act(conv1(x))
    return x, prev

  def __call__(self, z: jax.Array, labels: jax.Array | None = None,
               alpha: jax.Array | float = 1.0, *, stage: int) -> jax.Array:
    """Images at resolution 4 * 2**stage, float32, roughly in [-1, 1]."""
    if not 0 <= stage < self.num_stages:
      raise ValueError(f'stage {stage} not in [0, {self.num_stages})')
    x, prev = self._features(z, labels, stage)
    img = self.to_rgb[stage](x).astype(jnp.float32)
    if stage > 0:
      low = layers.upsample2x(self.to_rgb[stage - 1](prev)).astype(jnp.float32)
      img = low + (img - low) * alpha
    return img


class Discriminator(nnx.Module):
  """Progressive WGAN critic: images [N, R, R, C] -> scores [N] (float32)."""

  def __init__(self, *, resolution: int, channels: int = 1,
               fmap_base: int = 8192, fmap_max: int = 512,
               mbstd_group_size: int = 4, num_classes: int = 0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    nf = lambda r: num_features(r, fmap_base, fmap_max)
    self.num_stages = num_stages(resolution)
    self.mbstd_group_size = mbstd_group_size
    self.num_classes = num_classes
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    from_rgb, blocks = [layers.EqualizedConv(channels, nf(2), 1, **kw)], []
    for r in range(3, self.num_stages + 2):
      from_rgb.append(layers.EqualizedConv(channels, nf(r), 1, **kw))
      blocks.append(nnx.List([
          layers.EqualizedConv(nf(r), nf(r), 3, **kw),
          layers.EqualizedConv(nf(r), nf(r - 1), 3, **kw)]))
    self.from_rgb = nnx.List(from_rgb)
    self.blocks = nnx.List(blocks)
    extra = 1 if mbstd_group_size > 1 else 0
    self.conv4 = layers.EqualizedConv(nf(2) + extra, nf(2), 3, **kw)
    self.dense0 = layers.EqualizedDense(nf(2) * 16, nf(1), **kw)
    self.dense1 = layers.EqualizedDense(nf(1), 1, gain=1.0, **kw)
    if num_classes:
      self.embed = nnx.Param(jax.random.normal(
          rngs.params(), (num_classes, nf(1)), param_dtype))

  def _block(self, i, h):
    conv0, conv1 = self.blocks[i]
    h = layers.leaky_relu(conv0(h))
    return layers.downsample2x(layers.leaky_relu(conv1(h)))

  def __call__(self, x: jax.Array, labels: jax.Array | None = None,
               alpha: jax.Array | float = 1.0, *, stage: int) -> jax.Array:
    if not 0 <= stage < self.num_stages:
      raise ValueError(f'stage {stage} not in [0, {self.num_stages})')
    act = layers.leaky_relu
    h = act(self.from_rgb[stage](x))
    if stage > 0:
      h = self._block(stage - 1, h)
      low = act(self.from_rgb[stage - 1](layers.downsample2x(x)))
      h = low + (h - low) * jnp.asarray(alpha, h.dtype)
      for i in reversed(range(stage - 1)):
        h = self._block(i, h)
    if self.mbstd_group_size > 1:
      h = layers.minibatch_stddev(h, self.mbstd_group_size)
    h = act(self.conv4(h))
    h = act(self.dense0(h.reshape(h.shape[0], -1)))
    out = self.dense1(h)[:, 0].astype(jnp.float32)
    if self.num_classes:
      e = jnp.take(self.embed[...], labels, axis=0)
      # Equalized-LR scale for the projection as for a dense layer.
      out = out + jnp.sum(e * h.astype(jnp.float32), -1) / math.sqrt(
          e.shape[-1])
    return out


def build(config, rngs: nnx.Rngs) -> tuple[Generator, Discriminator]:
  """G and D from a pggan config (`config.model`, `config.data`)."""
  m = config.model
  dtype = jnp.dtype(config.dtype)
  common = dict(resolution=m.resolution, channels=m.channels,
                fmap_base=m.fmap_base, fmap_max=m.fmap_max,
                num_classes=m.num_classes, dtype=dtype,
                param_dtype=jnp.float32, rngs=rngs)
  g = Generator(latent_size=m.latent_size or None,
                upsample=m.get('upsample', 'nearest'), **common)
  d = Discriminator(mbstd_group_size=m.mbstd_group_size, **common)
  return g, d
