"""resnet_jax.train and resnet_jax.steps: the step, the arms, :tiny end to end."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import resnet as resnet_config
from input_pipeline import workdir as workdir_lib
from input_pipeline.errors import UserInputError
from resnet_jax import train
from resnet_jax import steps


def _tiny_config():
  config = resnet_config.get_config('tiny')
  config.learning_rate = 0.1
  config.warmup_fraction = 0.0
  return config


def _fake_batch(seed=0, n=8, res=16):
  """Positives are bright, negatives dark: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  images = rng.normal(0, .1, (n, res, res, 1)) + np.where(
      labels, .5, -.5)[:, None, None, None]
  return {'image': jnp.asarray(images, jnp.float32),
          'label': jnp.asarray(labels, jnp.int32)}


def _run_steps(num_steps, seed=0):
  config = _tiny_config()
  config.seed = seed
  tx = steps.create_optimizer(config)
  graphdef, _, state = steps.init_state(steps.create_model(config, 1), tx)
  params0 = jax.tree.map(np.array, state.params)
  batch = _fake_batch()
  losses = []
  train_step = steps.bind(graphdef, tx, 0.0).train_step
  for _ in range(num_steps):
    state, m = train_step(state, batch, steps.schedule(config, 100))
    losses.append(float(m['loss']))
  return params0, state, losses


def test_train_step_learns_and_is_deterministic():
  params0, state, losses = _run_steps(6)
  assert losses[-1] < losses[0]
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params0,
                         jax.tree.map(np.array, state.params))
  assert any(jax.tree.leaves(changed))
  assert int(state.step) == 6
  _, state2, losses2 = _run_steps(6)
  assert losses == losses2
  jax.tree.map(np.testing.assert_array_equal, state.params, state2.params)


def test_equal_runs_in_one_process_reuse_the_traced_step():
  # A study's arms, folds and repeats: the same model and optimiser
  # settings, a fresh config and model each, any step count or peak rate;
  # only the first run traces train_step.
  def run(total_steps, lr=0.1, momentum=0.9):
    config = _tiny_config()
    config.learning_rate, config.momentum = lr, momentum
    tx = steps.create_optimizer(config)
    graphdef, _, state = steps.init_state(steps.create_model(config, 1), tx)
    bound = steps.bind(graphdef, tx, 0.0)
    bound.train_step(state, _fake_batch(),
                     steps.schedule(config, total_steps))
    return bound

  first = run(37)
  assert first.train_step._cache_size() == 1  # pylint: disable=protected-access
  assert run(37) is first
  assert run(38) is first and run(38, lr=0.05) is first
  assert first.train_step._cache_size() == 1  # pylint: disable=protected-access
  assert run(37, momentum=0.8) is not first  # another optimiser


@pytest.mark.parametrize('total, warmup_fraction', [
    (100, 0.1), (7, 0.0), (1, 0.1), (10, 0.5), (3, 0.9)])
def test_learning_rate_is_optax_warmup_cosine(total, warmup_fraction):
  config = _tiny_config()
  config.learning_rate = 0.3
  config.warmup_fraction = warmup_fraction
  sched = steps.schedule(config, total)
  warmup = min(int(round(warmup_fraction * total)), total - 1)
  want = optax.warmup_cosine_decay_schedule(
      0.0, 0.3, warmup, max(total, warmup + 1), 0.0)
  for step in range(total + 2):
    np.testing.assert_allclose(
        float(steps.learning_rate(jnp.int32(step), sched)),
        float(want(step)), rtol=1e-6, atol=1e-8, err_msg=f'step {step}')


def test_unit_rate_optimiser_scaled_in_the_step_is_the_scheduled_one():
  """Scaling the unit-rate updates by the schedule (what train_step does)
  gives optax's own scheduled SGD-Nesterov and AdamW updates."""
  config = _tiny_config()
  config.weight_decay = 0.01
  params = {'w': jnp.ones((3, 2)), 'b': jnp.ones((2,))}
  grads = [jax.tree.map(lambda p, i=i: p * (0.3 + i), params)
           for i in range(4)]
  for optimizer in ('sgd', 'adamw'):
    config.optimizer = optimizer
    sched = steps.schedule(config, 4)
    rate = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, int(sched['warmup']),
        int(sched['warmup'] + sched['decay']), 0.0)
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ref = (optax.chain(optax.add_decayed_weights(config.weight_decay, mask),
                       optax.sgd(rate, momentum=config.momentum,
                                 nesterov=True))
           if optimizer == 'sgd' else
           optax.adamw(rate, weight_decay=config.weight_decay, mask=mask))
    tx = steps.create_optimizer(config)
    a, b = tx.init(params), ref.init(params)
    assert jax.tree.structure(a) == jax.tree.structure(b)  # checkpoints
    for step, g in enumerate(grads):
      u, a = tx.update(g, a, params)
      lr = steps.learning_rate(jnp.int32(step), sched)
      u = jax.tree.map(lambda x: x * lr, u)
      v, b = ref.update(g, b, params)
      for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)


