"""PGGAN training loop: `train_and_evaluate(config, workdir)`.

Data-parallel on one ('data',) mesh (batches sharded, params replicated);
steps are the pure jitted functions of `steps.py`. Per G iteration:
`d_repeats` critic steps (each counts its minibatch towards kimg), one
generator step, one EMA update. The schedule (`schedule.py`) is re-evaluated
every iteration; the resolution stage is static (one compilation per stage),
alpha and learning rate are traced. Adam moments are reset whenever a fade-in
starts or ends (official `reset_opt_for_new_lod=True`); the last lod is in
the checkpoint so a resumed run does not add a reset.

workdir/
  config.json      the resolved config (read back by sample.py)
  checkpoints/     orbax: g, d, g_ema, opt (both Adam states + base RNG),
                   meta (nimg, step, lod, data iterator's res/batch), data
                   (grain iterator state)
  samples/         fakes_<nimg>.png grids from G_ema on fixed latents
  events.out...    TensorBoard (process 0)
"""

import json
import logging
import math
import os
import time

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm

from input_pipeline import images as image_io
from input_pipeline import sharding
from input_pipeline.errors import UserInputError
from pggan_jax import networks
from pggan_jax import schedule
from pggan_jax import steps


def resolve_config(config, prepared) -> ml_collections.ConfigDict:
  """Copy of `config` with data-dependent model fields filled in."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.channels = int(prepared.channels)
  cfg.model.num_classes = (len(prepared.class_names)
                           if config.model.conditional else 0)
  cfg.model.latent_size = config.model.latent_size or min(
      config.model.fmap_base, config.model.fmap_max)
  cfg.class_names = list(prepared.class_names)
  return cfg


def _check_config(config) -> None:
  m, s = config.model, config.sched
  try:
    networks.num_stages(m.resolution)
  except ValueError as e:
    raise UserInputError(f'config.model.resolution: {e}') from None
  if m.resolution > config.data.storage_size:
    raise UserInputError(
        f'config.model.resolution={m.resolution} exceeds '
        f'config.data.storage_size={config.data.storage_size}')
  r = s.initial_resolution
  while r <= m.resolution:
    p = schedule.training_schedule(
        0.0, final_resolution=r, initial_resolution=r,
        minibatch_base=s.minibatch_base,
        minibatch_dict=schedule.parse_res_dict(s.minibatch_dict),
        max_minibatch_per_gpu=schedule.parse_res_dict(s.max_minibatch_per_gpu),
        num_devices=jax.device_count())
    if p.batch_size < 1:
      raise UserInputError(
          f'minibatch at {r}x{r} is 0 after rounding down to a multiple of '
          f'the {jax.device_count()} devices (config.sched.minibatch_*)')
    sharding.check_batch_size(p.batch_size, 'sched.minibatch_dict')
    g = min(m.mbstd_group_size, p.batch_size)
    if m.mbstd_group_size > 1 and p.batch_size % g:
      raise UserInputError(
          f'config.model.mbstd_group_size={m.mbstd_group_size} does not '
          f'divide the minibatch {p.batch_size} at {r}x{r}')
    r *= 2


def build_models(cfg):
  """(g_graph, d_graph, g_params, d_params) from a resolved config."""
  g, d = networks.build(cfg, nnx.Rngs(cfg.seed))
  g_graph, g_params = nnx.split(g)
  d_graph, d_params = nnx.split(d)
  return g_graph, d_graph, g_params, d_params


def grid_inputs(cfg) -> tuple[jax.Array, jax.Array]:
  """Fixed grid latents (and labels cycling over classes)."""
  n = cfg.grid_size
  z = jax.random.normal(jax.random.key(cfg.seed + 12345),
                        (n, cfg.model.latent_size))
  labels = jnp.arange(n, dtype=jnp.int32) % max(cfg.model.num_classes, 1)
  return z, labels


def _make_iterator(prepared, cfg, point, seed):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.create_iterator(
      prepared, cfg.data, role='train', resolution=point.resolution,
      batch_size=point.batch_size // jax.process_count(),
      seed=seed + point.stage, train=True)


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=('g', 'd', 'g_ema', 'opt', 'meta', 'data'))


class _Metrics:
  """Device-side metric dicts, read back (and checked) only on flush."""

  def __init__(self):
    self.pending = []

  def add(self, m):
    self.pending.append(m)

  def flush(self, kimg: float) -> dict:
    if not self.pending:
      return {}
    host = jax.device_get(self.pending)
    self.pending = []
    out = {}
    # Union of keys: d_step and g_step metrics are separate dicts.
    for k in dict.fromkeys(k for h in host for k in h):
      v = np.array([h[k] for h in host if k in h], np.float64)
      if not np.all(np.isfinite(v)):
        raise FloatingPointError(
            f'non-finite {k} at kimg {kimg:.3f}; stopping without saving '
            '(the last good checkpoint is kept)')
      out[k] = float(v.mean())
    return out


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains (or resumes) a PGGAN; returns the last metrics."""
  from input_pipeline import dataset  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise UserInputError('--workdir is required for config.task=pggan')
  _check_config(config)
  mesh = sharding.make_mesh()
  prepared = dataset.prepare(config.data, workdir)
  cfg = resolve_config(config, prepared)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(cfg.to_dict(), f, indent=2)

  g_graph, d_graph, g_params, d_params = build_models(cfg)
  hp = steps.Hparams.from_config(cfg, cfg.model.latent_size)
  adam = hp.adam()
  state = {'g': g_params, 'd': d_params,
           'g_ema': jax.tree.map(jnp.copy, g_params),
           'g_opt': adam.init(g_params), 'd_opt': adam.init(d_params)}
  rng = jax.random.key_data(jax.random.key(cfg.seed))
  state = jax.device_put(state, sharding.replicated(mesh))
  meta = {'nimg': 0, 'step': 0, 'lod': -1.0, 'data_res': 0,
          'data_batch': 0, 'metrics': {}}

  mgr = _checkpoint_manager(workdir, cfg.keep_checkpoints)
  it, it_key = None, None
  total_nimg = int(round(cfg.total_kimg * 1000))
  latest = mgr.latest_step()
  if latest is not None:
    logging.info('Resuming from %s', mgr.directory / str(latest))
    print(f'Resuming from {mgr.directory / str(latest)}', flush=True)
    meta = mgr.restore(latest, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    if meta['nimg'] >= total_nimg:
      mgr.close()
      return meta['metrics']
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    point = schedule.from_config(cfg, meta['nimg'] / 1000,
                                 jax.device_count())
    if meta['data_res']:
      point = schedule.Point(**{**point.__dict__,
                                'resolution': meta['data_res'],
                                'stage': int(math.log2(meta['data_res'])) - 2,
                                'batch_size': meta['data_batch']})
    it = _make_iterator(prepared, cfg, point, cfg.seed)
    it_key = (point.resolution, point.batch_size)
    restored = mgr.restore(latest, args=ocp.args.Composite(
        g=ocp.args.StandardRestore(abstract['g']),
        d=ocp.args.StandardRestore(abstract['d']),
        g_ema=ocp.args.StandardRestore(abstract['g_ema']),
        opt=ocp.args.StandardRestore({
            'g_opt': abstract['g_opt'], 'd_opt': abstract['d_opt'],
            'rng': rng}),
        data=grain.checkpoint.CheckpointRestore(it)))
    state = {k: restored[k] for k in ('g', 'd', 'g_ema')}
    state.update(g_opt=restored.opt['g_opt'], d_opt=restored.opt['d_opt'])
    rng = np.asarray(restored.opt['rng'])
    it = restored.data

  def save(nimg_now):
    mgr.save(nimg_now, args=ocp.args.Composite(
        g=ocp.args.StandardSave(state['g']),
        d=ocp.args.StandardSave(state['d']),
        g_ema=ocp.args.StandardSave(state['g_ema']),
        opt=ocp.args.StandardSave({'g_opt': state['g_opt'],
                                   'd_opt': state['d_opt'], 'rng': rng}),
        meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(it)))

  writer = None
  if is_main:
    writer = tensorboardX.SummaryWriter(workdir)
  key = jax.random.wrap_key_data(jnp.asarray(rng))
  grid_z, grid_labels = grid_inputs(cfg)
  metrics = _Metrics()
  nimg, step, prev_lod = meta['nimg'], meta['step'], meta['lod']
  point = schedule.from_config(cfg, nimg / 1000, jax.device_count())
  tick_start, ckpt_start = nimg, nimg
  last_log_time, last_log_nimg = time.time(), nimg
  bar = tqdm.tqdm(total=cfg.total_kimg, initial=nimg / 1000, unit='kimg',
                  disable=not is_main, dynamic_ncols=True,
                  bar_format='{l_bar}{bar}| {n:.2f}/{total:.2f} kimg '
                             '[{elapsed}<{remaining}{postfix}]')
  last = dict(meta['metrics'])

  def log(point):
    nonlocal last_log_time, last_log_nimg
    m = metrics.flush(nimg / 1000)
    now = time.time()
    ips = (nimg - last_log_nimg) / max(now - last_log_time, 1e-9)
    last_log_time, last_log_nimg = now, nimg
    m.update({'resolution': point.resolution, 'alpha': point.alpha,
              'img/s': ips, 'kimg': nimg / 1000, 'lr': point.lr_d})
    if writer:
      for k, v in m.items():
        writer.add_scalar(k, v, nimg)
    bar.set_postfix_str(f'res {point.resolution} a {point.alpha:.2f} '
                        f'{ips:.0f} img/s d {m.get("d/loss", 0):.3f}')
    return m

  def snapshot(point):
    fakes = np.asarray(steps.generate(
        state['g_ema'], grid_z, grid_labels, jnp.float32(point.alpha),
        g_graph=g_graph, stage=point.stage))
    if is_main:
      path = os.path.join(workdir, 'samples', f'fakes_{nimg:09d}.png')
      image_io.save_grid(fakes, path)
      writer.add_image('g_ema/grid', image_io.make_grid(fakes), nimg,
                       dataformats='HWC')

  while nimg < total_nimg:
    point = schedule.from_config(cfg, nimg / 1000, jax.device_count())
    if cfg.reset_opt_for_new_lod and schedule.lod_changed(prev_lod,
                                                          point.lod):
      state['g_opt'] = adam.init(state['g'])
      state['d_opt'] = adam.init(state['d'])
    prev_lod = point.lod
    if it_key != (point.resolution, point.batch_size):
      it = _make_iterator(prepared, cfg, point, cfg.seed)
      it_key = (point.resolution, point.batch_size)
    alpha, lr_d, lr_g = (jnp.float32(point.alpha), jnp.float32(point.lr_d),
                         jnp.float32(point.lr_g))
    kw = dict(g_graph=g_graph, d_graph=d_graph, stage=point.stage, hp=hp)
    for r in range(cfg.d_repeats):
      batch = sharding.shard_batch(next(it), mesh)
      k = jax.random.fold_in(key, step * (cfg.d_repeats + 1) + r)
      state, m = steps.d_step(state, batch['image'], batch['label'], k,
                              alpha, lr_d, **kw)
      metrics.add(m)
      nimg += point.batch_size
    k = jax.random.fold_in(key, step * (cfg.d_repeats + 1) + cfg.d_repeats)
    state, m = steps.g_step(state, batch['label'], k, alpha, lr_g, **kw)
    metrics.add(m)
    state['g_ema'] = steps.ema_update(state['g_ema'], state['g'],
                                      jnp.float32(cfg.ema_decay))
    step += 1
    bar.update(min(nimg, total_nimg) / 1000 - bar.n)
    done = nimg >= total_nimg
    if step % cfg.log_every_steps == 0 or done:
      last = log(point)
    if nimg >= tick_start + point.tick_kimg * 1000 or done:
      tick_start = nimg
      snapshot(point)
    if nimg >= ckpt_start + cfg.checkpoint_kimg * 1000 or done:
      ckpt_start = nimg
      if metrics.pending:  # read back and check finiteness before saving
        last = log(point)
      meta = {'nimg': nimg, 'step': step, 'lod': prev_lod,
              'data_res': it_key[0], 'data_batch': it_key[1],
              'metrics': last}
      save(nimg)
  bar.close()
  mgr.wait_until_finished()
  mgr.close()
  if writer:
    writer.close()
  return last
