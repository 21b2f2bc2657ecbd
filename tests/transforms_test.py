"""Tests for input_pipeline.preprocess, transforms and phantom (numpy only)."""

import numpy as np
import pytest
from PIL import Image

from input_pipeline import config
from input_pipeline import phantom
from input_pipeline import preprocess
from input_pipeline import transforms
from input_pipeline.errors import UserInputError


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', 'I;16',
                                  'I', 'F'])
def test_to_gray_any_mode(mode):
  x = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (4, 1))  # 4 x 10
  img = Image.fromarray(x).convert(mode)
  if mode == 'I;16':
    img = Image.fromarray((x.astype(np.uint16) * 257))
  g = preprocess.to_gray(img)
  assert g.dtype == np.uint8 and g.shape == (4, 10)
  # Monotone in the source intensity, full range kept.
  assert np.all(np.diff(g[0].astype(int)) > 0)
  assert g.min() == 0 and g.max() >= 225


def test_to_gray_composites_transparency_over_black():
  rgba = np.full((2, 2, 4), 255, np.uint8)
  rgba[0, 0, 3] = 0
  g = preprocess.to_gray(Image.fromarray(rgba, 'RGBA'))
  assert g[0, 0] == 0 and g[1, 1] == 255


def test_to_square_keeps_aspect_and_pads_with_background():
  x = np.full((40, 20), 10, np.uint8)  # tall, border = 10
  x[5:35, 5:15] = 200
  y = preprocess.to_square(x, 16)
  assert y.shape == (16, 16, 1)
  # 40x20 -> 16x8, centred: columns 0-3 and 12-15 are padding.
  assert np.all(y[:, :4] == 10) and np.all(y[:, 12:] == 10)
  assert y[8, 8, 0] > 150


def test_resize_square_is_exact_box_filter_for_powers_of_two():
  x = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
  y = preprocess.resize_square(x, 16)
  ref = x.reshape(16, 4, 16, 4, 1).astype(np.float64).mean(axis=(1, 3))
  assert y.dtype == np.uint8 and y.shape == (16, 16, 1)
  assert np.abs(y - ref).max() <= 0.5
  assert preprocess.resize_square(x, 48).shape == (48, 48, 1)
  assert preprocess.resize_square(np.dstack([x] * 3), 8).shape == (8, 8, 3)


@pytest.mark.parametrize('content,match', [
    (b'', 'empty'), (b'not an image at all', 'cannot decode')])
def test_open_image_errors_name_the_file(tmp_path, content, match):
  path = tmp_path / 'bad.png'
  path.write_bytes(content)
  with pytest.raises(UserInputError, match=match) as e:
    preprocess.open_image(str(path))
  assert str(path) in str(e.value)


def test_to_float_range():
  y = transforms.to_float(np.array([0, 255], np.uint8))
  np.testing.assert_allclose(y, [-1, 1])
  assert y.dtype == np.float32


def _example(side=32):
  x = np.zeros((side, side, 1), np.uint8)
  x[8:24, 4:12] = 200  # off-centre bright block (left side)
  return {'image': x, 'label': np.int32(1)}


def test_augment_disabled_knobs_is_identity():
  aug = config.get_augment_config(True)
  aug.flip_prob = aug.rotate_deg = aug.translate = aug.zoom = 0.0
  aug.brightness = aug.contrast = 0.0
  ex = _example()
  out = transforms.Augment(aug)(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], transforms.to_float(ex['image']))


def test_augment_flip_only_mirrors():
  aug = config.get_augment_config(True)
  aug.rotate_deg = aug.translate = aug.zoom = 0.0
  aug.brightness = aug.contrast = 0.0
  aug.flip_prob = 1.0
  ex = _example()
  out = transforms.Augment(aug)(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'],
                                transforms.to_float(ex['image'][:, ::-1]))


def test_augment_is_seeded_in_range_and_changes_image():
  aug = transforms.Augment(config.get_augment_config(True))
  ex = _example()
  a = aug(ex, np.random.default_rng(3))['image']
  b = aug(ex, np.random.default_rng(3))['image']
  c = aug(ex, np.random.default_rng(4))['image']
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == np.float32 and a.shape == (32, 32, 1)
  assert a.min() >= -1 and a.max() <= 1


def test_affine_translation_moves_content():
  x = _example()['image']
  y = transforms.affine(x, 0.0, 1.0, 4.0, 0.0)
  np.testing.assert_array_equal(y[:, 4:], x[:, :-4])


def test_phantom_deterministic_and_positive_class_is_brighter_inside():
  a = phantom.head_ct_phantom(64, 1, 0, 5)
  np.testing.assert_array_equal(a, phantom.head_ct_phantom(64, 1, 0, 5))
  assert not np.array_equal(a, phantom.head_ct_phantom(64, 1, 1, 5))
  assert a.dtype == np.uint8 and a.shape == (64, 64)
  assert a[0, 0] == 0  # black background
  # Haemorrhage adds hyperdense (~0.7) pixels, absent from normal phantoms.
  def hyper(label):
    return np.mean([((phantom.head_ct_phantom(64, label, 0, i) > 165)
                     & (phantom.head_ct_phantom(64, label, 0, i) < 215)).sum()
                    for i in range(10)])
  assert hyper(1) > 3 * hyper(0) + 10


def test_affine_flip_is_folded_into_the_warp():
  x = np.random.default_rng(0).integers(0, 256, (32, 32, 1), dtype=np.uint8)
  folded = transforms.affine(x, 7.0, 1.1, 1.5, -2.0, flip=True)
  two_step = transforms.affine(np.ascontiguousarray(x[:, ::-1]), 7.0, 1.1,
                               1.5, -2.0)
  np.testing.assert_array_equal(folded, two_step)
