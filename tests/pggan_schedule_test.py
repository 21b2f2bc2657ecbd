"""Tests for pggan_jax.schedule against the official TrainingSchedule."""

import functools

import pytest

from pggan_jax import schedule

_KW = dict(final_resolution=64, lod_training_kimg=600.,
           lod_transition_kimg=600., minibatch_base=4,
           minibatch_dict={4: 128, 8: 128, 16: 128, 32: 64, 64: 32})


@pytest.mark.parametrize('kimg,lod,res,alpha,batch', [
    (0.0, 4.0, 4, 1.0, 128),       # stabilise 4x4
    (599.0, 4.0, 4, 1.0, 128),
    (900.0, 3.5, 8, 0.5, 128),     # halfway through the 8x8 fade-in
    (1200.0, 3.0, 8, 1.0, 128),    # stabilise 8x8
    (3900.0, 1.0, 32, 1.0, 64),    # stabilise 32x32
    (4650.0, 0.25, 64, 0.75, 32),  # 64x64 fade-in, 450 / 600 done
    (4800.0, 0.0, 64, 1.0, 32),    # final resolution
    (99999.0, 0.0, 64, 1.0, 32),   # clamped
])
def test_official_values(kimg, lod, res, alpha, batch):
  p = schedule.training_schedule(kimg, **_KW)
  assert p.lod == pytest.approx(lod)
  assert (p.resolution, p.batch_size) == (res, batch)
  assert p.alpha == pytest.approx(alpha)
  assert p.stage == {4: 0, 8: 1, 16: 2, 32: 3, 64: 4}[res]
  assert p.lr_g == p.lr_d == 0.001


def test_batch_caps_and_no_rounding():
  p = schedule.training_schedule(0.0, final_resolution=4, minibatch_base=10,
                                 num_devices=4,
                                 max_minibatch_per_gpu={4: 2})
  assert p.batch_size == 8
  # Not rounded down to the device count (the official code does):
  # train.check_config refuses it instead.
  p = schedule.training_schedule(0.0, final_resolution=4, minibatch_base=10,
                                 num_devices=4)
  assert p.batch_size == 10


def test_lr_dict_and_parse():
  assert schedule.parse_res_dict('4:128, 8:0.5') == {4: 128.0, 8: 0.5}
  p = schedule.training_schedule(0.0, final_resolution=4,
                                 lr_g_dict={4: 0.002})
  assert (p.lr_g, p.lr_d) == (0.002, 0.001)


def test_optimizer_reset_points():
  # Reset at the start (prev -1), at the start and end of each fade-in.
  assert schedule.lod_changed(-1.0, 4.0)
  assert not schedule.lod_changed(4.0, 4.0)
  assert schedule.lod_changed(4.0, 3.99)
  assert not schedule.lod_changed(3.99, 3.5)
  assert schedule.lod_changed(3.01, 3.0)


def test_from_config_matches_paper_preset():
  from configs import pggan
  cfg = pggan.get_config('paper')
  p = schedule.from_config(cfg, 800.0 * 11 + 400.0)  # 256x256 fade-in
  assert (p.resolution, p.batch_size) == (256, 8)
  assert p.alpha == pytest.approx(0.5)


def test_stage_starts_lists_every_stage_ahead_once():
  at = functools.partial(schedule.training_schedule, final_resolution=64,
                         lod_training_kimg=8, lod_transition_kimg=8,
                         minibatch_dict={4: 64, 8: 64, 16: 64, 32: 32,
                                         64: 32})
  pts = schedule.stage_starts(at, 0.0, 72.0, 8, 8)
  assert [(p.resolution, p.batch_size) for p in pts] == [
      (4, 64), (8, 64), (16, 64), (32, 32), (64, 32)]
  # Fade-ins start each stage (8 kimg into each 16-kimg phase).
  assert [p.kimg for p in pts] == pytest.approx([0, 8, 24, 40, 56])
  # A run that ends 1 kimg into the 32x32 fade-in still compiles 32x32.
  assert [p.resolution for p in schedule.stage_starts(at, 0, 41, 8, 8)] == [
      4, 8, 16, 32]
  # Resumed mid-way: only what is left, the current stage first.
  pts = schedule.stage_starts(at, 30.0, 72.0, 8, 8)
  assert [p.resolution for p in pts] == [16, 32, 64]
  # A run that stops before 64x64 never compiles it.
  assert [p.resolution for p in schedule.stage_starts(at, 0, 50, 8, 8)] == [
      4, 8, 16, 32]