def test_cross_entropy_label_smoothing_hand_value():
  # Uniform logits over 2 classes: loss = log 2 for any smoothing.
  assert float(steps.cross_entropy(jnp.zeros((3, 2)), jnp.array([0, 1, 1]),
                                   0.1)) == pytest.approx(np.log(2))
  # logits (0, log 3): p = (1/4, 3/4); label 1, s=0.2 -> targets (.1, .9).
  logits = jnp.array([[0., np.log(3.)]])
  expected = -(.1 * np.log(.25) + .9 * np.log(.75))
  assert float(steps.cross_entropy(logits, jnp.array([1]), 0.2)) == (
      pytest.approx(expected, rel=1e-6))


@pytest.mark.parametrize('kimg, epochs, num_train, expected', [
    (0.032, 0., 21, 4),  # 32 images / batch 8 (epochs ignored)
    (0.032, 3., 21, 4),  # kimg wins over epochs
    (0., 2., 20, 5),  # 2 epochs of 20 images / batch 8
    (0., 2., 21, 6),  # 42 / 8 = 5.25 -> 6
])
def test_num_train_steps(kimg, epochs, num_train, expected):
  config = _tiny_config()
  config.kimg, config.num_epochs = kimg, epochs
  assert train.num_train_steps(config, num_train) == expected


@pytest.mark.parametrize('arm, augment, synthetic', [
    ('none', False, ''), ('classic', True, ''), ('gan', False, '/syn'),
    ('classic+gan', True, '/syn')])
def test_arm_kwargs(arm, augment, synthetic):
  config = _tiny_config()
  config.arm = arm
  config.data.synthetic_dir = '/syn'
  kw = train._arm_data_kwargs(config)
  assert kw['augment'].enabled == augment
  assert kw['synthetic_dir'] == synthetic
  assert kw['synthetic_ratio'] == (0.5 if synthetic else 0.0)


@pytest.mark.parametrize('arm, key', [('gan', 'config.data.synthetic_dir'),
                                      ('classic+gan',
                                       'config.data.synthetic_dir'),
                                      ('mixup', 'config.arm')])
def test_bad_arm_names_the_key(arm, key, tmp_path):
  config = _tiny_config()
  config.arm = arm
  with pytest.raises(UserInputError, match=key):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('key, value, match', [
    ('model', 'resnet7', r"^config\.model='resnet7'"),
    ('dtype', 'float16', r"^config\.dtype='float16'"),
    ('optimizer', 'adam', r"^config\.optimizer='adam'"),
    ('synthetic_mode', 'replace', r"^config\.synthetic_mode='replace'"),
    ('kimg', 0.0, r'^set config\.kimg or config\.num_epochs'),
])
def test_check_config_names_the_key(key, value, match):
  config = _tiny_config()
  config.num_epochs = 0
  config[key] = value
  if key != 'kimg':
    config.kimg = 1.0
  with pytest.raises(UserInputError, match=match):
    train.check_config(config)


def test_check_config_synthetic_ratio_only_for_gan_arms():
  config = _tiny_config()
  config.data.synthetic_ratio = 1.0
  train.check_config(config)  # arm 'classic': the ratio is not used
  config.arm = 'gan'
  with pytest.raises(UserInputError,
                     match=r'^config\.data\.synthetic_ratio=1\.0 must be'):
    train.check_config(config)


