"""8 simulated devices against 1: same step results and samples, checkpoints
portable.

Two subprocesses (JAX fixes its device count at start-up) run this file as
a script: one with XLA_FLAGS=--xla_force_host_platform_device_count=8, one
with a single CPU device. Each runs, on a ('data',) mesh of all its devices
(input_pipeline/sharding.py), the same inputs through
  (a) one PGGAN training iteration (steps.train_iterations: critic step,
      generator step, EMA) with configs/pggan.py:tiny at 8x8, batch 8, and
      one at batch 16 with the penalty on every other pair
      (gp_batch_shrink=2);
  (b) one classifier step (train_step of resnet_jax.steps.bind),
      configs/resnet.py:tiny, batch 8;
  (c) four classifier steps on batches drawn on the device (classic
      augmentation, half synthetic; resnet_jax.train_data.Draw), two per
      dispatch (train_steps of steps.bind);
and saves the resulting parameters, and whether each compiled step
reduces across devices (an all-reduce: data parallel, not replicated).
The 8-device process also trains a tiny PGGAN (train.train_and_evaluate,
0.04 kimg) and a tiny classifier (configs/resnet.py:tiny, 4 steps); the
1-device process restores the classifier's checkpoint (the same arrays)
and the PGGAN's, samples 150 images from the PGGAN on its devices as the
8-device process did (pggan_jax.sample: latents split over 'data'), and
resumes the PGGAN to 0.08 kimg.

Tolerance (rtol 1e-4, atol 1e-5, float32): the sharded program sums the
batch's gradient and BatchNorm / minibatch-stddev statistics per device and
then across devices, a different reduction order from one device, so the
results differ by float32 rounding, not more. Measured: see _TOL below.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FORCE = '--xla_force_host_platform_device_count'
# Reduction order only (see the module docstring). Max |8 - 1 device|
# measured on the 2-core CPU (jax 0.10.2): PGGAN iterations 1.3e-6 (G, D,
# G_ema and the losses; 7.5e-7 at batch 8 alone), ResNet step 3.6e-7
# (params and BatchNorm stats).
_RTOL, _ATOL = 1e-4, 1e-5
_TINY_KIMG, _RESUMED_KIMG = 0.04, 0.08


# --------------------------------------------------------- the subprocesses


def _pggan_config(total_kimg=_TINY_KIMG):
  import input_pipeline_testlib  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline_testlib.tiny_pggan_config(total_kimg,
                                                 checkpoint_kimg=0.02)
  cfg.data_on_device = 'yes'
  return cfg


def _flat(tree, prefix):
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


# Facts the helpers gather besides arrays (merged into info_<n>.json).
_INFO = {}


_COLLECTIVES = ('all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all',
                'collective-permute')


def _compile(jitted, name, *args, **static):
  """`jitted` compiled once for `args`, to be run as it is; records the
  collectives its program holds in _INFO[name + '_collectives'] (a
  data-parallel training step reduces the batch's gradient across
  devices; one run replicated would not)."""
  compiled = jitted.lower(*args, **static).compile()
  text = compiled.as_text()
  _INFO[f'{name}_collectives'] = [op for op in _COLLECTIVES if op in text]
  return compiled


def _pggan_models():
  """cfg, g_graph, g_params, d_graph, d_params (train.resolve_config's
  fields for the 1-channel, unconditional synthetic data, by hand)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from pggan_jax import networks  # pylint: disable=g-import-not-at-top
  cfg = _pggan_config()
  cfg.model.channels, cfg.model.num_classes = 1, 0
  cfg.model.latent_size = min(cfg.model.fmap_base, cfg.model.fmap_max)
  g, d = networks.build(cfg, nnx.Rngs(cfg.seed))
  return (cfg, *nnx.split(g), *nnx.split(d))


