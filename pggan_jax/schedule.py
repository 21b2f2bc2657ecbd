"""The official PGGAN `TrainingSchedule` as a pure function of kimg.

Each phase lasts `lod_training_kimg + lod_transition_kimg`: first the
current resolution is stabilised, then the next one is faded in. With
L = log2(final) - log2(initial) and phase p = floor(kimg / phase_kimg),

  lod = max(L - p - max(kimg - p * phase_kimg - training, 0) / transition, 0)
  resolution = final / 2**floor(lod)
  alpha = 1 - (lod - floor(lod))   (1 while stabilising, 0 -> 1 in fade-in)

so during a fade-in the resolution is already the new one. Minibatch and
learning rate are looked up per resolution (official `minibatch_dict`,
`G_lrate_dict`), the minibatch capped by `max_minibatch_per_gpu` (per
device); unlike the official code it is not rounded down to a multiple of
the device count: train.check_config refuses one that does not divide.

The generator EMA is a half-life in images (`ema_beta`), tied to the
schedule by `ema_half_life_kimg` (a fraction of a phase by default).
"""

import collections
from collections.abc import Callable
import dataclasses
import functools
import math

_ResDict = dict[int, float]


def parse_res_dict(spec: str) -> dict[int, float]:
  """'4:128,8:64' -> {4: 128.0, 8: 64.0} (configs keep these as strings)."""
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(','))):
    res, value = item.split(':')
    out[int(res)] = float(value)
  return out


@dataclasses.dataclass(frozen=True)
class Point:
  """Training parameters at one moment of the run."""
  kimg: float
  lod: float
  resolution: int
  stage: int       # 0 = 4x4, log2(resolution) - 2
  alpha: float     # fade-in weight of the newest block
  batch_size: int
  lr_g: float
  lr_d: float
  tick_kimg: float


def training_schedule(
    kimg: float, *, final_resolution: int, initial_resolution: int = 4,
    lod_training_kimg: float = 600., lod_transition_kimg: float = 600.,
    minibatch_base: int = 16, minibatch_dict: _ResDict | None = None,
    max_minibatch_per_gpu: _ResDict | None = None, num_devices: int = 1,
    lr_base: float = 0.001, lr_g_dict: _ResDict | None = None,
    lr_d_dict: _ResDict | None = None, tick_kimg_base: float = 160.,
    tick_kimg_dict: _ResDict | None = None) -> Point:
  """Official schedule (progressive_growing_of_gans/train.py) at `kimg`."""
  minibatch_dict = minibatch_dict or {}
  max_minibatch_per_gpu = max_minibatch_per_gpu or {}
  res_log2 = int(math.log2(final_resolution))
  phase_dur = lod_training_kimg + lod_transition_kimg
  phase_idx = int(math.floor(kimg / phase_dur)) if phase_dur > 0 else 0
  phase_kimg = kimg - phase_idx * phase_dur
  lod = float(res_log2 - math.floor(math.log2(initial_resolution)))
  lod -= phase_idx
  if lod_transition_kimg > 0:
    lod -= max(phase_kimg - lod_training_kimg, 0.0) / lod_transition_kimg
  lod = max(lod, 0.0)
  resolution = 2 ** (res_log2 - int(math.floor(lod)))
  # The official code rounds the minibatch down to a multiple of the GPU
  # count; here a minibatch that does not divide over the devices is an
  # error (train.check_config), so a run's batches do not depend on them.
  batch = int(minibatch_dict.get(resolution, minibatch_base))
  if resolution in max_minibatch_per_gpu:
    batch = min(batch, int(max_minibatch_per_gpu[resolution]) * num_devices)
  return Point(
      kimg=kimg, lod=lod, resolution=resolution,
      stage=int(math.log2(resolution)) - 2,
      alpha=1.0 - (lod - math.floor(lod)), batch_size=batch,
      lr_g=(lr_g_dict or {}).get(resolution, lr_base),
      lr_d=(lr_d_dict or {}).get(resolution, lr_base),
      tick_kimg=(tick_kimg_dict or {}).get(resolution, tick_kimg_base))


def schedule_fn(config, num_devices: int = 1) -> Callable[[float], Point]:
  """kimg -> Point with the fields of `config.sched` parsed once."""
  s = config.sched
  return functools.partial(
      training_schedule, final_resolution=config.model.resolution,
      initial_resolution=s.initial_resolution,
      lod_training_kimg=s.lod_training_kimg,
      lod_transition_kimg=s.lod_transition_kimg,
      minibatch_base=s.minibatch_base,
      minibatch_dict=parse_res_dict(s.minibatch_dict),
      max_minibatch_per_gpu=parse_res_dict(s.max_minibatch_per_gpu),
      num_devices=num_devices, lr_base=s.lr,
      lr_g_dict=parse_res_dict(s.lr_dict), lr_d_dict=parse_res_dict(s.lr_dict),
      tick_kimg_base=s.tick_kimg,
      tick_kimg_dict=parse_res_dict(s.tick_kimg_dict))


