"""DiffAugment (Zhao et al. 2020): differentiable augmentation, JAX.

Applied to reals *and* fakes in both the critic and the generator step, so
the critic never sees un-augmented images and gradients flow through the
augmentation to G. Policies: 'color' (brightness, saturation, contrast),
'translation' (shift by up to 1/8 of the side, zero fill), 'cutout' (one
zero square of half the side). Images are NHWC in [-1, 1].
"""

import jax
import jax.numpy as jnp


def _color(x, key):
  kb, ks, kc = jax.random.split(key, 3)
  n = x.shape[0]
  u = lambda k: jax.random.uniform(k, (n, 1, 1, 1), x.dtype)
  x = x + (u(kb) - 0.5)
  mean = x.mean(axis=3, keepdims=True)
  x = (x - mean) * (u(ks) * 2) + mean
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (u(kc) + 0.5) + mean


def _translation(x, key, ratio=0.125):
  n, h, w, _ = x.shape
  ph, pw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  shift = jax.random.randint(key, (n, 2), -jnp.array([ph, pw]),
                             jnp.array([ph, pw]) + 1)
  padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

  def one(img, s):
    return jax.lax.dynamic_slice(img, (ph + s[0], pw + s[1], 0),
                                 (h, w, img.shape[-1]))
  return jax.vmap(one)(padded, shift)


def _cutout(x, key, ratio=0.5):
  n, h, w, _ = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  cy = jax.random.randint(key, (n, 1, 1), 0, h + (1 - ch % 2))
  cx = jax.random.randint(jax.random.fold_in(key, 1), (n, 1, 1), 0,
                          w + (1 - cw % 2))
  yy = jnp.arange(h)[None, :, None] - cy + ch // 2
  xx = jnp.arange(w)[None, None, :] - cx + cw // 2
  inside = (yy >= 0) & (yy < ch) & (xx >= 0) & (xx < cw)
  return x * (~inside)[..., None].astype(x.dtype)


_POLICIES = {'color': _color, 'translation': _translation, 'cutout': _cutout}


def diff_augment(x: jax.Array, key: jax.Array,
                 policy: str = 'color,translation,cutout') -> jax.Array:
  """Applies the comma-separated `policy` to a batch, per-sample randomness."""
  for i, name in enumerate(filter(None, policy.split(','))):
    if name not in _POLICIES:
      raise ValueError(f'unknown DiffAugment policy {name!r}')
    x = _POLICIES[name](x, jax.random.fold_in(key, i))
  return x
