"""Adaptive discriminator augmentation (ADA) for grayscale CT slices, JAX.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited
Data". Every image the critic sees, real or fake, in the critic and in the
generator step, goes through `augment(x, p, key)`: each enabled operation is
applied to each sample independently with probability p. The augmentation
is differentiable in x, so G learns through it, and it never changes what G
is asked to produce as long as every operation is *non-leaking*: the map
P -> (augmented P) is invertible, so matching augmented distributions still
means matching the clean ones. ADA shows this holds for its operations while
p stays below about 0.8 (an operation mixed with the identity at probability
1 - p; for a uniform shift or rotation the mixture's Fourier factor
(1 - p) + p * sinc first reaches 0 at p ~ 0.82). `ada_adjust` tunes p from
the overfitting heuristic r_t. Images are NHWC floats in [-1, 1], CT air
(the background) at -1.

Operations, and why each is (or is not) here for head CT:
  xflip       Left-right mirror, as ADA: with probability p a flip is drawn
              from {no, yes} uniformly, so a sample is mirrored with
              probability p / 2. Heads are nearly bilaterally symmetric and
              lesions occur on either side; drawing the flip 50/50 keeps the
              unflipped mode above 1/2 for every p < 1 (mirroring with
              probability p would hide all left-right asymmetry from D at
              p = 0.5, right where p settles).
  xint        Integer translation, uniform in +-xint_max of the side: the
              head's position in the field of view varies with placement.
  scale       Isotropic scaling 2^N(0, scale_std): head size and the
              reconstruction field of view vary.
  rotate      Rotation uniform in +-rotate_max degrees, before and after
              `aniso` (each with 1 - sqrt(1 - p), so some rotation with p):
              head tilt in the gantry. Limited range, unlike ADA's full
              circle: axial slices have a canonical orientation (anterior
              up), and sideways or upside-down heads are nothing the data
              hold.
  (rotate90)  Left out for the same reason: at p it puts 3p/4 of what D
              sees on sideways or upside-down heads.
  aniso       Anisotropic scaling 2^N(0, aniso_std) along a rotated axis:
              head shape (long or round skulls).
  xfrac       Fractional translation N(0, xfrac_std) of the side. Not in
              any preset: `xint` already moves the head, and ADA's std of
              1/8 pushes heads out of the field of view, which CT rarely
              shows. Enable it by name.
  brightness  Add b ~ N(0, brightness_std): a change of CT window level.
  contrast    Multiply by c = 2^N(0, contrast_std) about 0: a change of
              window width about the window centre. With brightness, the
              intensity map is c * (x + b), as ADA's for one channel. No
              clipping to [-1, 1]: a clip would stop G's gradient wherever
              it bites, and the data are already clipped at their window.
  (lumaflip, hue, saturation)  Meaningless (grey) or leaking (an inverted
              CT, bone black, is no CT); left out.
  cutout      A square of cutout_size of the side set to cutout_fill (0, as
              ADA and DiffAugment). Not in 'bgc' (ADA's 'bgc' has none);
              enable it by name.

Geometric operations compose into one 3x3 matrix per sample, applied with
one bilinear resampling (no 2x supersampling as ADA does; at these scales,
0.76x-1.32x, the aliasing is mild). Outside the image the resampler reads
`fill` = -1, CT air, rather than ADA's reflection: a CT's surroundings are
air, and reflecting would put mirrored skull or table near the border,
anatomy that no real slice has. Samples that drew no geometric operation are
passed through untouched (no resampling blur); p = 0 is the identity
exactly. Normal draws are truncated at +-`trunc` std so the ranges are
bounded (c in [0.5, 2], |b| <= 0.4 by default).

Policies: comma-separated presets or operation names, e.g. 'bgc' (default)
or 'bgc,cutout'. Presets: 'blit' (xflip, xint), 'geom' (scale, rotate,
aniso), 'color' (brightness, contrast), 'bg', 'bgc'.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

OPS = ('xflip', 'xint', 'scale', 'rotate', 'aniso', 'xfrac', 'brightness',
       'contrast', 'cutout')
PRESETS = {
    'blit': ('xflip', 'xint'),
    'geom': ('scale', 'rotate', 'aniso'),
    'color': ('brightness', 'contrast'),
    'bg': ('xflip', 'xint', 'scale', 'rotate', 'aniso'),
    'bgc': ('xflip', 'xint', 'scale', 'rotate', 'aniso', 'brightness',
            'contrast'),
}
_HI = jax.lax.Precision.HIGHEST  # coordinates must not go through TF32


@dataclasses.dataclass(frozen=True)
class Strengths:
  """Magnitudes of the operations (ADA's defaults unless noted)."""
  # Integer translation range, a fraction of the side.
  xint_max: float = 0.125
  # log2 std of isotropic and anisotropic scaling.
  scale_std: float = 0.2
  aniso_std: float = 0.2
  # Each of the two rotations is uniform in +-rotate_max degrees (ADA: 180).
  rotate_max: float = 15.0
  # Fractional translation std, a fraction of the side (ADA: 0.125).
  xfrac_std: float = 0.05
  # Brightness std and log2 std of contrast, on the [-1, 1] scale.
  brightness_std: float = 0.2
  contrast_std: float = 0.5
  # Cutout square side (fraction of the image side) and its value.
  cutout_size: float = 0.5
  cutout_fill: float = 0.0
  # Value read outside the image by geometric operations: CT air.
  fill: float = -1.0
  # Normal draws are truncated at +-trunc standard deviations.
  trunc: float = 2.0


class Params(NamedTuple):
  """Per-sample parameters of one augmentation draw; identity by default.

  Translations are in pixels (x right, y down), angles in radians,
  cutout centre in [0, 1] (x, y) and size as a fraction of the side
  (0 = no cutout).
  """
  flip: jax.Array         # [N] 0 or 1
  xint: jax.Array         # [N, 2]
  scale: jax.Array        # [N]
  rotate_pre: jax.Array   # [N]
  aniso: jax.Array        # [N]
  rotate_post: jax.Array  # [N]
  xfrac: jax.Array        # [N, 2]
  brightness: jax.Array   # [N]
  contrast: jax.Array     # [N]
  cutout_center: jax.Array  # [N, 2]
  cutout_size: jax.Array    # [N]


def identity_params(n: int) -> Params:
  """Parameters that leave a batch of n images unchanged."""
  zero, one = jnp.zeros((n,)), jnp.ones((n,))
  return Params(flip=zero, xint=jnp.zeros((n, 2)), scale=one,
                rotate_pre=zero, aniso=one, rotate_post=zero,
                xfrac=jnp.zeros((n, 2)), brightness=zero, contrast=one,
                cutout_center=jnp.full((n, 2), 0.5), cutout_size=zero)


def parse_policy(policy: str) -> frozenset[str]:
  """Set of operation names in a comma-separated policy of presets/ops."""
  ops = set()
  for name in filter(None, (s.strip() for s in policy.split(','))):
    if name in PRESETS:
      ops.update(PRESETS[name])
    elif name in OPS:
      ops.add(name)
    else:
      raise ValueError(f'unknown ADA policy item {name!r}; presets '
                       f'{sorted(PRESETS)}, operations {list(OPS)}')
  return frozenset(ops)


def sample_params(key: jax.Array, shape: tuple[int, ...], p: jax.Array, *,
                  policy: str = 'bgc',
                  strengths: Strengths = Strengths()) -> Params:
  """Draws per-sample parameters for a batch of NHWC `shape`.

  Each operation in `policy` is switched on per sample with probability p
  (a traced scalar); the draws depend on (key, shape, p) only, never on the
  pixels, so two batches of one shape augmented with one key get the same
  transform.

  All the randomness of a draw comes from two calls, uniforms [N, ops, 4]
  and truncated normals [N, ops, 2], of which each operation reads its own
  row whatever the policy (so enabling one operation changes no other's
  draws). Before, one call per operation and value made each draw a few
  dozen small random-number kernels, and the loop draws several times
  an iteration: on the CPU that was half of the training program's fusions
  at 4x4 and a quarter of its compilation time (README, "GPU, TPU and
  clusters").
  """
  ops = parse_policy(policy)
  n, h, w = shape[0], shape[1], shape[2]
  s = strengths
  p = jnp.asarray(p, jnp.float32)
  prm = identity_params(n)
  ku, kz = jax.random.split(key)
  uniform = jax.random.uniform(ku, (n, len(OPS), 4))
  normal = jax.random.truncated_normal(kz, -s.trunc, s.trunc,
                                       (n, len(OPS), 2))

  def draws(op):  # [N, 4] uniforms, [N, 2] normals: op's own row
    i = OPS.index(op)
    return uniform[:, i], normal[:, i]

  def lognormal(z, std):
    return jnp.exp2(z * std)

  if 'xflip' in ops:
    u, _ = draws('xflip')
    flip = jnp.floor(u[:, 1] * 2.0)
    prm = prm._replace(flip=jnp.where(u[:, 0] < p, flip, 0.0))
  if 'xint' in ops:
    u, _ = draws('xint')
    t = (u[:, 1:3] * 2.0 - 1.0) * s.xint_max
    t = jnp.round(t * jnp.array([w, h], jnp.float32))
    prm = prm._replace(xint=jnp.where((u[:, 0] < p)[:, None], t, 0.0))
  if 'scale' in ops:
    u, z = draws('scale')
    prm = prm._replace(scale=jnp.where(u[:, 0] < p,
                                       lognormal(z[:, 0], s.scale_std), 1.0))
  if 'rotate' in ops:
    # Two rotations around the anisotropic scaling, each with p_rot, so that
    # some rotation happens with probability p (as ADA).
    u, _ = draws('rotate')
    p_rot = 1.0 - jnp.sqrt(jnp.clip(1.0 - p, 0.0, 1.0))
    top = math.radians(s.rotate_max)
    pre, post = (u[:, 2] * 2.0 - 1.0) * top, (u[:, 3] * 2.0 - 1.0) * top
    prm = prm._replace(rotate_pre=jnp.where(u[:, 0] < p_rot, pre, 0.0),
                       rotate_post=jnp.where(u[:, 1] < p_rot, post, 0.0))
  if 'aniso' in ops:
    u, z = draws('aniso')
    prm = prm._replace(aniso=jnp.where(u[:, 0] < p,
                                       lognormal(z[:, 0], s.aniso_std), 1.0))
  if 'xfrac' in ops:
    u, z = draws('xfrac')
    t = z * s.xfrac_std * jnp.array([w, h], jnp.float32)
    prm = prm._replace(xfrac=jnp.where((u[:, 0] < p)[:, None], t, 0.0))
  if 'brightness' in ops:
    u, z = draws('brightness')
    prm = prm._replace(brightness=jnp.where(
        u[:, 0] < p, z[:, 0] * s.brightness_std, 0.0))
  if 'contrast' in ops:
    u, z = draws('contrast')
    prm = prm._replace(contrast=jnp.where(
        u[:, 0] < p, lognormal(z[:, 0], s.contrast_std), 1.0))
  if 'cutout' in ops:
    u, _ = draws('cutout')
    prm = prm._replace(cutout_center=u[:, 1:3],
                       cutout_size=jnp.where(u[:, 0] < p, s.cutout_size, 0.0))
  return prm


def _affine(a, b, c, d, tx, ty):
  """[N, 3, 3] matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] (broadcast)."""
  a, b, c, d, tx, ty = jnp.broadcast_arrays(a, b, c, d, tx, ty)
  zero, one = jnp.zeros_like(a), jnp.ones_like(a)
  rows = [jnp.stack(r, -1) for r in ((a, b, tx), (c, d, ty),
                                     (zero, zero, one))]
  return jnp.stack(rows, -2)


def _scale(sx, sy):
  return _affine(sx, 0.0, 0.0, sy, 0.0, 0.0)


def _rotate(theta):
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return _affine(cos, -sin, sin, cos, 0.0, 0.0)


def _translate(t):
  return _affine(1.0, 0.0, 0.0, 1.0, t[:, 0], t[:, 1])


def inverse_matrix(prm: Params) -> jax.Array:
  """[N, 3, 3] map from output to input pixel coordinates (image centre 0).

  The forward transform applies flip, integer translation, scaling,
  rotation, anisotropic scaling, rotation, fractional translation in that
  order (ADA's order); the inverse is the product of the inverses in the
  same order, each multiplied on the right.
  """
  mats = (_scale(1.0 - 2.0 * prm.flip, 1.0),
          _translate(-prm.xint),
          _scale(1.0 / prm.scale, 1.0 / prm.scale),
          _rotate(-prm.rotate_pre),
          _scale(1.0 / prm.aniso, prm.aniso),
          _rotate(-prm.rotate_post),
          _translate(-prm.xfrac))
  g = mats[0]
  for m in mats[1:]:
    g = jnp.matmul(g, m, precision=_HI)
  return g


def _bilinear(img: jax.Array, rows: jax.Array, cols: jax.Array,
              fill: float) -> jax.Array:
  """Samples [H, W, C] `img` at fractional (rows, cols) [H', W'].

  Reads `fill` outside the image: the image is padded by one pixel of
  `fill` and indices are clamped into the padded frame.
  """
  h, w = img.shape[:2]
  img = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), constant_values=fill)
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
  ri = lambda r: jnp.clip(r + 1, 0, h + 1).astype(jnp.int32)
  ci = lambda c: jnp.clip(c + 1, 0, w + 1).astype(jnp.int32)
  top = img[ri(r0), ci(c0)] * (1 - wc) + img[ri(r0), ci(c0 + 1)] * wc
  bot = img[ri(r0 + 1), ci(c0)] * (1 - wc) + img[ri(r0 + 1), ci(c0 + 1)] * wc
  return top * (1 - wr) + bot * wr


