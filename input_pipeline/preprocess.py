"""Decoding and one-time preprocessing of source images (numpy + Pillow).

Every source image goes through `to_square`: grayscale (any Pillow mode),
aspect-preserving resize so the longer side is `size`, then padding to a
square with the background value (the median of the border pixels, i.e. black
for CT). The result is uint8 [size, size, C]. This runs once, when the TFDS
dataset is prepared; the grain pipeline only downsamples.
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from input_pipeline.errors import UserInputError



def _is_wide(mode: str) -> bool:
  """16/32-bit integer and float modes ('I', 'I;16', 'I;16B', 'F', ...):
  Pillow's convert('L') clips them instead of scaling."""
  return mode in ('I', 'F') or mode.startswith(('I;', 'F;'))


def one_line(e: Exception) -> str:
  """An exception's message on one line (for `error:` lines)."""
  return ' '.join(str(e).split()) or type(e).__name__


def open_image(path: str) -> Image.Image:
  """Opens and fully decodes an image; UserInputError naming the file.

  The EXIF orientation is applied (a viewer shows the image that way). A
  multi-page TIFF (a stack) is refused: which page is the image is not ours
  to guess.
  """
  try:
    if os.path.getsize(path) == 0:
      raise UserInputError(f'{path}: image file is empty (0 bytes)')
    with Image.open(path) as img:
      frames = getattr(img, 'n_frames', 1)
      if img.format == 'TIFF' and frames > 1:
        raise UserInputError(
            f'{path}: TIFF with {frames} pages; save one image per file')
      img.load()
      img = ImageOps.exif_transpose(img) or img.copy()
  except UserInputError:
    raise
  except (OSError, UnidentifiedImageError, ValueError, EOFError,
          Image.DecompressionBombError, SyntaxError) as e:
    raise UserInputError(
        f'{path}: cannot decode image ({one_line(e)})') from None
  if img.width == 0 or img.height == 0:
    raise UserInputError(f'{path}: image has zero size {img.size}')
  return img


def to_gray(img: Image.Image, path: str = '') -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W] luminance.

  Transparent pixels (RGBA, LA, palette with transparency) are composited
  over black; 16-bit / float images (16-bit PNG, TIFF) are min-max scaled
  (their range is arbitrary, e.g. 12-bit CT in 16 bits); CMYK (JPEG from
  print workflows, Adobe-inverted ones included: Pillow undoes that) and
  other colour spaces go through RGB; LAB keeps its lightness.
  """
  mode = img.mode
  if _is_wide(mode):
    x = np.asarray(img, np.float32)
    if x.ndim == 3:  # e.g. 'I;16' read with a channel axis
      x = x[..., 0]
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = (np.nan_to_num(x, nan=lo) - lo) / (hi - lo) * 255.0 if hi > lo else (
        np.zeros_like(x))
    return np.rint(x).astype(np.uint8)
  if mode == 'LAB':
    return np.asarray(img.getchannel('L'), np.uint8)
  try:
    if mode in ('P', 'PA') or 'A' in mode.upper():
      rgba = img.convert('RGBA')
      black = Image.new('RGBA', rgba.size, (0, 0, 0, 255))
      img = Image.alpha_composite(black, rgba)
    elif mode not in ('L', '1', 'RGB', 'RGBX'):
      img = img.convert('RGB')  # CMYK, YCbCr, HSV, ...
    return np.asarray(img.convert('L'), np.uint8)
  except ValueError as e:
    raise UserInputError(f'{path or "image"}: cannot convert Pillow mode '
                         f'{mode!r} to grayscale ({one_line(e)})') from None


def background_value(x: np.ndarray) -> int:
  """Median of the border pixels of a [H, W] image (padding colour)."""
  border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
  return int(np.median(border))


def to_square(x: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W] or [H, W, C] -> uint8 [size, size, C], aspect kept, padded."""
  if x.ndim == 2:
    x = x[..., None]
  h, w, c = x.shape
  scale = size / max(h, w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  out = np.empty((size, size, c), np.uint8)
  for ch in range(c):
    plane = x[..., ch]
    out[..., ch] = background_value(plane)
    if (nh, nw) != (h, w):
      # LANCZOS downsamples without aliasing; BICUBIC for upsampling.
      resample = Image.LANCZOS if scale < 1 else Image.BICUBIC
      plane = np.asarray(
          Image.fromarray(plane).resize((nw, nh), resample), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw, ch] = plane
  return out


def load_square(path: str, size: int) -> tuple[np.ndarray, dict]:
  """Reads an image file -> (uint8 [size, size, 1], original size/mode)."""
  img = open_image(path)
  meta = {'width': img.width, 'height': img.height, 'mode': img.mode}
  return to_square(to_gray(img, path), size), meta


def resize_square(x: np.ndarray, size: int) -> np.ndarray:
  """Square uint8 [S, S, C] -> [size, size, C].

  Integer reductions (e.g. powers of two, as in PGGAN's progressive
  downsampling) are an exact box filter: the rounded mean of each
  factor x factor block (Pillow's `reduce`, in C). Other factors use Pillow's
  BOX (down) or BICUBIC (up) filter.
  """
  s = x.shape[0]
  if s == size:
    return x
  if s % size == 0:
    f = s // size
    resize = lambda im: im.reduce(f)
  else:
    resample = Image.BOX if size < s else Image.BICUBIC
    resize = lambda im: im.resize((size, size), resample)
  if x.shape[-1] == 1:
    return np.asarray(resize(Image.fromarray(x[..., 0])))[..., None]
  return np.stack([np.asarray(resize(Image.fromarray(x[..., ch])))
                   for ch in range(x.shape[-1])], axis=-1)
