"""What the PGGAN loop (train.py) reads back and writes between dispatches.

`Metrics` keeps each dispatch's device-side metric means and reads them back
only when a log interval ends (raising on a non-finite one); `tick_job` runs
in a worker thread at every tick: G_ema's grid, its sliced Wasserstein
distance to training images, the MS-SSIM diversity of both and the
spectral test;
`trim_metrics` cuts metrics.jsonl back to a resumed checkpoint.
"""

import json
import os

import jax
import numpy as np

from input_pipeline import files
from input_pipeline import images as image_io
from pggan_jax import quality


class Metrics:
  """Per-dispatch device-side metric means, read back only on flush."""

  def __init__(self):
    self.pending = []

  def add(self, means: dict, n: int) -> None:
    self.pending.append((means, n))

  def flush(self, kimg: float) -> dict:
    """Means over all pending iterations; raises on a non-finite value."""
    if not self.pending:
      return {}
    host = jax.device_get([m for m, _ in self.pending])
    weights = np.array([n for _, n in self.pending], np.float64)
    self.pending = []
    out = {}
    for k in host[0]:
      v = np.array([h[k] for h in host], np.float64)
      if not np.all(np.isfinite(v)):
        raise FloatingPointError(
            f'non-finite {k} at kimg {kimg:.3f}; stopping without saving '
            '(the last good checkpoint is kept)')
      out[k] = float(np.sum(v * weights) / np.sum(weights))
    return out


# Grid cells are enlarged to at least this many pixels (nearest neighbour).
GRID_CELL = 128


def tick_job(fakes, grid_size: int, reals, swd_kw: dict, path: str,
             is_main: bool, ms_ssim_pairs: int, real_ms_ssim: dict,
             spectral_permutations: int = 0) -> dict:
  """Worker thread: reads G_ema's samples back, saves the grid, SWD.

  With ms_ssim_pairs > 0, also the mean pairwise MS-SSIM of the SWD samples
  ('ms_ssim', diversity: mode collapse drives it up) and of the SWD reals
  ('ms_ssim_real', computed once per resolution and cached in
  real_ms_ssim), from 16x16 on (quality.SSIM_WINDOW: 11 pixels). With
  spectral_permutations > 0, from 8x8 on, quality.spectral_test of the SWD
  samples against the SWD reals: 'spectral_excess' (upsampling stripes and
  grids), its p-value 'spectral_excess_p', and 'spectral_deficit' (blur).
  """
  fakes = np.asarray(fakes)
  out = {}
  if is_main:
    # Enlarged (nearest) for viewing; beside it, once per resolution, real
    # training images at the same resolution.
    image_io.save_grid(fakes[:grid_size], path, min_cell=GRID_CELL)
    out['grid'] = image_io.make_grid(fakes[:grid_size])
    res = fakes.shape[1]
    real_path = os.path.join(os.path.dirname(path), f'reals_{res}x{res}.png')
    if reals is not None and not os.path.exists(real_path):
      image_io.save_grid(reals[:grid_size], real_path, min_cell=GRID_CELL)
  if reals is not None and is_main:
    res = fakes.shape[1]
    # Patches must fit the image (3x3 at 4x4); SWD levels stop at 16x16.
    kw = dict(swd_kw, patch_size=min(swd_kw['patch_size'], res - 1 | 1))
    out.update(quality.sliced_wasserstein(reals, fakes[grid_size:], **kw))
    if ms_ssim_pairs > 0 and res >= quality.SSIM_WINDOW and len(reals) >= 2:
      out['ms_ssim'] = quality.mean_pairwise_ms_ssim(
          fakes[grid_size:], num_pairs=ms_ssim_pairs, seed=swd_kw['seed'])
      if res not in real_ms_ssim:
        real_ms_ssim[res] = quality.mean_pairwise_ms_ssim(
            reals, num_pairs=ms_ssim_pairs, seed=swd_kw['seed'])
      out['ms_ssim_real'] = real_ms_ssim[res]
    if spectral_permutations > 0 and res >= 8:
      spec = quality.spectral_test(reals, fakes[grid_size:],
                                   num_permutations=spectral_permutations,
                                   seed=swd_kw['seed'])
      out.update({k: spec[k] for k in ('spectral_excess', 'spectral_excess_p',
                                       'spectral_deficit')})
  return out


def trim_metrics(path: str, nimg: int) -> None:
  """Keeps the metrics.jsonl records up to the resumed checkpoint.

  A killed run may have logged ticks past its last checkpoint (the resumed
  run logs them again) or left half a line.
  """
  if not os.path.isfile(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if round(rec.get('kimg', 0) * 1000) <= nimg:
        keep.append(line if line.endswith('\n') else line + '\n')
  files.write_text(path, ''.join(keep))