def _pggan_iteration(mesh, gp_batch_shrink=1):
  """One train_iterations dispatch (K = 1) at 8x8, fade-in alpha 0.5, batch
  8 x gp_batch_shrink (the penalty on 8 pairs of it)."""
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from pggan_jax import steps  # pylint: disable=g-import-not-at-top
  cfg, g_graph, g_params, d_graph, d_params = _pggan_models()
  cfg.gp_batch_shrink = gp_batch_shrink
  hp = steps.Hparams.from_config(cfg, cfg.model.latent_size)
  rep = sharding.replicated(mesh)
  state = jax.device_put(steps.init_state(g_params, d_params, hp), rep)
  rng = np.random.default_rng(0)
  data = jax.device_put(
      {'images': rng.uniform(-1, 1, (32, 8, 8, 1)).astype(np.float32),
       'labels': np.zeros((32,), np.int32)}, rep)
  plan = {'n': np.int32(1), 'step': np.int32(3),
          'alpha': np.float32([0.5]), 'ema_beta': np.float32([0.9]),
          'lr_d': np.float32(1e-3), 'lr_g': np.float32(1e-3),
          'key': jax.random.key(7), 'data_key': jax.random.key(8)}
  kw = dict(g_graph=g_graph, d_graph=d_graph, stage=1, hp=hp,
            batch_size=8 * gp_batch_shrink)
  name = 'pggan' if gp_batch_shrink == 1 else f'pggan_shrink{gp_batch_shrink}'
  state, means = _compile(steps.train_iterations, name, state, data, plan,
                          **kw)(state, data, plan)
  out = _flat({k: state[k] for k in ('g', 'd', 'g_ema')}, name)
  out.update(_flat(means, f'{name}_metrics'))
  return out


def _resnet_start(mesh):
  """configs/resnet.py:tiny's (config, optimiser, graphdef, state on mesh)."""
  from configs import resnet  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from resnet_jax import steps  # pylint: disable=g-import-not-at-top
  cfg = resnet.get_config('tiny')
  tx = steps.create_optimizer(cfg)
  graphdef, _, state = steps.init_state(steps.create_model(cfg, 1), tx)
  return cfg, tx, graphdef, sharding.put_replicated(state, mesh)


def _resnet_step(mesh):
  """One classifier train_step on a fixed batch of 8 (BatchNorm in train)."""
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from resnet_jax import steps  # pylint: disable=g-import-not-at-top
  cfg, tx, graphdef, state = _resnet_start(mesh)
  rng = np.random.default_rng(1)
  batch = sharding.shard_batch(
      {'image': rng.normal(size=(8, 32, 32, 1)).astype(np.float32),
       'label': np.arange(8, dtype=np.int32) % 2}, mesh)
  # 4 steps: warmup round(0.1 * 4) = 0, so step 1 has the peak rate.
  bound = steps.bind(graphdef, tx, cfg.label_smoothing)
  args = (state, batch, steps.schedule(cfg, 4))
  state, m = _compile(bound.train_step, 'resnet', *args)(*args)
  out = _flat({'params': state.params, 'batch_stats': state.batch_stats},
              'resnet')
  out['resnet_loss'] = np.asarray(m['loss'])
  return out


def _resnet_drawn_steps(mesh):
  """Four steps, two per dispatch, on batches drawn on the device."""
  from input_pipeline import config as data_config  # pylint: disable=g-import-not-at-top
  from resnet_jax import steps  # pylint: disable=g-import-not-at-top
  from resnet_jax import train_data  # pylint: disable=g-import-not-at-top
  cfg, tx, graphdef, state = _resnet_start(mesh)
  rng = np.random.default_rng(2)
  host = {'real': rng.integers(0, 256, (12, 32, 32, 1), np.uint8),
          'real_labels': np.arange(12, dtype=np.int32) % 2,
          'synthetic': rng.integers(0, 256, (6, 32, 32, 1), np.uint8),
          'synthetic_labels': np.arange(6, dtype=np.int32) % 2}
  draw, data = train_data.stream(
      host, batch_size=8, ratio=0.5, augment=train_data.augment_params(
          data_config.get_augment_config(True)), seed=0, mesh=mesh)
  for _ in range(2):
    state, m = steps.bind(graphdef, tx, cfg.label_smoothing).train_steps(
        state, data, np.int32(2), steps.schedule(cfg, 4), draw=draw,
        length=2)
  out = _flat({'params': state.params, 'batch_stats': state.batch_stats},
              'drawn')
  out['drawn_loss'] = np.asarray(m['loss'])
  return out