def warp(x: jax.Array, prm: Params, fill: float) -> jax.Array:
  """The geometric part of `prm` (flip, translations, scalings, rotations)
  applied to NHWC `x` about the image centre: bilinear, `fill` outside."""
  n, h, w, _ = x.shape
  g = inverse_matrix(prm)
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  xs = jnp.arange(w, dtype=jnp.float32)[None, None, :] - cx
  ys = jnp.arange(h, dtype=jnp.float32)[None, :, None] - cy
  # Elementwise, not a matmul, so the coordinates stay exact float32.
  e = lambda i, j: g[:, i, j][:, None, None]
  cols = e(0, 0) * xs + e(0, 1) * ys + e(0, 2) + cx
  rows = e(1, 0) * xs + e(1, 1) * ys + e(1, 2) + cy
  out = jax.vmap(_bilinear, in_axes=(0, 0, 0, None))(
      x.astype(jnp.float32), rows, cols, fill)
  identity = ((prm.flip == 0) & jnp.all(prm.xint == 0, axis=1)
              & (prm.scale == 1) & (prm.rotate_pre == 0) & (prm.aniso == 1)
              & (prm.rotate_post == 0) & jnp.all(prm.xfrac == 0, axis=1))
  return jnp.where(identity[:, None, None, None], x, out.astype(x.dtype))


