"""PGGAN training loop: `train_and_evaluate(config, workdir)`.

Data-parallel on one ('data',) mesh (batches sharded, params replicated).
One training iteration is `d_repeats` critic steps (each counts its
minibatch towards kimg), one generator step and one EMA update, fused in
`steps.train_iterations`, which runs up to `config.iters_per_dispatch` of
them per dispatch with metric means kept on the device. The host plans each
dispatch from the schedule (`schedule.py`) evaluated per iteration, exactly
as an iteration-at-a-time loop would: alpha and the EMA decay go in as
per-iteration arrays, and a dispatch ends where the stage, minibatch or
learning rate changes, where Adam's moments are reset (whenever a fade-in
starts or ends, official `reset_opt_for_new_lod=True`), and after the
iterations that end a log interval, a tick, a checkpoint or the run. The
resolution stage is static (one compilation per stage, the next stage's
compiled in a background thread while this one trains); the last lod is in
the checkpoint so a resumed run does not add a reset.

Data: a small training split is loaded once per stage and kept on the
device, minibatches and mirror flips drawn there (`config.data_on_device`);
otherwise grain streams the batches of each dispatch. At every tick: a
G_ema grid, the sliced Wasserstein distance of G_ema samples to a fixed
set of training images (pggan_jax/quality.py) and, from 16x16 on, the mean
pairwise MS-SSIM of those samples and of those images (diversity), computed
on the host in a worker thread while training goes on; checkpoints are
saved asynchronously.

The workdir is locked for the run, and one that holds checkpoints of
another config is refused, naming the keys that differ
(input_pipeline/workdir.py; `IGNORED_KEYS` below lists what may change).
`total_kimg` may: the schedule is a function of the kimg shown so far, not
of the total, so rerunning a finished workdir with a larger total_kimg
trains it further, exactly as one longer run would (and a smaller one
returns the longer run's last metrics). SIGINT (Ctrl-C) and SIGTERM stop
after the current dispatch: a checkpoint is saved and waited for, one line
names it, and the process exits with 130 (SIGINT) or 143 (SIGTERM); the
same command resumes. A killed run (SIGKILL, out of memory) resumes from
its last complete checkpoint: orbax writes each one to a temporary
directory and renames it when complete (benchmarks/kill_test.py).

workdir/
  config.json      the resolved config (read back by sample.py; a rerun
                   must match it, see above)
  checkpoints/     orbax: g, d, g_ema, opt (both Adam states, base RNG, ADA
                   state), meta (nimg, step, lod, data_res, data_batch,
                   data_mode, metrics), data (grain iterator state, or the
                   word 'device')
  samples/         fakes_<nimg>.png grids from G_ema on fixed latents
  metrics.jsonl    one JSON object per tick: kimg, img/s, resolution, alpha,
                   time_s and compile_s (seconds since this process
                   started, and those it waited for compilation), swd,
                   swd/<res>, ms_ssim, ms_ssim_real, losses, ...
  events.out...    TensorBoard (process 0)
"""

import collections
import concurrent.futures
import json
import logging
import os
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm

from input_pipeline import provenance
from input_pipeline import sharding
from input_pipeline import workdir as workdir_lib
from input_pipeline.errors import UserInputError
from pggan_jax import compiling
from pggan_jax import layers
from pggan_jax import networks
from pggan_jax import schedule
from pggan_jax import steps
from pggan_jax import ticks
from pggan_jax import train_data


# Config keys that may differ from the workdir's config.json on resume
# (besides workdir_lib.IGNORED_KEYS): they change when the run stops, what
# it logs and measures, and how the host feeds the device, not the
# training computed. total_kimg: see the module docstring.
# iters_per_dispatch changes how many iterations one compiled call runs
# (same iterations, same order); data_on_device changes how minibatches
# are drawn (on the device or by grain, from the same images), which is
# what a run moved to a machine with less memory needs, so a resumed run
# may switch (the checkpoint records data_mode).
IGNORED_KEYS = ('total_kimg', 'grid_size', 'metrics.*',
                'sched.tick_kimg', 'sched.tick_kimg_dict',
                'iters_per_dispatch', 'data_on_device', 'data_device_max_mb')
