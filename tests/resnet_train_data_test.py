"""The classifier's batches drawn on the device (resnet_jax/train_data.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet as resnet_config
from input_pipeline import config as data_config
from input_pipeline import sharding
from input_pipeline import transforms
from input_pipeline.errors import UserInputError
from resnet_jax import train
from resnet_jax import steps
from resnet_jax import train_data


class _FixedDraws:
  """A numpy Generator stand-in returning given uniform draws."""

  def __init__(self, u):
    self.u = u

  def random(self, n):
    assert n == len(self.u)
    return self.u


def _head(size=64, seed=0):
  """A bright ring with a textured inside on black: a CT slice's layout."""
  yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
  r = np.hypot(xx, yy)
  rng = np.random.default_rng(seed)
  x = np.where(r < size * 0.4, 90 + 40 * rng.random((size, size)), 0)
  x = np.where((r > size * 0.36) & (r < size * 0.42), 250, x)
  return x.astype(np.uint8)[..., None]


@pytest.mark.parametrize('u', [
    [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],    # identity
    [0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],    # flip only
    [0.9, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5],   # rotation (+9 degrees)
    [0.2, 0.1, 0.9, 0.8, 0.3, 0.7, 0.2],    # all of them
    [0.7, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]])   # every range at its end
def test_device_augmentation_matches_grain_augment(u):
  """The same uniform draws give transforms.Augment's image, up to its
  uint8 rounding (Pillow resamples uint8) and Pillow's border handling."""
  aug = data_config.get_augment_config(True)
  x = _head()
  u = np.asarray(u)
  want = transforms.Augment(aug)({'image': x, 'label': 0},
                                 _FixedDraws(u))['image']
  got = np.asarray(train_data.apply_classic(
      jnp.asarray(transforms.to_float(x))[None], jnp.asarray(u[None],
                                                             jnp.float32),
      train_data.augment_params(aug)))[0]
  diff = np.abs(got - want)
  # Pixels away from the image border agree to about the uint8 step.
  inner = diff[2:-2, 2:-2]
  assert np.quantile(inner, 0.99) < 0.03, np.quantile(inner, 0.99)
  assert diff.mean() < 0.01, diff.mean()
  # The opposite rotation sense and translation signs are far off.
  mirrored = u.copy()
  mirrored[[1, 3, 4]] = 1 - u[[1, 3, 4]]
  if (mirrored != u).any():
    wrong = np.asarray(train_data.apply_classic(
        jnp.asarray(transforms.to_float(x))[None],
        jnp.asarray(mirrored[None], jnp.float32),
        train_data.augment_params(aug)))[0]
    assert np.abs(wrong - want).mean() > 10 * diff.mean()


def test_augment_params_off_is_empty():
  assert train_data.augment_params(data_config.get_augment_config(False)) == ()


@pytest.mark.parametrize('ratio', [0.5, 0.3, 0.25])
def test_interleave_keeps_real_order_and_ratio(ratio):
  j = jnp.arange(4000, dtype=jnp.int32)
  synthetic, k_real, k_synth = map(np.asarray,
                                   train_data._interleave(j, ratio))
  # Real positions take real indices 0, 1, 2, ... in order (as with no
  # synthetic images at all), synthetic ones 0, 1, 2, ...
  assert (k_real[~synthetic] == np.arange((~synthetic).sum())).all()
  assert (k_synth[synthetic] == np.arange(synthetic.sum())).all()
  assert abs(synthetic.mean() - ratio) < 1e-3
  # Evenly spread: every 40 positions hold the ratio, to one image.
  per_batch = synthetic.reshape(-1, 40).sum(1)
  assert per_batch.max() - per_batch.min() <= 1
  # Still exact just below the 2**24 positions a run may draw.
  j = jnp.arange(2**24 - 8000, 2**24, dtype=jnp.int32)
  synthetic, k_real, k_synth = map(np.asarray,
                                   train_data._interleave(j, ratio))
  assert (np.diff(k_real[~synthetic]) == 1).all()
  assert (np.diff(k_synth[synthetic]) == 1).all()
  assert k_real[~synthetic][0] + k_synth[synthetic][0] in (
      2**24 - 8000, 2**24 - 8000 + 1)


