"""Procedural head-CT phantoms: a seeded, numpy-only stand-in for real data.

Each slice has a bright skull ring, textured mid-grey parenchyma, dark
ventricles, a black background and noise; the positive class adds one to three
hyperdense haemorrhages (ellipses or crescents along the inner skull) of
varied size and place. Image `i` depends only on (seed, label, i), so any
subset can be regenerated exactly.
"""

import numpy as np

CLASS_NAMES = ('normal', 'hemorrhage')


def _smooth_noise(rng: np.random.Generator, size: int,
                  cells: int) -> np.ndarray:
  """Low-frequency texture: a coarse random grid, bilinearly upsampled."""
  grid = rng.standard_normal((cells + 1, cells + 1))
  t = np.linspace(0, cells, size)
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
  c, s = np.cos(angle), np.sin(angle)
  y, x = yy - cy, xx - cx
  u, v = x * c + y * s, -x * s + y * c
  return (u / rx) ** 2 + (v / ry) ** 2


def head_ct_phantom(size: int, label: int, seed: int,
                    index: int) -> np.ndarray:
  """One uint8 [size, size] slice; label 1 adds haemorrhage."""
  rng = np.random.default_rng([seed, label, index])
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
  ry = rng.uniform(0.26, 0.46)
  rx = ry * rng.uniform(0.7, 0.92)
  angle = rng.uniform(-0.35, 0.35)
  head = _ellipse(yy, xx, cy, cx, ry, rx, angle)
  thick = rng.uniform(0.06, 0.10)
  brain = head < (1 - thick) ** 2
  img = np.zeros((size, size), np.float32)
  img[head < 1.0] = 0.95  # skull
  # Shading (window level, beam hardening) + fine texture.
  texture = (_smooth_noise(rng, size, 3) * 0.07 + _smooth_noise(
      rng, size, 12) * 0.04 + _smooth_noise(rng, size, 40) * 0.02)
  img[brain] = rng.uniform(0.35, 0.55) + texture[brain]
  # Ventricles: two dark crescents near the midline, plus a third ventricle.
  vs = rng.uniform(0.7, 1.3)
  for side in (-1, 1):
    v = _ellipse(yy, xx, cy - 0.03, cx + side * 0.045 * vs, 0.11 * vs,
                 0.03 * vs, side * rng.uniform(0.2, 0.45))
    img[(v < 1) & brain] = 0.15
  img[(_ellipse(yy, xx, cy + 0.08, cx, 0.03, 0.008) < 1) & brain] = 0.18
  if label:
    for _ in range(rng.integers(1, 4)):
      if rng.random() < 0.5:  # intraparenchymal: an irregular ellipse
        r = rng.uniform(0.0, 0.55)
        t = rng.uniform(0, 2 * np.pi)
        by, bx = cy + r * ry * np.sin(t), cx + r * rx * np.cos(t)
        sy, sx = rng.uniform(0.03, 0.10, 2)
        d = _ellipse(yy, xx, by, bx, sy, sx, rng.uniform(0, np.pi))
        d = d + _smooth_noise(rng, size, 8) * 0.3
        blob = d < 1
      else:  # extra-axial: a crescent hugging the inner skull
        t0 = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.4, 1.2)
        theta = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
        dt = np.angle(np.exp(1j * (theta - t0)))
        inner = (1 - thick - rng.uniform(0.04, 0.10)) ** 2
        blob = (np.abs(dt) < width / 2) & (head >= inner)
      img[blob & brain] = rng.uniform(0.68, 0.8)
  img = img + rng.normal(0, 0.025, img.shape) * (head < 1.0)
  return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