# What a PGGAN workdir holds that a rerun resumes.
OUTPUTS = ('checkpoints',)
# Keys added since older workdirs were written, and the values that give
# what those runs computed (the penalty on the whole batch, nearest
# upsampling).
LEGACY_ABSENT = {'gp_batch_shrink': 1, 'model.upsample': 'nearest'}
# Filled in from the data by resolve_config.
_RESOLVED_KEYS = ('class_names', 'model.channels', 'model.num_classes',
                  'model.latent_size')


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


def check_config(config) -> None:
  """The GAN's own keys and schedule, before any data is read."""
  m, s = config.model, config.sched
  try:
    networks.num_stages(m.resolution)
  except ValueError as e:
    raise UserInputError(f'config.model.resolution: {e}') from None
  if m.resolution > config.data.storage_size:
    raise UserInputError(
        f'config.model.resolution={m.resolution} exceeds '
        f'config.data.storage_size={config.data.storage_size}')
  up = m.get('upsample', 'nearest')   # absent: written before it
  if up not in layers.UPSAMPLE_METHODS:
    raise UserInputError(f'config.model.upsample={up!r} is not one of '
                         f'{list(layers.UPSAMPLE_METHODS)}')
  shrink = config.get('gp_batch_shrink', 1)   # absent: written before it
  if not isinstance(shrink, int) or shrink < 1:
    raise UserInputError(f'config.gp_batch_shrink={shrink!r} must be an '
                         'integer >= 1 (1 = the penalty on the whole batch)')
  if config.iters_per_dispatch < 0:
    raise UserInputError('config.iters_per_dispatch must be >= 0 (0 = auto)')
  if config.dtype not in ('float32', 'bfloat16'):
    raise UserInputError(f'config.dtype={config.dtype!r} is not float32 or '
                         'bfloat16 (parameters and Adam stay float32)')
  if config.augment.mode not in ('off', 'ada', 'fixed'):
    raise UserInputError(f'config.augment.mode={config.augment.mode!r} is '
                         "not 'off', 'ada' or 'fixed'")
  if config.augment.mode != 'off' and config.diffaug:
    raise UserInputError('config.augment (ADA) and config.diffaug are both '
                         'on; choose one')
  r = s.initial_resolution
  while r <= m.resolution:
    p = schedule.training_schedule(
        0.0, final_resolution=r, initial_resolution=r,
        minibatch_base=s.minibatch_base,
        minibatch_dict=schedule.parse_res_dict(s.minibatch_dict),
        max_minibatch_per_gpu=schedule.parse_res_dict(s.max_minibatch_per_gpu),
        num_devices=jax.device_count())
    n_dev = jax.device_count()
    key = ('sched.minibatch_dict' if r in schedule.parse_res_dict(
        s.minibatch_dict) else 'sched.minibatch_base')
    if p.batch_size < 1:
      raise UserInputError(
          f'config.{key} (or sched.max_minibatch_per_gpu) gives a minibatch '
          f'of {p.batch_size} at {r}x{r}; it must be at least 1')
    if p.batch_size % n_dev:
      raise UserInputError(
          f'config.{key}: the minibatch {p.batch_size} at {r}x{r} does not '
          f'divide over the {n_dev} devices (every minibatch must be a '
          'multiple of the device count)')
    g = min(m.mbstd_group_size, p.batch_size)
    if m.mbstd_group_size > 1 and p.batch_size % g:
      raise UserInputError(
          f'config.model.mbstd_group_size={m.mbstd_group_size} does not '
          f'divide the minibatch {p.batch_size} at {r}x{r}')
    # The penalty's B / s points: whole groups of the critic's size, the
    # same number on every device.
    n = p.batch_size // shrink
    if p.batch_size % shrink or n % jax.device_count():
      raise UserInputError(
          f'config.gp_batch_shrink={shrink} does not divide the minibatch '
          f'{p.batch_size} at {r}x{r} into a multiple of the device count '
          f'({jax.device_count()})')
    if m.mbstd_group_size > 1 and n % g:
      raise UserInputError(
          f'config.gp_batch_shrink={shrink} leaves {n} of the minibatch '
          f'{p.batch_size} at {r}x{r}: not whole minibatch-stddev groups '
          f'of {g}')
    r *= 2


def build_models(cfg):
  """(g_graph, d_graph, g_params, d_params) from a resolved config."""
  g, d = networks.build(cfg, nnx.Rngs(cfg.seed))
  g_graph, g_params = nnx.split(g)
  d_graph, d_params = nnx.split(d)
  return g_graph, d_graph, g_params, d_params