def stage_starts(at: Callable[[float], Point], kimg: float,
                 total_kimg: float, lod_training_kimg: float,
                 lod_transition_kimg: float) -> list[Point]:
  """The first point of each (stage, batch size) in [kimg, total_kimg).

  `at` is a `schedule_fn`; stages change only just after phase boundaries
  (at a boundary the schedule still gives the old stage, at alpha 1), so
  the schedule is read at and just after each (and at `kimg`). In
  training order.
  """
  ks = [kimg]
  phase = lod_training_kimg + lod_transition_kimg
  if phase > 0:
    # 16 phases grow 4x4 past any real resolution; no changes after them.
    ks += [b + eps for i in range(min(int(total_kimg // phase) + 1, 16))
           for b in (i * phase, i * phase + lod_training_kimg)
           for eps in (0.0, 1e-9)]
  seen, out = set(), []
  for k in sorted(k for k in ks if kimg <= k < total_kimg):
    p = at(k)
    if (p.stage, p.batch_size) not in seen:
      seen.add((p.stage, p.batch_size))
      out.append(p)
  return out


def from_config(config, kimg: float, num_devices: int = 1) -> Point:
  """`training_schedule` with the fields of `config.sched`."""
  return schedule_fn(config, num_devices)(kimg)


def ema_half_life_kimg(config) -> float:
  """G_ema's half-life in kimg: `config.ema_kimg`, or if that is 0,
  `config.ema_phase_fraction` of a stabilisation phase (lod_training_kimg).
  """
  if config.ema_kimg > 0:
    return float(config.ema_kimg)
  return float(config.ema_phase_fraction * config.sched.lod_training_kimg)


def ema_beta(nimg: float, batch_nimg: int, half_life_kimg: float,
             rampup: float | None = None) -> float:
  """EMA decay of one iteration, from a half-life in images (StyleGAN2-ADA).

    h = half_life_kimg * 1000, capped at rampup * nimg when rampup is set
    beta = 0.5 ** (batch_nimg / h)

  `nimg` is the count of real images shown before the iteration and
  `batch_nimg` the images the iteration shows (minibatch x d_repeats), so
  an image's weight in G_ema halves every h images whatever the batch: after
  N images at a fixed h, the weight of what G_ema held before them is
  0.5 ** (N / h). The ramp-up shortens the half-life early in training
  (beta = 0 at nimg = 0: G_ema starts as G), so the random init does not
  linger. rampup None or 0 disables it.
  """
  h = half_life_kimg * 1000.0
  if rampup:
    h = min(h, rampup * nimg)
  if h <= 0:
    return 0.0
  return 0.5 ** (batch_nimg / h)


def lod_changed(prev_lod: float, lod: float) -> bool:
  """Official `reset_opt_for_new_lod` test: floor or ceil of lod moved.

  True at the start of each fade-in and at the start of each stabilisation.
  """
  return (math.floor(prev_lod) != math.floor(lod)
          or math.ceil(prev_lod) != math.ceil(lod))


Dispatch = collections.namedtuple(
    'Dispatch', 'points nimgs log tick ckpt done')


def plan_dispatch(at, *, nimg: int, step: int, total_nimg: int,
                  max_iters: int, d_repeats: int, log_every: int,
                  tick_start: int, ckpt_start: int,
                  checkpoint_kimg: float) -> Dispatch:
  """The iterations of the next dispatch, from `at(kimg) -> Point`.

  Iteration i runs with the schedule at nimg_i (its `points[i]`, shown
  images before it `nimgs[i]`). The dispatch ends before an iteration whose
  stage, minibatch, learning rate or lod-reset differ from the first's, and
  after one that completes a log interval, a tick, a checkpoint interval or
  the run (flags say which): the host acts only between dispatches.
  """
  points, nimgs = [], []
  first = at(nimg / 1000)
  p, prev = first, None
  while True:
    if prev is not None and (
        (p.stage, p.batch_size, p.lr_d, p.lr_g)
        != (first.stage, first.batch_size, first.lr_d, first.lr_g)
        or lod_changed(prev.lod, p.lod)):
      return Dispatch(points, nimgs, False, False, False, False)
    points.append(p)
    nimgs.append(nimg)
    nimg += p.batch_size * d_repeats
    step += 1
    done = nimg >= total_nimg
    log = step % log_every == 0 or done
    tick = nimg >= tick_start + p.tick_kimg * 1000 or done
    ckpt = nimg >= ckpt_start + checkpoint_kimg * 1000 or done
    if log or tick or ckpt or len(points) == max_iters:
      return Dispatch(points, nimgs, log or tick or ckpt, tick, ckpt, done)
    prev, p = p, at(nimg / 1000)
