"""Image I/O shared by reports, GAN grids and samplers: [-1, 1] floats <-> PNG."""

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], clipped."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None,
              pad: int = 2) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> one uint8 [H', W', C] grid image."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c),
                  np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 [H, W, 1|3] array atomically (temp file, then rename)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp.png'
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)


def save_grid(images: np.ndarray, path: str, ncols: int | None = None,
              min_cell: int = 0) -> None:
  """Saves [N, H, W, C] images in [-1, 1] as one PNG grid.

  min_cell: images smaller than this are enlarged by an integer factor
  (nearest neighbour, so pixels stay visible as pixels) for viewing.
  """
  images = np.asarray(images)
  factor = max(1, min_cell // max(images.shape[1], 1))
  if factor > 1:
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  save_png(make_grid(images, ncols), path)