def _restore_and_resume(workdir):
  """On this process's devices: restore the latest checkpoint, then resume."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from pggan_jax import train  # pylint: disable=g-import-not-at-top
  mgr = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      item_names=('g', 'd', 'g_ema', 'opt', 'meta', 'data'))
  step = mgr.latest_step()
  meta = mgr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  # Restored onto this process's mesh, as train.py resumes.
  rep = sharding.replicated(sharding.make_mesh())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
      _pggan_models()[2])
  g = mgr.restore(step, args=ocp.args.Composite(
      g=ocp.args.StandardRestore(abstract)))['g']
  mgr.close()
  devices = {d for x in jax.tree.leaves(g) for d in x.sharding.device_set}
  last = train.train_and_evaluate(_pggan_config(_RESUMED_KIMG), workdir)
  mgr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                              item_names=('meta',))
  resumed = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  mgr.close()
  return {'restored_step': int(step), 'restored_nimg': meta['nimg'],
          'restored_leaves': len(jax.tree.leaves(g)),
          'restored_devices': len(devices),
          'restored_finite': all(bool(np.isfinite(np.asarray(x)).all())
                                 for x in jax.tree.leaves(g)),
          'resumed_nimg': resumed['nimg'],
          'resumed_loss_finite': bool(np.isfinite(last['d/loss']))}


def _sample(workdir, outdir, n):
  """150 images of the tiny GAN's 40-image checkpoint (3 chunks, the last
  padded) as an array; the spec of steps.generate's output for
  batch-sharded latents and the collectives its program holds."""
  import jax  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from pggan_jax import sample  # pylint: disable=g-import-not-at-top
  from pggan_jax import steps  # pylint: disable=g-import-not-at-top
  out = os.path.join(outdir, f'samples_{n}')
  manifest = sample.sample(workdir, 150, out, seed=3, step=40)
  pixels = np.stack([np.asarray(Image.open(os.path.join(out, f)))
                     for f in sorted(manifest['files'])])[..., None]
  cfg, g_graph, g_ema, _, _ = sample.load_generator(workdir, 40)
  mesh = sharding.make_mesh()
  z = jax.device_put(np.zeros((8, cfg.model.latent_size), np.float32),
                     sharding.data_sharding(mesh))
  y = jax.device_put(np.zeros((8,), np.int32), sharding.data_sharding(mesh))
  args = (sharding.put_replicated(g_ema, mesh), z, y, np.float32(1.0))
  # Each device generates its own rows: no collective at all (a replicated
  # generator would gather the latents first).
  imgs = _compile(steps.generate, 'generate', *args, g_graph=g_graph,
                  stage=1)(*args)
  _INFO['generate_spec'] = str(imgs.sharding.spec)
  return {'sampled': pixels}


def _classifier_checkpoint(workdir, n):
  """configs/resnet.py:tiny trained on 8 devices (4 steps, checkpoints);
  its latest checkpoint restored onto this process's devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from configs import resnet  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  from resnet_jax import steps  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  cfg = resnet.get_config('tiny')
  cfg.data.tfds_dir = workdir + '_tfds'
  if n > 1:
    train.train_and_evaluate(cfg, workdir)
  mesh = sharding.make_mesh()
  _, _, state = steps.init_state(steps.create_model(cfg, 1),
                                 steps.create_optimizer(cfg))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          sharding.put_replicated(state, mesh))
  mgr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = mgr.latest_step()
  state = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']
  mgr.close()
  _INFO['classifier_ckpt_step'] = int(step)
  _INFO['classifier_ckpt_devices'] = len(
      {d for x in jax.tree.leaves(state) for d in x.sharding.device_set})
  return _flat({'params': state.params, 'batch_stats': state.batch_stats,
                'opt': state.opt_state}, 'ckpt_resnet')


