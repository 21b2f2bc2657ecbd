"""Per-example numpy transforms run inside grain (no JAX here).

`Resize` (deterministic map) brings a stored uint8 square to the requested
resolution; `Augment` (grain `random_map`) applies classic augmentation with
grain's per-example generator, so batches are reproducible from the seed and
the iterator state: horizontal flip, then one affine warp (rotation, zoom,
translation; bilinear, background filled black) and brightness/contrast on
the [-1, 1] scale. `to_float` maps uint8 to float32 in [-1, 1].
"""

import math

import numpy as np
from PIL import Image

from input_pipeline import preprocess


def to_float(x: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


class Resize:
  """{'image': uint8 [S,S,C], 'label'} -> {'image': uint8 [R,R,C], 'label'}."""

  def __init__(self, resolution: int):
    self.resolution = resolution

  def __call__(self, ex: dict) -> dict:
    return {'image': preprocess.resize_square(ex['image'], self.resolution),
            'label': np.int32(ex['label'])}


class ToFloat:
  """Final step of non-augmented pipelines: uint8 image -> [-1, 1]."""

  def __call__(self, ex: dict) -> dict:
    return {'image': to_float(ex['image']), 'label': ex['label']}


def affine(image: np.ndarray, angle_deg: float, scale: float, tx: float,
           ty: float, flip: bool = False) -> np.ndarray:
  """Optional horizontal flip, then rotation + zoom about the centre and a
  translation (pixels); bilinear, black fill. uint8 [H, W, C] in and out.

  Pillow wants the inverse map (output -> input pixel coordinates); the flip
  is folded into it, so the image is resampled once.
  """
  h, w, c = image.shape
  a = math.radians(angle_deg)
  cos, sin = math.cos(a) / scale, math.sin(a) / scale
  # Pillow's coordinates are continuous (pixel i spans [i, i + 1)), so the
  # centre is (w / 2, h / 2) and the mirror of x is w - x.
  cx, cy = w / 2, h / 2
  # input = R^-1 (output - centre - t) / scale + centre
  ox, oy = cx + tx, cy + ty
  row_x = (cos, sin, cx - cos * ox - sin * oy)
  row_y = (-sin, cos, cy + sin * ox - cos * oy)
  if flip:  # input x -> w - input x
    row_x = (-row_x[0], -row_x[1], w - row_x[2])
  coeffs = row_x + row_y
  out = np.empty_like(image)
  for ch in range(c):
    img = Image.fromarray(image[..., ch])
    out[..., ch] = np.asarray(img.transform(
        (w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0))
  return out


class Augment:
  """Classic augmentation; every parameter from config.data.augment.

  Called as `random_map(Augment(cfg))`: (uint8 example, rng) -> float32.
  Brightness/contrast are applied through a 256-entry lookup table that
  also does the uint8 -> [-1, 1] conversion.
  """

  def __init__(self, aug):
    self.flip_prob = float(aug.flip_prob)
    self.rotate_deg = float(aug.rotate_deg)
    self.translate = float(aug.translate)
    self.zoom = float(aug.zoom)
    self.brightness = float(aug.brightness)
    self.contrast = float(aug.contrast)
    self._levels = to_float(np.arange(256, dtype=np.uint8))

  def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
    x = ex['image']
    # Draw all parameters first, so the stream layout never depends on the
    # values (reproducible across config changes of unrelated knobs).
    u = rng.random(7)
    flip = bool(u[0] < self.flip_prob)
    angle = (2 * u[1] - 1) * self.rotate_deg
    scale = 1 + (2 * u[2] - 1) * self.zoom
    side = x.shape[0]
    tx = (2 * u[3] - 1) * self.translate * side
    ty = (2 * u[4] - 1) * self.translate * side
    if angle or scale != 1 or tx or ty:
      x = affine(x, angle, scale, tx, ty, flip)
    elif flip:
      x = x[:, ::-1]
    c = 1 + (2 * u[5] - 1) * self.contrast
    b = (2 * u[6] - 1) * self.brightness
    # Contrast about -1 (black background stays black), then brightness.
    lut = np.clip((self._levels + 1) * np.float32(c) - 1 + np.float32(b),
                  -1, 1).astype(np.float32)
    return {'image': lut[x], 'label': ex['label']}