def _draw_data(n_real=10, n_synth=6, ratio=0.0, augment=(), batch=4,
               seed=0):
  rng = np.random.default_rng(1)
  host = {'real': rng.integers(0, 256, (n_real, 8, 8, 1), np.uint8),
          'real_labels': np.arange(n_real, dtype=np.int32) % 2,
          'synthetic': rng.integers(0, 256, (n_synth, 8, 8, 1), np.uint8),
          'synthetic_labels': np.full(n_synth, 7, np.int32)}
  # Each image's first pixel names it.
  host['real'][:, 0, 0, 0] = np.arange(n_real)
  host['synthetic'][:, 0, 0, 0] = 100 + np.arange(n_synth)
  if not ratio:
    del host['synthetic'], host['synthetic_labels']
  return train_data.stream(host, batch_size=batch, ratio=ratio,
                           augment=augment, seed=seed,
                           mesh=sharding.make_mesh())


def _ids(batch):
  return np.rint((np.asarray(batch['image'])[:, 0, 0, 0] + 1) * 127.5)


@pytest.mark.parametrize('batch', [4, 16])  # smaller and larger than 10
def test_draw_real_images_come_in_epochs(batch):
  draw, data = _draw_data(batch=batch)
  fn = jax.jit(draw)
  ids = np.concatenate([_ids(fn(data, jnp.int32(s))) for s in range(10)])
  epochs = ids[:len(ids) // 10 * 10].reshape(-1, 10)
  for e in epochs:  # every image once per epoch
    assert sorted(e) == list(range(10))
  assert len({tuple(e) for e in epochs}) > 1  # a fresh order each epoch
  # A function of (seed, step): the same again, another seed differs.
  again = np.concatenate([_ids(fn(data, jnp.int32(s))) for s in range(10)])
  assert (again == ids).all()
  _, other = _draw_data(batch=batch, seed=1)
  assert not (np.concatenate([_ids(fn(other, jnp.int32(s)))
                              for s in range(10)]) == ids).all()


def test_draw_gan_arm_keeps_the_real_order_and_labels():
  plain, data = _draw_data(batch=4)
  mixed, mixed_data = _draw_data(batch=8, ratio=0.5)
  real = np.concatenate([_ids(jax.jit(plain)(data, jnp.int32(s)))
                         for s in range(6)])
  batches = [jax.jit(mixed)(mixed_data, jnp.int32(s)) for s in range(6)]
  ids = np.concatenate([_ids(b) for b in batches])
  labels = np.concatenate([np.asarray(b['label']) for b in batches])
  synthetic = ids >= 100
  assert synthetic.mean() == 0.5
  # The real images of the 'gan' arm, in the order of the arm without.
  assert (ids[~synthetic] == real).all()
  assert (labels[synthetic] == 7).all()
  assert (labels[~synthetic] == ids[~synthetic] % 2).all()
  # Synthetic images in epochs of 6.
  assert sorted(ids[synthetic][:6]) == list(range(100, 106))


def test_draw_augments_each_position_its_own_way():
  aug = train_data.augment_params(data_config.get_augment_config(True))
  draw, data = _draw_data(batch=4, augment=aug)
  plain, plain_data = _draw_data(batch=4)
  assert draw == plain  # one compiled program for both arms
  a = np.asarray(jax.jit(draw)(data, jnp.int32(0))['image'])
  b = np.asarray(jax.jit(plain)(plain_data, jnp.int32(0))['image'])
  assert a.shape == b.shape and not np.allclose(a, b)
  assert a.min() >= -1 and a.max() <= 1


def test_several_steps_per_dispatch_equal_one_at_a_time():
  """train_steps with 4 steps per dispatch (a fori_loop) gives the
  per-step result: a batch depends only on (data, step), so dispatch
  boundaries (and a resume between them) change nothing."""
  config = resnet_config.get_config('tiny')
  draw, data = _draw_data(n_real=12, batch=8, augment=train_data.
                          augment_params(data_config.get_augment_config(True)))
  results = []
  for length, plan in ((1, [1] * 6), (4, [4, 2])):
    model = steps.create_model(config, 1)
    tx = steps.create_optimizer(config)
    graphdef, _, state = steps.init_state(model, tx)
    state = jax.device_put(state, sharding.replicated(sharding.make_mesh()))
    for n in plan:
      state, m = steps.bind(graphdef, tx, 0.1).train_steps(
          state, data, jnp.int32(n), steps.schedule(config, 6), draw=draw,
          length=length)
    results.append((state, float(m['loss'][plan[-1] - 1])))
  (s1, l1), (s4, l4) = results
  assert int(s1.step) == int(s4.step) == 6
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_choose_mode():
  config = resnet_config.get_config('tiny')
  config.data_device_max_mb = 1
  assert train_data.choose_mode(config, 2**20) == 'device'
  assert train_data.choose_mode(config, 2**20 + 1) == 'stream'
  config.data_on_device = 'yes'
  assert train_data.choose_mode(config, 2**30) == 'device'
  config.data_on_device = 'no'
  assert train_data.choose_mode(config, 1) == 'stream'
  config.data_on_device = 'maybe'
  with pytest.raises(UserInputError, match='config.data_on_device'):
    train_data.choose_mode(config, 1)
  # float32 counts stream positions exactly below 2**24 only.
  config.data_on_device = 'auto'
  assert train_data.choose_mode(config, 1, 2**24 - 1) == 'device'
  assert train_data.choose_mode(config, 1, 2**24) == 'stream'
  config.data_on_device = 'yes'
  with pytest.raises(UserInputError, match='2\\*\\*24|16777216'):
    train_data.choose_mode(config, 1, 2**24)


def test_bad_data_on_device_stops_before_training(tmp_path):
  config = resnet_config.get_config('tiny')
  config.data_on_device = 'sometimes'
  with pytest.raises(UserInputError, match='config.data_on_device'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def _synthetic_folder(tmp_path, per_class: int):
  """tmp_path/syn/<class>/*.png: `per_class` flat 32x32 images a class."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  syn = tmp_path / 'syn'
  for c, name in enumerate(('normal', 'hemorrhage')):
    os.makedirs(syn / name)
    for i in range(per_class):
      Image.fromarray(np.full((32, 32), 40 + 100 * c + i, np.uint8)).save(
          syn / name / f'{i}.png')
  return syn


@pytest.mark.parametrize('arm', ['classic', 'classic+gan'])
def test_tiny_trains_on_device_and_streamed(tmp_path, arm):
  """Both feeds run the arm's steps; results.json says which fed it."""
  syn = _synthetic_folder(tmp_path, 3)
  out = {}
  for mode in ('yes', 'no'):
    config = resnet_config.get_config('tiny')
    config.arm = arm
    config.data_on_device = mode
    config.data.synthetic_dir = str(syn)
    config.data.allow_unverified_synthetic = True
    out[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
  assert out['yes']['batches'] == 'device'
  assert out['no']['batches'] == 'stream'
  assert out['yes']['steps'] == out['no']['steps'] == (
      8 if 'gan' in arm else 4)


def test_arms_folds_and_lengths_share_compiled_steps(tmp_path):
  """A study's classifiers compile twice, whatever the arm, fold, seed or
  length: once without synthetic images and once with them (and a step's
  output state fed back in does not compile it again)."""
  syn = _synthetic_folder(tmp_path, 5)
  steps.bind.cache_clear()  # what other tests compiled

  def bound(config):  # the runs' steps: bind's one entry (asserted)
    tx = steps.create_optimizer(config)
    graphdef, _, _ = steps.init_state(steps.create_model(config, 1), tx)
    b = steps.bind(graphdef, tx, config.label_smoothing)
    assert steps.bind.cache_info().currsize == 1
    return b

  sizes = []
  runs = [('none', 0, 0.032), ('classic', 0, 0.032), ('classic', 1, 0.048),
          ('none', 1, 0.04), ('gan', 0, 0.032), ('classic+gan', 1, 0.04)]
  for i, (arm, fold, kimg) in enumerate(runs):
    config = resnet_config.get_config('tiny')
    config.arm, config.data.fold, config.kimg = arm, fold, kimg
    config.seed = i
    config.data_on_device = 'yes'
    config.data.synthetic_dir = str(syn)
    config.data.allow_unverified_synthetic = True
    train.train_and_evaluate(config, str(tmp_path / str(i)))
    sizes.append(bound(config).train_steps._cache_size())  # pylint: disable=protected-access
  assert sizes == [1, 1, 1, 1, 2, 2]
