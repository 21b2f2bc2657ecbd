"""Tests for resnet_jax.predict, through main.py as a user runs it."""

import csv
import json
import os

import numpy as np
from PIL import Image
import pytest

import input_pipeline_testlib as lib

from configs import resnet as resnet_config
from input_pipeline import dataset
from input_pipeline.errors import UserInputError
from resnet_jax import predict



_main = lib.run_main


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished :tiny classifier and its (cached) dataset."""
  base = tmp_path_factory.mktemp('predict')
  tfds_dir, workdir = str(base / 'tfds'), str(base / 'run')
  # Trained at 16x16 from 32x32 stored images, so predict must resize as
  # the pipeline does to reproduce the run's own test probabilities.
  res = _main('--config=configs/resnet.py:tiny', f'--workdir={workdir}',
              f'--config.data.tfds_dir={tfds_dir}',
              '--config.data.resolution=16')
  data = resnet_config.get_config('tiny').data
  data.tfds_dir = tfds_dir
  assert data.storage_size == 32
  return workdir, dataset.prepare(data), res.stderr


def _read(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_predict_matches_training_evaluation(run, tmp_path):
  workdir, prepared, _ = run
  # The fold's test images as files a user would bring: nested folders,
  # upper-case extensions, plus a corrupt file, a hidden one, a text file.
  images = tmp_path / 'in'
  expected = {}
  with open(os.path.join(workdir, 'test_predictions.csv')) as f:
    probs = {r['id']: float(r['prob']) for r in csv.DictReader(f)}
  for k, i in enumerate(prepared.indices(0, 'test')):
    ex = prepared.source[i]
    sub = images / ('a' if k % 2 else 'b')
    sub.mkdir(parents=True, exist_ok=True)
    path = sub / f'{ex["id"]}.{"PNG" if k % 3 else "png"}'
    Image.fromarray(ex['image'][..., 0]).save(path, format='PNG')
    expected[str(path)] = probs[ex['id']]
  (images / 'a' / 'broken.png').write_bytes(b'not a png')
  (images / '.hidden.png').write_bytes(b'junk')
  (images / 'notes.txt').write_text('ignored')
  out = str(tmp_path / 'p.csv')
  res = _main('--config=configs/predict.py', f'--config.workdir={workdir}',
              f'--config.input={images}', f'--config.output={out}')
  rows = _read(out)
  assert list(rows[0]) == ['path', 'prob', 'label', 'error']
  assert sorted(r['path'] for r in rows) == sorted(
      list(expected) + [str(images / 'a' / 'broken.png')])
  with open(os.path.join(workdir, 'results.json')) as f:
    threshold = json.load(f)['threshold']
  for r in rows:
    if r['path'].endswith('broken.png'):
      assert r['prob'] == r['label'] == ''
      assert 'cannot decode image' in r['error'] and '\n' not in r['error']
      continue
    # Same preprocessing and weights as the run's own test evaluation.
    assert float(r['prob']) == pytest.approx(expected[r['path']], abs=2e-6)
    assert r['label'] == ('hemorrhage' if float(r['prob']) >= threshold
                          else 'normal')
    assert r['error'] == ''
  assert '1 unreadable' in res.stdout
  # Default verbosity: no orbax/jax INFO in the classifier or predict run.
  for stderr in (run[2], res.stderr):
    assert 'checkpoint_manager.py' not in stderr
    assert 'main.py' in stderr  # the project's own INFO stays


def test_predict_single_file_and_workdir_flag(run, tmp_path):
  workdir, prepared, _ = run
  path = tmp_path / 'one.jpeg'
  rgb = np.repeat(prepared.source[0]['image'], 3, axis=-1)
  Image.fromarray(rgb).resize((40, 24)).save(path)  # non-square, RGB JPEG
  out = tmp_path / 'sub' / 'p.csv'
  _main('--config=configs/predict.py', f'--workdir={workdir}',
        f'--config.input={path}', f'--config.output={out}')
  (row,) = _read(out)
  assert row['path'] == str(path) and 0 <= float(row['prob']) <= 1
  assert row['label'] in ('normal', 'hemorrhage') and row['error'] == ''


def test_verbosity_brings_library_logs_back(run, tmp_path):
  workdir, prepared, _ = run
  path = tmp_path / 'x.png'
  Image.fromarray(prepared.source[0]['image'][..., 0]).save(path)
  res = _main('--config=configs/predict.py', f'--workdir={workdir}',
              f'--config.input={path}', f'--config.output={tmp_path}/p.csv',
              '--verbosity=1')
  assert 'checkpoint_manager.py' in res.stderr


@pytest.mark.parametrize('what, message', [
    ('workdir', 'results.json not found'),
    ('input', 'no PNG or JPEG images'),
    ('missing', 'is not a file or directory')])
def test_predict_errors_are_one_line(run, tmp_path, what, message):
  workdir = str(tmp_path) if what == 'workdir' else run[0]
  inputs = {'workdir': run[0], 'input': str(tmp_path),
            'missing': str(tmp_path / 'nope')}[what]
  res = _main('--config=configs/predict.py', f'--config.workdir={workdir}',
              f'--config.input={inputs}',
              f'--config.output={tmp_path}/p.csv', check=False)
  assert res.returncode == 2
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last


def test_list_images_recursive_any_case_no_hidden(tmp_path):
  for name in ('b/x.JPG', 'a/y.png', 'a/.z.png', '.h/w.png', 'c.Jpeg',
               'd.gif'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  got = [os.path.relpath(p, tmp_path)
         for p in predict.list_images(str(tmp_path))]
  assert got == ['c.Jpeg', 'a/y.png', 'b/x.JPG']
  assert predict.list_images(str(tmp_path / 'd.gif')) == [
      str(tmp_path / 'd.gif')]  # a file named explicitly is tried as is
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserInputError, match='no PNG or JPEG'):
    predict.list_images(str(tmp_path / 'empty'))