def grid_inputs(cfg, n: int | None = None,
                offset: int = 12345) -> tuple[jax.Array, jax.Array]:
  """Fixed latents (and labels cycling over classes): the grid's by default."""
  n = cfg.grid_size if n is None else n
  z = jax.random.normal(jax.random.key(cfg.seed + offset),
                        (n, cfg.model.latent_size))
  labels = jnp.arange(n, dtype=jnp.int32) % max(cfg.model.num_classes, 1)
  return z, labels


def dispatch_length(cfg) -> int:
  """Iterations per dispatch K: config.iters_per_dispatch, 0 = auto
  (sharding.dispatch_length)."""
  return sharding.dispatch_length(cfg.iters_per_dispatch)


_NETS = ('g', 'd', 'g_ema')
# A checkpoint: the nets, 'opt' (see _state_items), the run's progress
# ('meta') and the data stream's position ('data').
CHECKPOINT_ITEMS = (*_NETS, 'opt', 'meta', 'data')


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # Async: save() returns once the arrays are copied off the device; files
  # are written in the background (wait_until_finished() before exit). Each
  # is written to a temporary directory renamed when complete; those a
  # killed run left are removed when the next one starts.
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=True,
          cleanup_tmp_directories=True),
      item_names=CHECKPOINT_ITEMS)


def _state_items(state: dict, rng, wrap) -> dict:
  """Checkpoint items of the train state, each wrapped by `wrap` (an orbax
  Save or Restore arg): the three nets, and 'opt' holding the Adam moments,
  the rng and ADA's state when there is one."""
  opt = {'g_opt': state['g_opt'], 'd_opt': state['d_opt'], 'rng': rng,
         **({'aug': state['aug']} if 'aug' in state else {})}
  return {**{k: wrap(state[k]) for k in _NETS}, 'opt': wrap(opt)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_ignore: tuple[str, ...] = ()) -> dict:
  """Trains (or resumes) a PGGAN; returns the last metrics.

  Locks `workdir`, refuses one whose checkpoints another config made (keys
  matching IGNORED_KEYS or `resume_ignore` aside), and stops cleanly on
  SIGINT / SIGTERM (see the module docstring).
  """
  if not workdir:
    raise UserInputError('--workdir is required for config.task=pggan')
  check_config(config)
  with workdir_lib.claim(workdir, job='pggan', outputs=OUTPUTS,
                         ignore=(*IGNORED_KEYS, *resume_ignore),
                         absent=LEGACY_ABSENT) as claim:
    return _train_and_evaluate(config, workdir, claim)