def apply_params(x: jax.Array, prm: Params, *,
                 strengths: Strengths = Strengths()) -> jax.Array:
  """Applies one draw to NHWC `x`: geometric, then intensity, then cutout.

  Every step is affine in x for fixed parameters, so for any u
  apply(a + u (b - a)) = apply(a) + u (apply(b) - apply(a)).
  """
  n, h, w, _ = x.shape
  x = warp(x, prm, strengths.fill)
  c = prm.contrast.astype(x.dtype)[:, None, None, None]
  b = prm.brightness.astype(x.dtype)[:, None, None, None]
  x = (x + b) * c
  # Cutout as ADA: pixel centres within size/2 of the centre on both axes.
  px = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
  py = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
  half = prm.cutout_size[:, None] / 2
  in_x = jnp.abs(px[None, :] - prm.cutout_center[:, 0:1]) < half
  in_y = jnp.abs(py[None, :] - prm.cutout_center[:, 1:2]) < half
  inside = in_y[:, :, None, None] & in_x[:, None, :, None]
  return jnp.where(inside, jnp.asarray(strengths.cutout_fill, x.dtype), x)


def augment(x: jax.Array, p: jax.Array, key: jax.Array, *,
            policy: str = 'bgc',
            strengths: Strengths = Strengths()) -> jax.Array:
  """ADA augmentation of an NHWC batch in [-1, 1]; jit-able, differentiable.

  Args:
    x: images [N, H, W, C], any float dtype (returned in that dtype).
    p: augmentation probability, a (traced) scalar in [0, 1].
    key: PRNG key; one key gives one draw per sample.
    policy: comma-separated presets/operations (see the module docstring).
    strengths: magnitudes of the operations.
  """
  prm = sample_params(key, x.shape, p, policy=policy, strengths=strengths)
  return apply_params(x, prm, strengths=strengths)


