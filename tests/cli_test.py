"""The README's per-class recipe, end to end through main.py.

data report -> one PGGAN for class 1 on fold 0 -> sample (--workdir) ->
classifier on fold 0 with those synthetic images -> predict. Plus the
sample command's workdir errors.
"""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import input_pipeline_testlib as lib

from configs import sample as sample_config
from input_pipeline import cli
from input_pipeline.errors import UserInputError

# The :tiny classifier's data (configs/resnet.py:tiny), for every job.
_DATA = ['--config.data.synthetic_per_class=16',
         '--config.data.synthetic_size=32', '--config.data.storage_size=32',
         '--config.data.num_folds=2', '--config.data.val_fraction=0.25']


_main = lib.run_main


@pytest.fixture(scope='module')
def recipe(tmp_path_factory):
  base = tmp_path_factory.mktemp('recipe')
  tfds = f'--config.data.tfds_dir={base / "tfds"}'
  w = {k: str(base / k) for k in ('data', 'gan', 'out', 'clf')}
  out = {}
  out['data'] = _main('--config=configs/data.py', f'--workdir={w["data"]}',
                      tfds, *_DATA)
  # A GAN for 'hemorrhage' (1) on fold 0's training images; 8x8, 0.12 kimg.
  out['gan'] = _main(
      '--config=configs/pggan.py:tiny', f'--workdir={w["gan"]}', tfds, *_DATA,
      '--config.data.fold=0', '--config.data.class_filter=1',
      '--config.model.resolution=8', '--config.sched.lod_training_kimg=0.04',
      '--config.sched.lod_transition_kimg=0.04',
      '--config.sched.tick_kimg=0.05', '--config.total_kimg=0.12')
  out['sample'] = _main('--config=configs/sample.py', f'--workdir={w["gan"]}',
                        '--config.num_images=8',
                        f'--config.output_dir={w["out"]}')
  out['clf'] = _main('--config=configs/resnet.py:tiny', f'--workdir={w["clf"]}',
                     tfds, '--config.data.fold=0', '--config.arm=gan',
                     f'--config.data.synthetic_dir={w["out"]}')
  return w, out


def test_data_report_examples_are_labelled(recipe):
  w, _ = recipe
  img = np.asarray(Image.open(os.path.join(w['data'], 'examples.png')))
  # 32 px stored images shown at 96 px, 8 per row, 2 class rows, each with
  # a caption strip under it; a class-label column on the left.
  tile, pad, caption = 96, 4, 14
  assert img.shape[0] == pad + 2 * (tile + caption + pad)
  label_w = img.shape[1] - 8 * (tile + pad) - pad
  assert label_w > 40
  for row in range(2):
    y = pad + row * (tile + caption + pad)
    # White text: the class name left of the row, an id under each image.
    assert (img[y:y + tile, :label_w] > 200).sum() > 20
    for k in range(8):
      x = label_w + k * (tile + pad)
      strip = img[y + tile:y + tile + caption, x:x + tile]
      assert (strip > 200).sum() > 10, (row, k)


def test_one_class_gan_samples_into_its_class_folder(recipe):
  w, out = recipe
  assert sorted(os.listdir(w['out'])) == ['hemorrhage', 'manifest.json']
  assert len(os.listdir(os.path.join(w['out'], 'hemorrhage'))) == 8
  with open(os.path.join(w['out'], 'manifest.json')) as f:
    manifest = json.load(f)
  assert manifest['runs']['hemorrhage']['workdir'] == w['gan']
  assert f'to {w["out"]}' in out['sample'].stdout


