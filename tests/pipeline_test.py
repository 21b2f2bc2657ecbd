"""Tests for input_pipeline.pipeline: batches, determinism, state, mixing."""

import os

import input_pipeline_testlib as lib
import numpy as np
import pytest
from PIL import Image

from input_pipeline import dataset
from input_pipeline import pipeline
from input_pipeline import transforms
from input_pipeline.errors import UserInputError


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return lib.data_config(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def prepared(data):
  return dataset.prepare(data)


def test_batches_shape_range_and_split(prepared, data):
  it = pipeline.create_iterator(prepared, data, role='train', resolution=32,
                                batch_size=4, seed=0)
  train_ids = set(prepared.manifest['folds'][0]['train'])
  train_imgs = {prepared.source[i]['image'].tobytes()
                for i in prepared.indices(0, 'train')}
  for _ in range(5):  # more batches than one epoch (6 train images)
    b = next(it)
    assert b['image'].shape == (4, 32, 32, 1)
    assert b['image'].dtype == np.float32 and b['label'].dtype == np.int32
    assert b['image'].min() >= -1 and b['image'].max() <= 1
    # No augmentation: each image is a downsampled stored train image.
    for x in b['image']:
      found = any(np.array_equal(
          transforms.to_float(_down(np.frombuffer(t, np.uint8), 32)), x)
                  for t in train_imgs)
      assert found
  assert len(train_ids) == len(prepared.indices(0, 'train'))


def _down(flat, r):
  x = flat.reshape(64, 64, 1)
  mean = x.reshape(r, 64 // r, r, 64 // r, 1).mean((1, 3))
  return np.floor(mean + 0.5).astype(np.uint8)  # round half up, like Pillow


def test_same_seed_same_batches_and_state_restore(prepared, data):
  data = data.copy_and_resolve_references()
  data.augment.enabled = True
  kw = dict(role='train', resolution=32, batch_size=4, seed=3)
  a = pipeline.create_iterator(prepared, data, **kw)
  b = pipeline.create_iterator(prepared, data, **kw)
  for _ in range(3):
    np.testing.assert_array_equal(next(a)['image'], next(b)['image'])
  state = a.get_state()
  expected = [next(a) for _ in range(2)]
  c = pipeline.create_iterator(prepared, data, **kw)
  c.set_state(state)
  for e in expected:
    got = next(c)
    np.testing.assert_array_equal(got['image'], e['image'])
    np.testing.assert_array_equal(got['label'], e['label'])
  other = pipeline.create_iterator(prepared, data, **{**kw, 'seed': 4})
  d = pipeline.create_iterator(prepared, data, **kw)
  assert not np.array_equal(next(other)['image'], next(d)['image'])


def test_eval_iterator_reads_split_once_in_order(prepared, data):
  it = pipeline.create_iterator(prepared, data, role='test', resolution=16,
                                batch_size=3, train=False)
  labels = np.concatenate([b['label'] for b in it])
  idx = prepared.indices(0, 'test')
  np.testing.assert_array_equal(labels, prepared.labels[idx])


def test_class_filter(prepared, data):
  it = pipeline.create_iterator(prepared, data, batch_size=4, class_filter=1)
  assert all(next(it)['label'].tolist() == [1] * 4 for _ in range(3))
  with pytest.raises(UserInputError, match='class_filter'):
    pipeline.create_iterator(prepared, data, batch_size=4, class_filter=5)


def test_load_arrays_matches_source(prepared, data):
  x, y, ids = pipeline.load_arrays(prepared, data, role='test', resolution=16)
  idx = prepared.indices(0, 'test')
  assert x.shape == (len(idx), 16, 16, 1) and x.dtype == np.float32
  assert ids == [prepared.ids[i] for i in idx] and y.dtype == np.int32
  np.testing.assert_array_equal(y, prepared.labels[idx])
  np.testing.assert_array_equal(
      x[0], transforms.to_float(_down(prepared.source[idx[0]]['image'], 16)))
  x_all, _, _ = pipeline.load_arrays(prepared, data, role='train', fold=-1)
  assert len(x_all) == len(prepared.ids)
  with pytest.raises(UserInputError, match='storage_size'):
    pipeline.load_arrays(prepared, data, resolution=128)


def _write_synthetic(root, names, n=3, value=255):
  for name in names:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(n):
      Image.fromarray(np.full((16, 16), value, np.uint8)).save(
          os.path.join(root, name, f'{i}.png'))
  return str(root)


def test_synthetic_mixing_ratio(prepared, data, tmp_path):
  # Synthetic images are pure white (1.0); real phantoms never are.
  sdir = _write_synthetic(tmp_path / 's', prepared.class_names)
  it = pipeline.create_iterator(prepared, data, resolution=16, batch_size=10,
                                synthetic_dir=sdir, synthetic_ratio=0.3)
  synth = [float((next(it)['image'].min(axis=(1, 2, 3)) == 1).mean())
           for _ in range(10)]
  assert abs(np.mean(synth) - 0.3) < 0.05, synth
  # Only the filtered class's folder is needed and used.
  only = _write_synthetic(tmp_path / 'o', [prepared.class_names[1]])
  it = pipeline.create_iterator(prepared, data, resolution=16, batch_size=8,
                                class_filter=1, synthetic_dir=only,
                                synthetic_ratio=0.5)
  assert next(it)['label'].tolist() == [1] * 8


def test_synthetic_errors(prepared, data, tmp_path):
  with pytest.raises(UserInputError, match='synthetic_dir'):
    pipeline.create_iterator(prepared, data, batch_size=4, synthetic_dir='',
                             synthetic_ratio=0.5)
  with pytest.raises(UserInputError, match='no class folder'):
    pipeline.create_iterator(prepared, data, batch_size=4,
                             synthetic_dir=str(tmp_path),
                             synthetic_ratio=0.5)
  sdir = _write_synthetic(tmp_path / 's', prepared.class_names[:1])
  bad = os.path.join(tmp_path, 's', 'hemorrhage')
  os.makedirs(bad)
  # A class folder that exists but is empty is an error naming it.
  with pytest.raises(UserInputError, match='s/hemorrhage .* no PNG'):
    pipeline.create_iterator(prepared, data, batch_size=4, synthetic_dir=sdir,
                             synthetic_ratio=0.5)
  with open(os.path.join(bad, 'x.png'), 'wb') as f:
    f.write(b'junk')
  with pytest.raises(UserInputError, match='x.png'):
    pipeline.create_iterator(prepared, data, batch_size=4, synthetic_dir=sdir,
                             synthetic_ratio=0.5)


def test_synthetic_for_one_class_only(prepared, data, tmp_path, caplog):
  # A one-class GAN's images (16x16) for 'hemorrhage' only, at 32x32.
  sdir = _write_synthetic(tmp_path / 's', ['hemorrhage'], n=4)
  with caplog.at_level('WARNING'):
    it = pipeline.create_iterator(prepared, data, resolution=32,
                                  batch_size=10, synthetic_dir=sdir,
                                  synthetic_ratio=0.5)
  upsampled = [r for r in caplog.records if 'upsampled' in r.getMessage()]
  assert len(upsampled) == 1 and '4 of 4' in upsampled[0].getMessage()
  for _ in range(4):
    b = next(it)
    white = b['image'].min(axis=(1, 2, 3)) == 1
    assert white.any() and (b['label'][white] == 1).all()
  shares = pipeline.synthetic_shares(prepared, sdir, 0.5, fold=0)
  assert shares['images'] == {'normal': 0, 'hemorrhage': 4}
  assert shares['share_of_synthetic_stream'] == {'normal': 0.0,
                                                 'hemorrhage': 1.0}
  # With real share p of hemorrhage in the train split, hemorrhage gets
  # .5 * 1 / (.5 * 1 + .5 * p) synthetic (2/3 when p = .5), normal none.
  labels = prepared.labels[prepared.indices(0, 'train')]
  p = float(np.mean(labels == 1))
  assert shares['synthetic_fraction_per_class'] == {
      'normal': 0.0,
      'hemorrhage': pytest.approx(.5 / (.5 + .5 * p), abs=1e-4)}
  # No upsampling warning at the images' own size.
  caplog.clear()
  with caplog.at_level('WARNING'):
    pipeline.load_synthetic(sdir, prepared.class_names, [0, 1], 16, 1)
  assert not [r for r in caplog.records if 'upsampled' in r.getMessage()]


def test_workers_give_same_batches(prepared, data):
  kw = dict(resolution=32, batch_size=4, seed=1)
  ref = pipeline.create_iterator(prepared, data, **kw)
  mp = pipeline.create_iterator(prepared, data, num_workers=2, **kw)
  for _ in range(3):
    np.testing.assert_array_equal(next(ref)['image'], next(mp)['image'])