def _worker(outdir, workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  n = jax.device_count()
  arrays = {**_pggan_iteration(mesh), **_pggan_iteration(mesh, 2),
            **_resnet_step(mesh),
            **_resnet_drawn_steps(mesh)}
  info = {'devices': n}
  arrays.update(_classifier_checkpoint(workdir + '_classifier', n))
  if n > 1:  # write the checkpoints on 8 devices
    from pggan_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(_pggan_config(), workdir)
    arrays.update(_sample(workdir, outdir, n))
  else:      # sample from, restore and resume them on 1
    arrays.update(_sample(workdir, outdir, n))
    info.update(_restore_and_resume(workdir))
  np.savez(os.path.join(outdir, f'steps_{n}.npz'), **arrays)
  info.update(_INFO)
  with open(os.path.join(outdir, f'info_{n}.json'), 'w') as f:
    json.dump(info, f)


# ------------------------------------------------------------------ the tests


def _run(devices, outdir, workdir):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(
                 [_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  xla = [f for f in env.get('XLA_FLAGS', '').split()
         if not f.startswith(_FORCE)]
  if devices > 1:
    xla.append(f'{_FORCE}={devices}')
  env['XLA_FLAGS'] = ' '.join(xla)
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), outdir, workdir],
      env=env, cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  outdir = str(tmp_path_factory.mktemp('multidevice'))
  workdir = os.path.join(outdir, 'pggan')
  t0 = time.time()
  _run(8, outdir, workdir)
  _run(1, outdir, workdir)
  print(f'8- and 1-device subprocesses: {time.time() - t0:.0f} s')
  load = lambda n: dict(np.load(os.path.join(outdir, f'steps_{n}.npz')))
  info = {}
  for n in (8, 1):
    with open(os.path.join(outdir, f'info_{n}.json')) as f:
      info[n] = json.load(f)
  return load(8), load(1), info


def _compare(many, one, prefix):
  keys = sorted(k for k in many if k.startswith(prefix))
  assert keys and keys == sorted(k for k in one if k.startswith(prefix))
  worst = max(float(np.max(np.abs(many[k] - one[k]))) for k in keys)
  print(f'{prefix}: max |8 devices - 1 device| = {worst:.3g} over '
        f'{len(keys)} arrays')
  for k in keys:
    np.testing.assert_allclose(many[k], one[k], rtol=_RTOL, atol=_ATOL,
                               err_msg=k)


def test_device_counts(results):
  _, _, info = results
  assert info[8]['devices'] == 8 and info[1]['devices'] == 1


def test_pggan_iteration_matches_on_8_and_1_devices(results):
  many, one, _ = results
  _compare(many, one, 'pggan')


def test_classifier_step_matches_on_8_and_1_devices(results):
  many, one, _ = results
  _compare(many, one, 'resnet')


def test_classifier_steps_on_drawn_batches_match_on_8_and_1_devices(results):
  many, one, _ = results
  _compare(many, one, 'drawn')


def test_steps_reduce_across_devices_only_when_sharded(results):
  # The programs really are data-parallel on 8 devices (a replicated run
  # would match the 1-device numbers too, with no collective).
  _, _, info = results
  reduce = {'all-reduce', 'reduce-scatter'}
  for name in ('pggan', 'pggan_shrink2', 'resnet'):
    assert reduce & set(info[8][f'{name}_collectives']), name
    assert not reduce & set(info[1][f'{name}_collectives']), name


def test_sampling_is_sharded_and_matches_on_8_and_1_devices(results):
  many, one, info = results
  assert info[8]['generate_spec'] == "P('data', None, None, None)"
  assert info[8]['generate_collectives'] == []
  assert many['sampled'].shape == one['sampled'].shape == (150, 8, 8, 1)
  # 8-bit PNGs of float32 images that differ by rounding: at most one
  # level apart, almost all equal.
  diff = np.abs(many['sampled'].astype(int) - one['sampled'].astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01


def test_classifier_checkpoint_written_on_8_devices_restores_on_1(results):
  many, one, info = results
  assert info[8]['classifier_ckpt_step'] == info[1]['classifier_ckpt_step'] > 0
  assert info[1]['classifier_ckpt_devices'] == 1
  assert info[8]['classifier_ckpt_devices'] == 8
  keys = sorted(k for k in many if k.startswith('ckpt_resnet'))
  assert keys and keys == sorted(k for k in one if k.startswith('ckpt_resnet'))
  for k in keys:
    np.testing.assert_array_equal(many[k], one[k], err_msg=k)


def test_checkpoint_written_on_8_devices_restores_and_resumes_on_1(results):
  _, _, info = results
  one = info[1]
  assert one['restored_nimg'] == one['restored_step'] == 40
  assert one['restored_leaves'] > 0 and one['restored_finite']
  assert one['restored_devices'] == 1
  assert one['resumed_nimg'] == 80 and one['resumed_loss_finite']


if __name__ == '__main__':
  _worker(sys.argv[1], sys.argv[2])