def _train_and_evaluate(config, workdir: str, claim) -> dict:
  from input_pipeline import dataset  # pylint: disable=g-import-not-at-top
  cache_dir = sharding.setup_compilation_cache(config.jax_cache_dir,
                                      config.jax_cache_min_compile_secs)
  mesh = sharding.make_mesh()
  # Checkpoints of another config are refused before the data writes
  # W/splits.json, and again, with the keys the data fills in, before
  # anything is restored.
  workdir_lib.check_config(workdir, config, outputs=OUTPUTS,
                           ignore=IGNORED_KEYS + _RESOLVED_KEYS,
                           absent=LEGACY_ABSENT)
  prepared = dataset.prepare(config.data, workdir)
  cfg = resolve_config(config, prepared)
  is_main = jax.process_index() == 0
  claim.record(cfg)
  if is_main:
    # Which real images this GAN sees: the sampler copies it into its
    # manifest, and the classifier refuses synthetic images whose GAN saw
    # any of its validation or test images (input_pipeline/provenance.py).
    record = provenance.write_training_record(workdir, prepared, cfg.data)
    sched = cfg.sched
    print(f'PGGAN: {len(record["train_ids"])} training images (fold '
          f'{cfg.data.fold}, class '
          f'{record["class_name"] or "all: " + ", ".join(cfg.class_names)}'
          f'), {sched.initial_resolution}x{sched.initial_resolution} -> '
          f'{cfg.model.resolution}x{cfg.model.resolution}, '
          f'{sched.lod_training_kimg:g} kimg to stabilise and '
          f'{sched.lod_transition_kimg:g} to fade in each resolution, '
          f'{cfg.total_kimg:g} kimg in all', flush=True)

  g_graph, d_graph, g_params, d_params = build_models(cfg)
  hp = steps.Hparams.from_config(cfg, cfg.model.latent_size)
  adam = hp.adam()
  replicated = sharding.replicated(mesh)
  state = steps.init_state(g_params, d_params, hp, cfg.augment.p)
  rng = np.asarray(jax.random.key_data(jax.random.key(cfg.seed)))
  state = jax.device_put(state, replicated)
  k_max = dispatch_length(cfg)
  data = train_data.TrainData(prepared, cfg, mesh, k_max)
  meta = {'nimg': 0, 'step': 0, 'lod': -1.0, 'data_res': 0,
          'data_batch': 0, 'data_mode': data.mode,
          'data_processes': jax.process_count(), 'metrics': {}}
  logging.info('PGGAN data %s, %d iterations per dispatch, compilation '
               'cache %s', data.mode, k_max, cache_dir or 'as configured')

  mgr = _checkpoint_manager(workdir, cfg.keep_checkpoints)
  total_nimg = int(round(cfg.total_kimg * 1000))
  latest = mgr.latest_step()
  if latest is not None:
    meta = mgr.restore(latest, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    if meta['nimg'] >= total_nimg:
      mgr.close()
      if is_main:
        print(f'Training is complete ({meta["nimg"] / 1000:g} of '
              f'{cfg.total_kimg:g} kimg): checkpoints in {mgr.directory}, '
              f'grids in {os.path.join(workdir, "samples")}, metrics in '
              f'{os.path.join(workdir, "metrics.jsonl")}; sample with '
              f'configs/sample.py --workdir={workdir}, or raise '
              '--config.total_kimg to train longer', flush=True)
      return meta['metrics']
    logging.info('Resuming from %s', mgr.directory / str(latest))
    print(f'Resuming from {mgr.directory / str(latest)}', flush=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = _state_items(abstract, rng, ocp.args.StandardRestore)
    if meta['data_res']:
      data.set_stage(meta['data_res'], meta['data_batch'])
      if data.mode == 'stream' and meta.get('data_mode') == 'stream':
        # grain keeps one iterator state per process: it resumes only on
        # the process count that wrote it; elsewhere the stream restarts.
        # Older checkpoints lack the record; they are single-process ones
        # (multi-process saves failed before it, on the host-local rng).
        written_by = meta.get('data_processes', 1)
        if written_by == jax.process_count():
          items['data'] = data.restore_arg()
        else:
          logging.warning(
              'the data stream restarts from a new shuffle: checkpoint %s '
              'was written by %d process(es), this run has %d (the model, '
              'optimizer and schedule resume exactly)', latest, written_by,
              jax.process_count())
    restored = mgr.restore(latest, args=ocp.args.Composite(**items))
    state = {k: restored[k] for k in _NETS}
    state.update({k: v for k, v in restored.opt.items() if k != 'rng'})
    state = jax.device_put(state, replicated)
    rng = np.asarray(restored.opt['rng'])
    if 'data' in items:
      data.restored(restored.data)
    if is_main:
      ticks.trim_metrics(os.path.join(workdir, 'metrics.jsonl'),
                         meta['nimg'])

  def save(point):
    """Checkpoints the state after the dispatch that ended at `point`."""
    nonlocal meta, ckpt_start
    ckpt_start = nimg
    meta = {'nimg': nimg, 'step': step, 'lod': prev_lod,
            'data_res': point.resolution, 'data_batch': point.batch_size,
            'data_mode': data.mode, 'data_processes': jax.process_count(),
            'metrics': dict(last)}
    # A copy, so the next dispatch may donate `state` while orbax writes.
    snap = jax.tree.map(jnp.copy, state)
    mgr.save(nimg, args=ocp.args.Composite(
        **_state_items(snap, rng, ocp.args.StandardSave),
        meta=ocp.args.JsonSave(meta),
        data=data.save_arg()))

  writer = tensorboardX.SummaryWriter(workdir) if is_main else None
  key = jax.random.wrap_key_data(jnp.asarray(rng))
  # Model keys fold_in(key, .) as an iteration-at-a-time loop would; the
  # minibatch draws and flips use their own stream.
  data_key = jax.random.fold_in(key, 2**31 - 1)
  grid_z, grid_labels = grid_inputs(cfg)
  num_swd = cfg.metrics.swd_images
  swd_z, swd_labels = grid_inputs(cfg, num_swd, offset=54321)
  tick_z = jnp.concatenate([grid_z, swd_z])
  tick_labels = jnp.concatenate([grid_labels, swd_labels])
  swd_kw = dict(patches_per_image=cfg.metrics.swd_patches_per_image,
                patch_size=7, num_directions=cfg.metrics.swd_directions,
                num_repeats=4, seed=cfg.seed)
  real_ms_ssim = {}  # resolution -> MS-SSIM of the SWD reals (tick thread)
  metrics = ticks.Metrics()
  at = schedule.schedule_fn(cfg, jax.device_count())
  half_life = schedule.ema_half_life_kimg(cfg)
  nimg, step, prev_lod = meta['nimg'], meta['step'], meta['lod']
  tick_start, ckpt_start = nimg, nimg
  saved = latest
  start_time = time.time()
  last_log_time, last_log_nimg = start_time, nimg
  last_tick_time, last_tick_nimg = start_time, nimg
  bar = tqdm.tqdm(total=cfg.total_kimg, initial=nimg / 1000, unit='kimg',
                  disable=not is_main, dynamic_ncols=True,
                  bar_format='{l_bar}{bar}| {n:.2f}/{total:.2f} kimg '
                             '[{elapsed}<{remaining}{postfix}]')
  last = dict(meta['metrics'])
  stages = schedule.stage_starts(at, nimg / 1000, cfg.total_kimg,
                                 cfg.sched.lod_training_kimg,
                                 cfg.sched.lod_transition_kimg)
  compiler = compiling.Compiler(
      dict(g_graph=g_graph, d_graph=d_graph, hp=hp), dict(g_graph=g_graph),
      workers=compiling.compile_workers(cfg, len(stages),
                                        jax.default_backend()))
  tick_pool = concurrent.futures.ThreadPoolExecutor(1)
  pending_ticks = collections.deque()
  jsonl = os.path.join(workdir, 'metrics.jsonl')

  def plan_arrays(d: schedule.Dispatch) -> dict:
    pad = lambda v: np.pad(np.asarray(v, np.float32), (0, k_max - len(v)),
                           mode='edge')
    bn = d.points[0].batch_size * cfg.d_repeats
    return {'n': np.int32(len(d.points)), 'step': np.int32(step),
            'alpha': pad([p.alpha for p in d.points]),
            'ema_beta': pad([schedule.ema_beta(n, bn, half_life,
                                               cfg.ema_rampup)
                             for n in d.nimgs]),
            'lr_d': np.float32(d.points[0].lr_d),
            'lr_g': np.float32(d.points[0].lr_g),
            'key': key, 'data_key': data_key}

  # The state keeps its shapes, dtypes and shardings from here on.
  state_spec = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

  def compile_args(point, plan):
    """A thunk of the compile arguments at `point` (compiling.Compiler.get)."""
    return lambda: (state_spec, data.spec(point.resolution, point.batch_size),
                    plan, (tick_z, tick_labels, jnp.float32(0)))

  def log(point):
    nonlocal last_log_time, last_log_nimg
    m = metrics.flush(nimg / 1000)
    now = time.time()
    ips = (nimg - last_log_nimg) / max(now - last_log_time, 1e-9)
    last_log_time, last_log_nimg = now, nimg
    m.update({'resolution': point.resolution, 'alpha': point.alpha,
              'img/s': ips, 'kimg': nimg / 1000, 'lr': point.lr_d})
    if 'swd' in last:
      m['swd'] = last['swd']
    if writer:
      for k, v in m.items():
        if k != 'swd':
          writer.add_scalar(k, v, nimg)
    _bar_postfix(m)
    return m

  def _bar_postfix(m):
    swd = f' swd {m["swd"]:.1f}' if 'swd' in m else ''
    p = f' p {m["aug/p"]:.2f}' if 'aug/p' in m else ''
    bar.set_postfix_str(
        f'res {m["resolution"]} alpha {m["alpha"]:.2f} '
        f'D loss {m.get("d/loss", 0):.3f} G loss {m.get("g/loss", 0):.3f} '
        f'img/s {m["img/s"]:.0f}{swd}{p}')

  def finish_ticks(wait: bool):
    """Writes the records of finished tick jobs, in order."""
    while pending_ticks and (wait or pending_ticks[0][0].done()):
      fut, rec, tick_nimg = pending_ticks.popleft()
      out = fut.result()
      grid = out.pop('grid', None)
      rec.update(out)
      if 'swd' in out:
        last['swd'] = out['swd']
      if writer:
        if grid is not None:
          writer.add_image('g_ema/grid', grid, tick_nimg, dataformats='HWC')
        for k, v in out.items():
          writer.add_scalar(k, v, tick_nimg)
      if is_main:
        with open(jsonl, 'a') as f:
          f.write(json.dumps(rec) + '\n')

  def tick(point, generate):
    nonlocal last_tick_time, last_tick_nimg
    now = time.time()
    rec = dict(last, kimg=nimg / 1000, resolution=point.resolution,
               alpha=point.alpha, time_s=now - start_time,
               compile_s=compiler.waited_s,
               **{'img/s': (nimg - last_tick_nimg)
                  / max(now - last_tick_time, 1e-9)})
    rec.pop('swd', None)
    last_tick_time, last_tick_nimg = now, nimg
    fakes = generate(state['g_ema'], tick_z, tick_labels,
                     jnp.float32(point.alpha))
    reals = (data.swd_reals(point.resolution, num_swd)
             if num_swd and is_main else None)
    path = os.path.join(workdir, 'samples', f'fakes_{nimg:09d}.png')
    pending_ticks.append((tick_pool.submit(
        ticks.tick_job, fakes, len(grid_z), reals, swd_kw, path, is_main,
        cfg.metrics.get('ms_ssim_pairs', 0), real_ms_ssim,
        cfg.metrics.get('spectral_permutations', 0)),
        rec, nimg))

  # Ctrl-C / SIGTERM: save and stop between dispatches, never inside one.
  with workdir_lib.stop_on_signals('PGGAN training') as stop:
    try:
      while nimg < total_nimg:
        point = at(nimg / 1000)
        if cfg.reset_opt_for_new_lod and schedule.lod_changed(prev_lod,
                                                              point.lod):
          state['g_opt'] = jax.device_put(adam.init(state['g']), replicated)
          state['d_opt'] = jax.device_put(adam.init(state['d']), replicated)
        d = schedule.plan_dispatch(
            at, nimg=nimg, step=step, total_nimg=total_nimg, max_iters=k_max,
            d_repeats=cfg.d_repeats, log_every=cfg.log_every_steps,
            tick_start=tick_start, ckpt_start=ckpt_start,
            checkpoint_kimg=cfg.checkpoint_kimg)
        prev_lod = d.points[-1].lod
        data.set_stage(point.resolution, point.batch_size)
        plan = plan_arrays(d)
        if stages:  # first dispatch: every stage of the run, ahead
          for p in stages:
            compiler.prefetch((p.stage, p.batch_size), compile_args(p, plan))
          stages = []
        train_fn, generate = compiler.get(
            (point.stage, point.batch_size), compile_args(point, plan))
        state, means = train_fn(state, data.dispatch_args(len(d.points)), plan)
        metrics.add(means, len(d.points))
        nimg, step = d.nimgs[-1] + point.batch_size * cfg.d_repeats, (
            step + len(d.points))
        bar.update(min(nimg, total_nimg) / 1000 - bar.n)
        finish_ticks(wait=False)
        if d.log:
          last = log(d.points[-1])
        if d.tick:
          tick_start = nimg
          tick(d.points[-1], generate)
          if d.done:  # the final metrics carry the final SWD
            finish_ticks(wait=True)
            _bar_postfix(last)
        if stop and not d.ckpt:
          # SIGINT / SIGTERM: save where we are (losses checked first).
          last = log(d.points[-1]) if metrics.pending else last
        if d.ckpt or stop:
          save(d.points[-1])
          saved = nimg
        if stop:
          break
      finish_ticks(wait=True)
    finally:
      tick_pool.shutdown(wait=True)
      # The checkpoint first: compilations still running ahead (up to a
      # minute on a GPU) cannot be cancelled, only waited for.
      mgr.wait_until_finished()
      compiler.close()
      bar.close()
      mgr.close()
      if writer:
        writer.close()
  if stop:
    where = (f'saved checkpoint {mgr.directory / str(saved)} (kimg '
             f'{saved / 1000:.3f} of {cfg.total_kimg:g})'
             if saved is not None else 'no checkpoint yet')
    stop.exit(f'PGGAN training stopped; {where}; run the same command '
              'again to resume')
  return last