# --- The adaptive probability -------------------------------------------


def ada_adjust(p: jax.Array, rt: jax.Array, *, target: float = 0.6,
               num_images: jax.Array | int,
               speed_kimg: float = 500.0) -> jax.Array:
  """p + sign(rt - target) * num_images / (speed_kimg * 1000), in [0, 1].

  `num_images` is the number of real images behind `rt` (batch x interval;
  ADA adjusts every 4 batches). With ADA's speed p can cross [0, 1] in
  `speed_kimg` kimg: 500 for runs of thousands of kimg. For this project's
  short runs (tens of kimg) use about a tenth of the run's total kimg, so p
  can rise within the first tenth of training and moves by
  64 / (speed_kimg * 1000) per adjustment of 64 images (0.018 for a 36-kimg
  run). rt == target leaves p unchanged (sign 0), as ADA.
  """
  step = (jnp.sign(jnp.asarray(rt, jnp.float32) - target)
          * jnp.asarray(num_images, jnp.float32) / (speed_kimg * 1000.0))
  return jnp.clip(jnp.asarray(p, jnp.float32) + step, 0.0, 1.0)


def rt_update(accum: jax.Array, d_real: jax.Array,
              d_fake: jax.Array | None = None) -> jax.Array:
  """Adds a batch to the r_t accumulator [sum of signs, count] (float32 [2]).

  Start from `jnp.zeros(2)`; `d_real` are the critic's scores of the
  (augmented) reals of a D step. ADA's r_t = E[sign(D(x_real))] reads 0 as
  the decision boundary, which holds for its logistic D (logit 0 = "50%
  real"). A WGAN critic has no such zero: its loss is unchanged by adding a
  constant to D, and only the drift term eps * E[D(x)^2] fixes the offset,
  at E[D(real)] ~ 0, so sign(D(real)) would average ~0 whether D overfits
  or not, and p would never rise. For a WGAN critic pass `d_fake` (the
  scores of the augmented fakes of the same step): the boundary is then
  the midpoint of the two batch means, the critic's own real/fake
  threshold, and r_t is the fraction of reals above it minus the fraction
  below, as ADA's is for a logistic D.
  """
  d_real = jax.lax.stop_gradient(d_real).astype(jnp.float32).reshape(-1)
  threshold = 0.0
  if d_fake is not None:
    d_fake = jax.lax.stop_gradient(d_fake).astype(jnp.float32)
    threshold = 0.5 * (jnp.mean(d_real) + jnp.mean(d_fake))
  signs = jnp.sum(jnp.sign(d_real - threshold))
  return accum + jnp.stack([signs, jnp.float32(d_real.size)])


def rt_value(accum: jax.Array) -> jax.Array:
  """r_t of an accumulator (0 when empty)."""
  return accum[0] / jnp.maximum(accum[1], 1.0)


def ada_update(p: jax.Array, accum: jax.Array, *, target: float = 0.6,
               speed_kimg: float = 500.0) -> tuple[jax.Array, jax.Array]:
  """(adjusted p, emptied accumulator) from an r_t accumulator.

  num_images is the accumulator's count; an empty one leaves p unchanged.
  """
  p = ada_adjust(p, rt_value(accum), target=target, num_images=accum[1],
                 speed_kimg=speed_kimg)
  return p, jnp.zeros_like(accum)