def test_classifier_records_one_class_shares_and_provenance(recipe):
  w, out = recipe
  with open(os.path.join(w['clf'], 'results.json')) as f:
    results = json.load(f)
  syn = results['synthetic']
  assert syn['dir'] == w['out'] and syn['ratio'] == 0.5
  assert syn['images'] == {'normal': 0, 'hemorrhage': 8}
  assert syn['share_of_synthetic_stream'] == {'normal': 0.0,
                                              'hemorrhage': 1.0}
  # Fold 0's train split is balanced (6 + 6): hemorrhage gets
  # .5 / (.5 + .5 * .5) = 2/3 of its training images synthetic.
  assert syn['synthetic_fraction_per_class'] == {'normal': 0.0,
                                                 'hemorrhage': 0.6667}
  (gan,) = syn['gans']
  assert gan['entry'] == 'hemorrhage' and gan['workdir'] == w['gan']
  assert gan['checkpoint_step'] == 120 and gan['resolution'] == 8
  with open(os.path.join(w['clf'], 'config.json')) as f:
    config = json.load(f)
  assert config['arm'] == 'gan'
  assert config['data']['synthetic_dir'] == w['out']
  stderr = out['clf'].stderr
  # 8x8 samples in a 32x32 classifier: warned about, once.
  assert stderr.count('are upsampled') == 1
  assert "'hemorrhage': 0.6667" in stderr  # the shares are logged
  assert 'checkpoint_manager.py' not in stderr  # orbax INFO stays quiet
  # One line says where the results are, and a rerun that nothing trained.
  line = (f"{w['clf']}/results.json: test AUC {results['test']['auc']:.3f}, "
          'accuracy '
          f"{results['test_at_val_threshold']['accuracy']:.3f} at the "
          'validation threshold')
  assert out['clf'].stdout.strip().splitlines()[-1] == line
  again = _main('--config=configs/resnet.py:tiny', f'--workdir={w["clf"]}',
                f'--config.data.tfds_dir={os.path.dirname(w["clf"])}/tfds',
                '--config.data.fold=0', '--config.arm=gan',
                f'--config.data.synthetic_dir={w["out"]}')
  assert again.stdout.strip().splitlines()[-1].startswith(
      line + ' (finished before: nothing trained')
  assert (f"wrote 8 images at 8x8 to {w['out']} (8 there in all)"
          in out['sample'].stdout)


def test_predict_with_the_recipe_classifier(recipe, tmp_path):
  w, _ = recipe
  out = tmp_path / 'p.csv'
  _main('--config=configs/predict.py', f'--config.workdir={w["clf"]}',
        f'--config.input={w["out"]}', f'--config.output={out}')
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and all(r['error'] == '' for r in rows)
  assert {r['label'] for r in rows} <= {'normal', 'hemorrhage'}


def test_sample_takes_the_workdir_flag(tmp_path):
  # --workdir alone is used as the GAN workdir: the error is about its
  # contents, not a missing config.workdir.
  res = _main('--config=configs/sample.py', '--workdir=/nonexistent_gan',
              f'--config.output_dir={tmp_path}/o', check=False)
  assert res.returncode == 2
  last = res.stderr.strip().splitlines()[-1]
  assert last == ('error: /nonexistent_gan/config.json not found: is '
                  'config.workdir a PGGAN training workdir?')


@pytest.mark.parametrize('config_workdir, flag, message', [
    ('', None, '--config.workdir=W (or --workdir=W)'),
    ('/a', '/b', 'differ')])
def test_sample_workdir_errors(tmp_path, config_workdir, flag, message):
  from pggan_jax import sample  # pylint: disable=g-import-not-at-top
  config = sample_config.get_config()
  config.workdir = config_workdir
  config.output_dir = str(tmp_path / 'o')
  with pytest.raises(UserInputError, match=re.escape(message)):
    sample.sample_from_config(config, flag)


@pytest.mark.parametrize('current, expected', [
    ('', '--xla_gpu_enable_triton_gemm=false'),
    # Several simulated CPU devices: a longer rendezvous timeout too.
    ('--xla_force_host_platform_device_count=8',
     '--xla_force_host_platform_device_count=8 '
     '--xla_gpu_enable_triton_gemm=false '
     '--xla_cpu_collective_call_terminate_timeout_seconds=600'),
    ('--xla_force_host_platform_device_count=1',
     '--xla_force_host_platform_device_count=1 '
     '--xla_gpu_enable_triton_gemm=false'),
    ('--xla_force_host_platform_device_count=2 '
     '--xla_cpu_collective_call_terminate_timeout_seconds=30',
     '--xla_force_host_platform_device_count=2 '
     '--xla_cpu_collective_call_terminate_timeout_seconds=30 '
     '--xla_gpu_enable_triton_gemm=false'),
    # The user's own setting wins.
    ('--xla_gpu_enable_triton_gemm=true', '--xla_gpu_enable_triton_gemm=true'),
    ('--xla_gpu_enable_triton_gemm', '--xla_gpu_enable_triton_gemm'),
    # Not flags: XLA reads the value as a file of flags; left alone.
    ('/etc/xla_flags.txt', '/etc/xla_flags.txt')])
