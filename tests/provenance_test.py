"""Tests for input_pipeline.provenance: GANs never leak held-out images."""

import json
import os

import input_pipeline_testlib as lib
import numpy as np
import pytest

from configs import resnet as resnet_config
from input_pipeline import dataset
from input_pipeline import images
from input_pipeline import provenance
from input_pipeline.errors import UserInputError
from resnet_jax import train


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp('tfds')
  return dataset.prepare(lib.data_config(tfds_dir)), tfds_dir


def _synthetic_dir(root, record, class_names):
  """A sampler-like folder: PNGs per class and a manifest with `record`."""
  for c in class_names:
    for i in range(3):
      images.save_png(np.full((32, 32, 1), 10 * i, np.uint8),
                      os.path.join(root, c, f'{i}.png'))
  with open(os.path.join(root, 'manifest.json'), 'w') as f:
    json.dump({'gan_training': {'all': record}}, f)
  return str(root)


def _record(p, fold, class_filter=-1):
  data = lib.data_config('/unused', fold=fold, class_filter=class_filter)
  return provenance.training_record(p, data)


def test_record_lists_the_gan_training_ids(prepared):
  p, _ = prepared
  rec = _record(p, 0, class_filter=1)
  train_ids = {p.ids[i] for i in p.indices(0, 'train')}
  assert rec['train_ids'] and set(rec['train_ids']) <= train_ids
  assert all(p.labels[p.ids.index(i)] == 1 for i in rec['train_ids'])
  assert rec['split_fingerprint'] == p.split_fingerprint
  assert rec['class_name'] == p.class_names[1]


def test_gan_of_the_same_fold_is_accepted(prepared, tmp_path):
  p, _ = prepared
  d = _synthetic_dir(tmp_path, _record(p, 0), p.class_names)
  out = provenance.check_synthetic(d, p, 0)
  assert out['verified'] and out['gans'] == 1


def test_gan_of_another_fold_or_all_images_is_refused(prepared, tmp_path):
  p, _ = prepared
  test_and_val = len(p.indices(0, 'test')) + len(p.indices(0, 'val'))
  for fold in (1, -1):  # fold 1's training set holds fold 0's test images
    d = _synthetic_dir(tmp_path / str(fold), _record(p, fold), p.class_names)
    with pytest.raises(UserInputError, match=r'trained on (\d+) of the '
                       'validation/test images') as e:
      provenance.check_synthetic(d, p, 0)
    n = int(str(e.value).split('trained on ')[1].split(' ')[0])
    assert 0 < n <= test_and_val
    if fold == -1:
      assert n == test_and_val


def test_missing_manifest_is_refused_unless_allowed(prepared, tmp_path):
  p, _ = prepared
  d = _synthetic_dir(tmp_path, {}, p.class_names)
  os.remove(os.path.join(d, 'manifest.json'))
  with pytest.raises(UserInputError, match='allow_unverified_synthetic'):
    provenance.check_synthetic(d, p, 0)
  assert not provenance.check_synthetic(d, p, 0, allow_unverified=True)[
      'verified']


def test_classifier_refuses_leaky_synthetic_before_training(prepared,
                                                            tmp_path):
  p, tfds_dir = prepared
  d = _synthetic_dir(tmp_path / 'syn', _record(p, 1), p.class_names)
  config = resnet_config.get_config('tiny')
  config.data = lib.data_config(tfds_dir, fold=0, synthetic_dir=d,
                                synthetic_ratio=0.5, resolution=32)
  config.arm = 'gan'
  workdir = tmp_path / 'run'
  with pytest.raises(UserInputError, match='validation/test images'):
    train.train_and_evaluate(config, str(workdir))
  # Nothing trained or written but the split manifest.
  assert not (workdir / 'checkpoints').exists()
  assert not (workdir / 'results.json').exists()


def test_class_folder_without_its_own_record_is_refused(prepared, tmp_path):
  p, _ = prepared
  d = _synthetic_dir(tmp_path / 'syn', _record(p, 0), p.class_names)
  # A one-class GAN's record covers its folder only.
  with open(os.path.join(d, 'manifest.json'), 'w') as f:
    json.dump({'gan_training': {p.class_names[1]: _record(p, 0, 1)}}, f)
  with pytest.raises(UserInputError, match=p.class_names[0]):
    provenance.check_synthetic(d, p, 0)
  os.rename(os.path.join(d, p.class_names[0]), os.path.join(tmp_path, 'x'))
  assert provenance.check_synthetic(d, p, 0)['verified']