def test_tiny_end_to_end(tmp_path):
  workdir = str(tmp_path)
  results = train.train_and_evaluate(resnet_config.get_config('tiny'),
                                     workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    stored = json.load(f)
  assert stored == json.loads(json.dumps(results))
  for key in ('val', 'test', 'test_at_val_threshold'):
    assert 0 <= stored[key]['accuracy'] <= 1
  assert stored['test_at_val_threshold']['threshold'] == stored['threshold']
  assert stored['steps'] == 4
  # Four dispatches of one step (the CPU's), the first one left out.
  assert stored['train_images_per_second'] > 0
  with open(os.path.join(workdir, 'test_predictions.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == stored['test']['n'] > 0
  assert all(0 <= float(r['prob']) <= 1 for r in rows)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
  # A finished run returns its stored results without training again, also
  # when only keys that do not change results differ.
  config = resnet_config.get_config('tiny')
  config.log_every_steps = 1
  config.data.num_workers = 2
  again = train.train_and_evaluate(config, workdir)
  assert again == stored
  # Not when the config differs: the old results are not this run's.
  config.arm = 'none'
  config.seed = 3
  with pytest.raises(workdir_lib.ConfigMismatchError) as e:
    train.train_and_evaluate(config, workdir)
  msg = str(e.value)
  assert "arm: 'classic' there, 'none' now" in msg and 'seed: 0' in msg
  assert 'log_every_steps' not in msg and '\n' not in msg
  assert json.load(open(os.path.join(workdir, 'config.json')))['arm'] == (
      'classic')


def test_one_dispatch_gives_no_throughput(tmp_path):
  # The throughput leaves out the first dispatch (its compilation): a run
  # of one dispatch has none to give.
  config = resnet_config.get_config('tiny')
  config.data_on_device = 'yes'
  config.steps_per_dispatch = 4
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 4
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['steps'] == 4
  assert results['train_images_per_second'] is None


def test_older_workdir_returns_its_results_with_grain_batches(tmp_path):
  """A run recorded before the keys of LEGACY_ABSENT existed streamed its
  batches by grain: data_on_device='no' returns it; 'auto' does not."""
  workdir = str(tmp_path)
  config = resnet_config.get_config('tiny')
  config.data_on_device = 'no'
  stored = train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'config.json')
  old = json.load(open(path))
  for key in train.LEGACY_ABSENT:
    del old[key]
  with open(path, 'w') as f:
    json.dump(old, f)
  assert train.train_and_evaluate(config, workdir) == stored
  json.dump(old, open(path, 'w'))  # the run above recorded its own
  config.data_on_device = 'auto'
  with pytest.raises(workdir_lib.ConfigMismatchError,
                     match="data_on_device: '<absent>' there, 'auto' now"):
    train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize('on_device, length', [
    ('yes', 1), ('no', 1), ('yes', 3)])
def test_non_finite_loss_names_step_and_checkpoint(tmp_path, monkeypatch,
                                                   on_device, length):
  config = resnet_config.get_config('tiny')
  config.kimg = 0.064  # 8 steps of 8
  config.log_every_steps = 4
  config.checkpoint_every_steps = 2
  config.data_on_device = on_device
  config.steps_per_dispatch = length  # dispatches end at checkpoints
  step_fn = steps._step

  def nan_from_step_3(state, batch, *args):
    state, m = step_fn(state, batch, *args)
    m['loss'] = jnp.where(state.step >= 3, jnp.nan, m['loss'])
    return state, m

  # The steps bind `_step` again only with bind's cache cleared.
  steps.bind.cache_clear()
  monkeypatch.setattr(steps, '_step', nan_from_step_3)
  try:
    with pytest.raises(FloatingPointError) as e:
      train.train_and_evaluate(config, str(tmp_path))
  finally:
    monkeypatch.undo()
    steps.bind.cache_clear()
  msg = str(e.value)
  # Step 3 is caught at the step-4 log/checkpoint, before step 4 is saved.
  assert 'non-finite loss (nan) at step 3 of 8' in msg
  assert f'last good checkpoint: step 2 in {tmp_path}/checkpoints' in msg
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']


@pytest.mark.parametrize('arm, mode, expected', [
    ('none', 'add', 4), ('classic', 'add', 4),
    # 'add': the same 32 real images plus as many synthetic ones (ratio .5).
    ('gan', 'add', 8), ('classic+gan', 'add', 8),
    # 'equal_compute': the same steps, half of each batch synthetic.
    ('gan', 'equal_compute', 4)])
def test_num_train_steps_gan_arms_add_synthetic(arm, mode, expected):
  config = _tiny_config()
  config.arm, config.synthetic_mode = arm, mode
  assert config.data.synthetic_ratio == 0.5
  assert train.num_train_steps(config, 21) == expected
