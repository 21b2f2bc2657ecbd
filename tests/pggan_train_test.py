"""Tests for pggan_jax.train (resume == uninterrupted) and the sample CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from configs import pggan
from pggan_jax import sample
from pggan_jax import schedule
from pggan_jax import train

from input_pipeline_testlib import tiny_pggan_config

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# (data_on_device, iters_per_dispatch): the device-resident split with the
# CPU's one iteration per dispatch, and grain streaming with 3 per dispatch
# (the fori_loop path, with dispatches cut short by ticks and phases).
_PATHS = {'device': ('yes', 0), 'stream': ('no', 3)}


def _config(total_kimg, path='device'):
  cfg = tiny_pggan_config(total_kimg, phase_kimg=0.04, tick_kimg=0.05,
                          checkpoint_kimg=1.0)
  cfg.data_on_device, cfg.iters_per_dispatch = _PATHS[path]
  return cfg


def _restore_all(workdir):
  mgr = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      item_names=('g', 'd', 'g_ema', 'opt', 'meta', 'data'))
  step = mgr.latest_step()
  out = mgr.restore(step, args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore() for k in ('g', 'd', 'g_ema', 'opt')},
      meta=ocp.args.JsonRestore()))
  mgr.close()
  return step, out


def _resume_and_straight(base, path):
  resumed, straight = str(base / 'resumed'), str(base / 'straight')
  # Stop mid fade-in (0.06 kimg), then resume to the end (0.12 kimg).
  train.train_and_evaluate(_config(0.06, path), resumed)
  first_step, _ = _restore_all(resumed)
  # As if written before gp_batch_shrink existed (train.LEGACY_ABSENT): it
  # resumes, at the default that computes what it did.
  with open(os.path.join(resumed, 'config.json')) as f:
    old = json.load(f)
  del old['gp_batch_shrink']
  with open(os.path.join(resumed, 'config.json'), 'w') as f:
    json.dump(old, f)
  train.train_and_evaluate(_config(0.12, path), resumed)
  train.train_and_evaluate(_config(0.12, path), straight)
  return first_step, resumed, straight


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  return _resume_and_straight(tmp_path_factory.mktemp('pggan'), 'device')


@pytest.fixture(scope='module')
def stream_runs(tmp_path_factory):
  return _resume_and_straight(tmp_path_factory.mktemp('pggan_s'), 'stream')


@pytest.mark.parametrize('fixture', ['runs', 'stream_runs'])
def test_resume_matches_uninterrupted_run(fixture, request):
  path = 'device' if fixture == 'runs' else 'stream'
  first_step, resumed, straight = request.getfixturevalue(fixture)
  step_a, a = _restore_all(resumed)
  step_b, b = _restore_all(straight)
  assert 0 < first_step < step_a == step_b
  assert a['meta']['lod'] == b['meta']['lod']
  for k in ('g', 'd', 'g_ema', 'opt'):
    la, lb = jax.tree.leaves(a[k]), jax.tree.leaves(b[k])
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert os.listdir(os.path.join(straight, 'samples'))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(straight))
  assert b['meta']['data_mode'] == path
  # One metrics.jsonl record per tick (0.05 kimg, and the end), with SWD.
  recs = [json.loads(line) for line in open(os.path.join(straight,
                                                         'metrics.jsonl'))]
  assert [round(r['kimg'], 3) for r in recs] == [0.056, 0.112, 0.12]
  for r in recs:
    assert {'kimg', 'img/s', 'resolution', 'alpha', 'swd', 'd/loss',
            'g/loss'} <= set(r) and r['swd'] > 0
  # The seconds the loop waited for compilations: some (every stage is new
  # to this run), within the run's time, never falling.
  compile_s = [r['compile_s'] for r in recs]
  assert 0 < compile_s[0] and compile_s == sorted(compile_s)
  assert all(r['compile_s'] <= r['time_s'] for r in recs)
  assert recs[-1]['swd'] == b['meta']['metrics']['swd']
  # A third call finds the schedule complete and returns at once.
  assert train.train_and_evaluate(_config(0.12, path), straight) == b[
      'meta']['metrics']


def test_sample_cli_writes_decodable_pngs(runs, tmp_path):
  _, _, workdir = runs
  out = str(tmp_path / 'out')
  cmd = [sys.executable, 'main.py', '--config=configs/sample.py',
         f'--config.workdir={workdir}', '--config.num_images=3',
         f'--config.output_dir={out}']
  res = subprocess.run(cmd, cwd=_ROOT, check=True, capture_output=True,
                       text=True)
  assert f'wrote 3 images at 8x8 to {out} (3 there in all)' in res.stdout
  pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
  assert len(pngs) == 3
  for f in pngs:
    with Image.open(os.path.join(out, f)) as im:
      assert im.size == (8, 8) and im.mode == 'L'
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['resolution'] == 8 and manifest['seed'] == 0
  # Same seed, same images (in-process API).
  again = sample.sample(workdir, 3, str(tmp_path / 'again'))
  for f in pngs:
    np.testing.assert_array_equal(
        np.asarray(Image.open(os.path.join(out, f))),
        np.asarray(Image.open(os.path.join(tmp_path, 'again', f))))
  assert again['checkpoint_step'] == manifest['checkpoint_step']
  # Another seed into the same (flat) folder replaces the first run's
  # images: the folder holds exactly what its manifest lists.
  res = subprocess.run(cmd + ['--config.seed=1'], cwd=_ROOT, check=True,
                       capture_output=True, text=True)
  assert f'wrote 3 images at 8x8 to {out} (3 there in all)' in res.stdout
  pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert pngs == manifest['files'] == [f'0001_{i:05d}.png' for i in range(3)]


def test_sampling_replaces_an_earlier_run_and_an_interrupt_is_unrecorded(
    runs, tmp_path, monkeypatch):
  _, _, workdir = runs   # a GAN of all classes: flat images
  out = tmp_path / 'o'
  # An earlier run of one-class GANs, and a file the sampler never wrote.
  for c in ('normal', 'hemorrhage'):
    (out / c).mkdir(parents=True)
    (out / c / '0000_00000.png').write_bytes(b'png')
  (out / 'notes.txt').write_text('mine')
  (out / 'manifest.json').write_text(json.dumps({
      'class_names': ['normal', 'hemorrhage'],
      'files': ['normal/0000_00000.png', 'hemorrhage/0000_00000.png'],
      'runs': {'normal': {}, 'hemorrhage': {}},
      'gan_training': {'normal': {}, 'hemorrhage': {}}}))
  # Interrupted after its first image: the manifest on disk vouches for
  # nothing (the classifier refuses the folder), the old images are gone.
  saved = []

  def save_then_stop(img, path):
    if saved:
      raise KeyboardInterrupt
    saved.append(path)
    Image.fromarray(img[..., 0]).save(path)

  monkeypatch.setattr(sample.image_io, 'save_png', save_then_stop)
  with pytest.raises(KeyboardInterrupt):
    sample.sample(workdir, 3, str(out))
  monkeypatch.undo()
  m = json.loads((out / 'manifest.json').read_text())
  assert m['runs'] == {} and m['files'] == [] and m['gan_training'] == {}
  assert sorted(os.listdir(out)) == ['0000_00000.png', 'manifest.json',
                                     'notes.txt']
  # A complete run: exactly what its manifest lists, the user's file kept.
  m = sample.sample(workdir, 3, str(out))
  pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
  assert pngs == m['files'] == [f'0000_{i:05d}.png' for i in range(3)]
  assert sorted(os.listdir(out)) == pngs + ['manifest.json', 'notes.txt']
  assert list(m['runs']) == ['all']


def test_merged_manifest_keeps_other_classes_and_names_stale_files(
    tmp_path):
  names = ['normal', 'hemorrhage']
  old = {'class_names': names, 'files': [
      'normal/0000_00000.png', 'hemorrhage/0000_00000.png',
      '../outside.png', 'notes.txt'],
         'runs': {'normal': {}, 'hemorrhage': {}},
         'gan_training': {'normal': {}, 'hemorrhage': {}}}
  (tmp_path / 'manifest.json').write_text(json.dumps(old))
  # A one-class GAN's folder is replaced; the other class's entry stays.
  merged, stale = sample._merged_manifest(str(tmp_path), 'normal', names,
                                          ['normal'])
  assert merged['files'] == ['hemorrhage/0000_00000.png']
  assert list(merged['runs']) == ['hemorrhage']
  assert stale == ['normal/0000_00000.png']
  # A GAN of all classes starts afresh: every PNG listed before is stale,
  # never a path outside the folder or another kind of file.
  merged, stale = sample._merged_manifest(str(tmp_path), 'all', names, [])
  assert merged == {'runs': {}, 'files': [], 'gan_training': {}}
  assert stale == ['normal/0000_00000.png', 'hemorrhage/0000_00000.png']
  # Other classes: afresh too.
  _, stale = sample._merged_manifest(str(tmp_path), 'a', ['a', 'b'], ['a'])
  assert len(stale) == 2
  (tmp_path / 'manifest.json').write_text('not json')
  assert sample._merged_manifest(str(tmp_path), 'normal', names,
                                 ['normal']) == (
                                     {'runs': {}, 'files': [],
                                      'gan_training': {}}, [])


def test_sample_without_checkpoint_is_one_line_error(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  (empty / 'config.json').write_text('{}')
  cmd = [sys.executable, 'main.py', '--config=configs/sample.py',
         f'--config.workdir={empty}', f'--config.output_dir={tmp_path}/o']
  res = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True)
  assert res.returncode == 2
  assert res.stderr.strip().splitlines()[-1].startswith('error: no checkpoint')


def _events_one_at_a_time(at, cfg, total_nimg):
  """The loop before dispatches: per iteration (nimg, alpha, reset, tick,
  ckpt, log)."""
  nimg = step = tick_start = ckpt_start = 0
  prev_lod, out = -1.0, []
  while nimg < total_nimg:
    p = at(nimg / 1000)
    reset = schedule.lod_changed(prev_lod, p.lod)
    prev_lod = p.lod
    before = nimg
    nimg += p.batch_size * cfg.d_repeats
    step += 1
    done = nimg >= total_nimg
    tick = nimg >= tick_start + p.tick_kimg * 1000 or done
    ckpt = nimg >= ckpt_start + cfg.checkpoint_kimg * 1000 or done
    tick_start = nimg if tick else tick_start
    ckpt_start = nimg if ckpt else ckpt_start
    out.append((before, p.alpha, reset, tick, ckpt,
                step % cfg.log_every_steps == 0 or done))
  return out


@pytest.mark.parametrize('k_max', [1, 5, 64])
def test_dispatch_plan_matches_the_schedule_one_iteration_at_a_time(k_max):
  cfg = pggan.get_config('tiny')
  cfg.sched.minibatch_dict = '4:16,8:8,16:4'
  cfg.sched.tick_kimg = 0.07
  cfg.checkpoint_kimg = 0.3
  cfg.log_every_steps = 7
  cfg.d_repeats = 2
  at = schedule.schedule_fn(cfg)
  total = int(cfg.total_kimg * 1000)
  ref = _events_one_at_a_time(at, cfg, total)
  nimg = step = tick_start = ckpt_start = 0
  prev_lod, got, sizes = -1.0, [], []
  while nimg < total:
    d = schedule.plan_dispatch(
        at, nimg=nimg, step=step, total_nimg=total, max_iters=k_max,
        d_repeats=2, log_every=7, tick_start=tick_start,
        ckpt_start=ckpt_start, checkpoint_kimg=cfg.checkpoint_kimg)
    sizes.append(len(d.points))
    for i, (p, n) in enumerate(zip(d.points, d.nimgs)):
      reset = schedule.lod_changed(prev_lod, p.lod)
      assert i == 0 or not reset      # resets only start a dispatch
      prev_lod = p.lod
      last = i == len(d.points) - 1
      got.append((n, p.alpha, reset, d.tick and last, d.ckpt and last,
                  d.log and last))
      assert p.stage == d.points[0].stage
    nimg = d.nimgs[-1] + d.points[-1].batch_size * 2
    step += len(d.points)
    tick_start = nimg if d.tick else tick_start
    ckpt_start = nimg if d.ckpt else ckpt_start
  assert [g[:5] for g in got] == [r[:5] for r in ref]
  # Every log point of the old loop is a dispatch end that reads back.
  assert all(g[5] for g, r in zip(got, ref) if r[5])
  assert max(sizes) == min(k_max, 7)


@pytest.mark.parametrize('shrink, match', [
    (0, 'config.gp_batch_shrink=0 must be an integer >= 1'),
    (3, 'config.gp_batch_shrink=3 does not divide the minibatch 8 at 4x4'),
    # 8 / 4 = 2 pairs: not a whole group of 4.
    (4, 'config.gp_batch_shrink=4 leaves 2 of the minibatch 8 at 4x4: not '
        'whole minibatch-stddev groups of 4')])
def test_gp_batch_shrink_is_checked(shrink, match):
  cfg = pggan.get_config('tiny')   # minibatch 8, mbstd groups of 4
  train.check_config(cfg)
  cfg.gp_batch_shrink = 2
  train.check_config(cfg)
  cfg.gp_batch_shrink = shrink
  with pytest.raises(train.UserInputError, match=match):
    train.check_config(cfg)


def test_upsample_is_checked():
  cfg = pggan.get_config('tiny')
  cfg.model.upsample = 'bilinear'
  train.check_config(cfg)
  cfg.model.upsample = 'bicubic'
  with pytest.raises(train.UserInputError, match=(
      r"^config\.model\.upsample='bicubic' is not one of "
      r"\['nearest', 'bilinear'\]$")):
    train.check_config(cfg)


def test_another_gp_batch_shrink_is_refused_on_resume(runs):
  """Checkpoints made with the penalty on the whole batch do not resume
  with it on half of it: refused, naming the key."""
  _, resumed, _ = runs
  cfg = _config(0.2)
  cfg.gp_batch_shrink = 2
  with pytest.raises(train.UserInputError, match='gp_batch_shrink'):
    train.train_and_evaluate(cfg, resumed)
