"""The official PGGAN `TrainingSchedule` as a pure function of kimg.

Each phase lasts `lod_training_kimg + lod_transition_kimg`: first the
current resolution is stabilised, then the next one is faded in. With
L = log2(final) - log2(initial) and phase p = floor(kimg / phase_kimg),

  lod = max(L - p - max(kimg - p * phase_kimg - training, 0) / transition, 0)
  resolution = final / 2**floor(lod)
  alpha = 1 - (lod - floor(lod))   (1 while stabilising, 0 -> 1 in fade-in)

so during a fade-in the resolution is already the new one. Minibatch and
learning rate are looked up per resolution (official `minibatch_dict`,
`G_lrate_dict`), the minibatch rounded down to a multiple of the device
count and capped by `max_minibatch_per_gpu`.
"""

import dataclasses
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
  batch = int(minibatch_dict.get(resolution, minibatch_base))
  batch -= batch % num_devices
  if resolution in max_minibatch_per_gpu:
    batch = min(batch, int(max_minibatch_per_gpu[resolution]) * num_devices)
  return Point(
      kimg=kimg, lod=lod, resolution=resolution,
      stage=int(math.log2(resolution)) - 2,
      alpha=1.0 - (lod - math.floor(lod)), batch_size=batch,
      lr_g=(lr_g_dict or {}).get(resolution, lr_base),
      lr_d=(lr_d_dict or {}).get(resolution, lr_base),
      tick_kimg=(tick_kimg_dict or {}).get(resolution, tick_kimg_base))


def from_config(config, kimg: float, num_devices: int = 1) -> Point:
  """`training_schedule` with the fields of `config.sched`."""
  s = config.sched
  return training_schedule(
      kimg, final_resolution=config.model.resolution,
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


def lod_changed(prev_lod: float, lod: float) -> bool:
  """Official `reset_opt_for_new_lod` test: floor or ceil of lod moved.

  True at the start of each fade-in and at the start of each stabilisation.
  """
  return (math.floor(prev_lod) != math.floor(lod)
          or math.ceil(prev_lod) != math.ceil(lod))