def test_xla_flags_with_defaults(current, expected):
  from input_pipeline import cli  # pylint: disable=g-import-not-at-top
  assert cli.xla_flags_with_defaults(current) == expected


def _main_log(tmp_path, env, defaults=None):
  """main.py's 'local devices' log line, run on the CPU until it fails on
  its missing GAN workdir; `defaults` replace cli.XLA_DEFAULTS."""
  env = {**{k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
         'JAX_PLATFORMS': 'cpu', **env}
  patch = (f'from input_pipeline import cli; cli.XLA_DEFAULTS = {defaults!r}; '
           if defaults else '')
  code = (f'import runpy, sys; {patch}sys.argv = ["main.py", '
          '"--config=configs/sample.py", "--workdir=/nonexistent_gan", '
          f'"--config.output_dir={tmp_path}/o"]; '
          'runpy.run_path("main.py", run_name="__main__")')
  res = subprocess.run([sys.executable, '-c', code], cwd=lib.ROOT, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 2, res.stderr[-2000:]
  return next(l for l in res.stderr.splitlines() if 'local devices' in l)


@pytest.mark.parametrize('given, expected', [
    ({}, "XLA_FLAGS='--xla_gpu_enable_triton_gemm=false'"),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=2 '
                   '--xla_gpu_enable_triton_gemm=true'},
     "XLA_FLAGS='--xla_force_host_platform_device_count=2 "
     "--xla_gpu_enable_triton_gemm=true "
     "--xla_cpu_collective_call_terminate_timeout_seconds=600'")])
def test_main_logs_its_xla_flags(tmp_path, given, expected):
  line = _main_log(tmp_path, given)
  assert line.endswith(expected)
  assert line.count('CpuDevice') == (2 if given else 1)


def test_main_sets_xla_defaults_before_jax_starts(tmp_path):
  # A default main.py adds reaches XLA: with a device-count flag as the
  # default, the CPU has that many devices.
  line = _main_log(tmp_path, {},
                   ('--xla_force_host_platform_device_count=3',))
  assert line.count('CpuDevice') == 3


@pytest.mark.parametrize('path', sorted(
    os.path.relpath(p, lib.ROOT) for p in glob.glob(
        os.path.join(lib.ROOT, 'configs', '*.py'))
    if not p.endswith('__init__.py')))
def test_every_config_refuses_an_unknown_variant(path, monkeypatch):
  monkeypatch.chdir(lib.ROOT)
  config, reason = cli._load_config(f'{path}:nosuch')
  assert config is None
  assert reason.startswith(f"--config={path}:nosuch: unknown variant "
                           f"'nosuch' of {path} (variants: "), reason


@pytest.mark.parametrize('config, message', [
    ('configs/pggan.py:tiny',
     'error: config.sched.minibatch_base: the minibatch 8 at 4x4 does not '
     'divide over the 3 devices'),
    ('configs/resnet.py:tiny',
     'error: config.batch_size=8 is not divisible by the 3 devices')])
def test_batch_not_divisible_by_devices_is_one_line_error(
    tmp_path, config, message):
  # Three CPU devices and :tiny's minibatch of 8: refused before training,
  # in one line naming the key, nothing rounded or written.
  env = {**{k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
         'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=3'}
  res = subprocess.run(
      [sys.executable, 'main.py', f'--config={config}',
       f'--workdir={tmp_path}/w'], cwd=lib.ROOT, env=env,
      capture_output=True, text=True)
  assert res.returncode == 2, res.stderr[-2000:]
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith(message), last
  assert not os.path.exists(os.path.join(tmp_path, 'w', 'checkpoints'))
