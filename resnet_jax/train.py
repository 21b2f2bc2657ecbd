"""Train and evaluate a ResNet classifier on one fold: `train_and_evaluate`.

  python main.py --config=configs/resnet.py --workdir=/tmp/resnet

Arms (config.arm): 'none' (real images only), 'classic' (+ classic
augmentation), 'gan' (+ synthetic images from config.data.synthetic_dir at
config.data.synthetic_ratio), 'classic+gan' (both).

Images arrive in [-1, 1] by a fixed per-image mapping of the stored uint8
pixels, so no dataset statistics are computed and none can leak from the
validation or test splits.

The model evaluated is the *final* one (cosine decay to 0): with ~25
validation images, picking the best-validation checkpoint would mostly pick
noise. The validation split is used to log progress and to choose the
decision threshold that is then applied to the test split.
"""

import csv
import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
import grain

from input_pipeline import dataset
from input_pipeline import files
from input_pipeline import provenance
from input_pipeline import pipeline
from input_pipeline import sharding
from input_pipeline import workdir as workdir_lib
from input_pipeline.errors import UserInputError
from resnet_jax import metrics
from resnet_jax import models
from resnet_jax import steps
from resnet_jax import train_data

ARMS = ('none', 'classic', 'gan', 'classic+gan')
SYNTHETIC_MODES = ('add', 'equal_compute')


# ----------------------------------------------------------------- utilities


def _arm_data_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Iterator keywords for config.arm (augmentation and synthetic mixing)."""
  augment = ml_collections.ConfigDict(config.data.augment.to_dict())
  augment.enabled = 'classic' in config.arm
  synthetic_dir, ratio = '', 0.0
  if 'gan' in config.arm:
    synthetic_dir = config.data.synthetic_dir
    ratio = config.data.synthetic_ratio
    if not synthetic_dir:
      raise UserInputError(
          f"config.data.synthetic_dir is empty but config.arm='{config.arm}' "
          'needs synthetic images')
  return dict(augment=augment, synthetic_dir=synthetic_dir,
              synthetic_ratio=ratio)


def check_config(config: ml_collections.ConfigDict) -> None:
  """The classifier's own keys, before any data is read or model built."""
  if config.arm not in ARMS:
    raise UserInputError(f'config.arm={config.arm!r} is not one of {ARMS}')
  ratio = config.data.synthetic_ratio
  if 'gan' in config.arm and not 0.0 < ratio < 1.0:
    raise UserInputError(
        f'config.data.synthetic_ratio={ratio} must be in (0, 1) for '
        f"config.arm='{config.arm}'")
  steps.check_model_keys(config, models.MODELS, 'config')
  steps.check_optimizer(config)
  if config.kimg <= 0 and config.num_epochs <= 0:
    raise UserInputError('set config.kimg or config.num_epochs to > 0')
  mode = config.get('synthetic_mode', 'add')
  if mode not in SYNTHETIC_MODES:
    raise UserInputError(f'config.synthetic_mode={mode!r} is not one of '
                         f'{list(SYNTHETIC_MODES)}')
  sharding.check_batch_size(config.batch_size)
  sharding.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  train_data.check_config(config)


def num_train_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """Steps from config.kimg (if > 0) else config.num_epochs.

  check_config has checked that one of them is set. kimg / epochs count
  *real* images. In a 'gan' arm a fraction data.synthetic_ratio of each
  batch is synthetic: with config.synthetic_mode='add' (the design of
  Frid-Adar et al. 2018 and Han et al. 2019) the run is 1 / (1 - ratio)
  times longer, so it shows the same real images as the arms without
  synthetic ones plus the synthetic ones; with 'equal_compute' it keeps the
  same number of steps and so replaces that fraction of the real exposures.
  """
  if config.kimg > 0:
    images = config.kimg * 1000
  else:
    images = config.num_epochs * num_train
  if 'gan' in config.arm and config.get('synthetic_mode', 'add') == 'add':
    images /= 1.0 - float(config.data.synthetic_ratio)
  return max(1, int(np.ceil(images / config.batch_size)))


def _synthetic_record(config, prepared, data_kwargs) -> dict | None:
  """What the 'gan' arms mix in: folder, ratio, per-class shares, GANs."""
  if not data_kwargs['synthetic_dir']:
    return None
  record = pipeline.synthetic_shares(
      prepared, data_kwargs['synthetic_dir'], data_kwargs['synthetic_ratio'],
      fold=int(config.data.fold), class_filter=int(config.data.class_filter))
  record['mode'] = config.get('synthetic_mode', 'add')
  record['gans'] = provenance.gan_runs(data_kwargs['synthetic_dir'])
  logging.info(
      'synthetic images from %s at ratio %g: %s per class; share of the '
      'synthetic stream %s; fraction of each class\'s training images that '
      'are synthetic %s', record['dir'], record['ratio'], record['images'],
      record['share_of_synthetic_stream'],
      record['synthetic_fraction_per_class'])
  return record


def _to_jsonable(x):
  if isinstance(x, dict):
    return {k: _to_jsonable(v) for k, v in x.items()}
  if isinstance(x, float) and not np.isfinite(x):
    return None  # JSON has no NaN; null means "undefined".
  return x


def _write_predictions(path: str, ids, labels, probs) -> None:
  with files.atomic_open(path, newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'label', 'prob'])
    for i, y, p in zip(ids, labels, probs):
      w.writerow([i, int(y), f'{float(p):.6f}'])


# --------------------------------------------------------------------- main


# What a classifier workdir holds that a rerun resumes or returns: only
# when workdir/config.json says the same config made them.
OUTPUTS = ('checkpoints', 'results.json')
# Keys added since older workdirs were written, and the values that give
# what those runs computed: their batches were streamed by grain
# (data_on_device='no'); the other two only act with batches drawn on the
# device, and steps per dispatch never change which steps run.
LEGACY_ABSENT = {'data_on_device': 'no',
                 'data_device_max_mb': workdir_lib.ANY,
                 'steps_per_dispatch': workdir_lib.ANY}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_ignore: tuple[str, ...] = ()
                       ) -> dict[str, Any]:
  """Trains on config.data.fold's train split; evaluates val and test.

  Returns (and writes to workdir/results.json) {'val', 'test',
  'test_at_val_threshold', 'threshold', ...}; returns the stored results
  without training if results.json already exists. The workdir is locked
  for the run, and a workdir whose checkpoints or results another config
  made is refused, naming the keys that differ (input_pipeline/workdir.py;
  keys matching `resume_ignore` aside).
  """
  check_config(config)
  with workdir_lib.claim(workdir, config, job='resnet', outputs=OUTPUTS,
                         ignore=resume_ignore, absent=LEGACY_ABSENT):
    return _train_and_evaluate(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """main.py's entry: `train_and_evaluate`, then one line on the results."""
  path = os.path.join(workdir or '', 'results.json')
  finished = bool(workdir) and os.path.exists(path)
  results = train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(f"{path}: test AUC {results['test']['auc']:.3f}, accuracy "
          f"{results['test_at_val_threshold']['accuracy']:.3f} at the "
          'validation threshold' + (
              ' (finished before: nothing trained; another --workdir '
              'trains again)' if finished else ''))
  return results


def _train_and_evaluate(config: ml_collections.ConfigDict,
                        workdir: str) -> dict[str, Any]:
  results_path = os.path.join(workdir, 'results.json')
  if os.path.exists(results_path):
    with open(results_path) as f:
      return json.load(f)
  data_kwargs = _arm_data_kwargs(config)
  if config.data.fold < 0:
    raise UserInputError('config.data.fold=-1 has no val/test split; '
                         'use a fold in [0, num_folds)')

  prepared = dataset.prepare(config.data, workdir)
  if len(prepared.class_names) != 2:
    raise UserInputError(f'need 2 classes, got {prepared.class_names}')
  synthetic_check = None
  if data_kwargs['synthetic_dir']:
    # Before anything is written: a GAN that saw this fold's val/test
    # images would leak them into training.
    synthetic_check = provenance.check_synthetic(
        data_kwargs['synthetic_dir'], prepared, int(config.data.fold),
        allow_unverified=bool(config.data.allow_unverified_synthetic))
  synthetic = _synthetic_record(config, prepared, data_kwargs)
  # workdir/config.json (read back by predict.py and compare.py) was
  # written by workdir_lib.claim.
  res = config.data.resolution
  num_train = len(prepared.indices(config.data.fold, 'train'))
  total_steps = num_train_steps(config, num_train)
  mesh = sharding.make_mesh()

  model = steps.create_model(config, prepared.channels)
  tx = steps.create_optimizer(config)
  sched = steps.schedule(config, total_steps)
  graphdef, eval_graphdef, state = steps.init_state(model, tx)
  state = sharding.put_replicated(state, mesh)
  feed = Feed(config, prepared, data_kwargs, mesh, total_steps)

  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      max_to_keep=1, save_interval_steps=config.checkpoint_every_steps))
  if mngr.latest_step() is not None:
    latest = mngr.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = mngr.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        **feed.restore_args(os.path.join(ckpt_dir, str(latest)))))
    state = restored.state
    logging.info('Resumed from step %d', int(state.step))

  writer = _summary_writer(workdir)
  val_images, val_labels, _ = pipeline.load_arrays(
      prepared, config.data, role='val', resolution=res)
  start_step = int(state.step)
  t0 = time.time()
  # Metrics of dispatches not read back yet (on the device), and those
  # read since the last log (per step). The newest dispatch is read only
  # at the next one, so the device always has one queued; everything is
  # read (and checked) before a checkpoint: a saved checkpoint is a good one.
  pending, host, read = [], [], start_step
  saved = mngr.latest_step()
  step = start_step
  # Throughput (`train_images_per_second`): the images of the steps after
  # this process's first dispatch (which compiles the step) over the time
  # from when that dispatch had finished to when the last step was read
  # back, before the final checkpoint; evaluations and checkpoints in
  # between count. `steady`: (step, time) at the start of that window.
  steady, t_last = None, None
  run = functools.partial(feed.run, sched=sched, bound=steps.bind(
      graphdef, tx, config.label_smoothing))

  def read_back(everything: bool) -> None:
    nonlocal pending, host, read
    take = pending if everything else pending[:-1]
    if not take:
      return
    pending = pending[len(take):]
    rows = _per_step(take)
    _check_finite(rows, read + len(rows), total_steps, mngr)
    for row in rows:
      read += 1
      host.append(row)
      if read % config.log_every_steps == 0 or read == total_steps:
        m = jax.tree.map(lambda *xs: float(np.mean(xs)), *host)
        host = []
        bar.set_postfix(loss=f"{m['loss']:.3f}")
        _write_scalars(writer, read, {f'train/{k}': v for k, v in m.items()})

  # Ctrl-C / SIGTERM: finish the dispatch, save, stop (exit 130 / 143).
  with _progress(start_step, total_steps) as bar, \
      workdir_lib.stop_on_signals('classifier training') as stop:
    while step < total_steps:
      # A dispatch ends at the next eval or checkpoint step.
      n = min(feed.length, _next_event(step, total_steps, config) - step)
      state, m = run(state, n)
      pending.append((m, n))
      step += n
      if steady is None:
        jax.block_until_ready(m)
        steady = (step, time.time())
      bar.update(n)
      save = (step == total_steps or step % config.checkpoint_every_steps == 0
              or bool(stop))
      read_back(everything=save)
      if step == total_steps:
        t_last = time.time()
      if (config.eval_every_steps and step % config.eval_every_steps == 0
          and step != total_steps and len(val_images)):
        probs = steps.predict(state, eval_graphdef, val_images,
                              config.eval_batch_size, mesh)
        vm = metrics.binary_metrics(val_labels, probs)
        _write_scalars(writer, step, {f'eval/val_{k}': vm[k] for k in (
            'accuracy', 'auc', 'balanced_accuracy')})
      if save:
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), **feed.save_args()),
                  force=step == total_steps or bool(stop))
        saved = step
      if stop:
        break
  mngr.wait_until_finished()
  if stop:
    where = (f'saved checkpoint {os.path.join(ckpt_dir, str(saved))} (step '
             f'{saved} of {total_steps})' if saved is not None
             else 'no checkpoint yet')
    stop.exit(f'classifier training stopped; {where}; run the same command '
              'again to resume')
  train_time = time.time() - t0
  images_per_s = (None if steady is None or step == steady[0] else
                  (step - steady[0]) * config.batch_size / (t_last - steady[1]))
  if images_per_s is not None:
    logging.info('%d steps in %.1f s; %.1f img/s after the first dispatch '
                 '(which compiled the step)', step - start_step, train_time,
                 images_per_s)

  # Final evaluation: threshold chosen on val, applied to test unchanged.
  val_probs = steps.predict(state, eval_graphdef, val_images,
                            config.eval_batch_size, mesh)
  threshold = metrics.choose_threshold(val_labels, val_probs)
  test_images, test_labels, test_ids = pipeline.load_arrays(
      prepared, config.data, role='test', resolution=res)
  test_probs = steps.predict(state, eval_graphdef, test_images,
                             config.eval_batch_size, mesh)
  results = {
      'val': metrics.binary_metrics(val_labels, val_probs),
      'val_at_val_threshold': metrics.binary_metrics(val_labels, val_probs,
                                                     threshold),
      'test': metrics.binary_metrics(test_labels, test_probs),
      'test_at_val_threshold': metrics.binary_metrics(test_labels, test_probs,
                                                      threshold),
      'threshold': threshold,
      'arm': config.arm, 'fold': int(config.data.fold),
      'seed': int(config.seed), 'model': config.model,
      'steps': total_steps, 'num_train': num_train,
      'batches': feed.mode,
      'num_test': int(len(test_labels)),
      'synthetic_mode': (config.get('synthetic_mode', 'add')
                         if data_kwargs['synthetic_dir'] else None),
      'synthetic_check': synthetic_check,
      'synthetic': synthetic,
      'channels': int(prepared.channels),
      'train_seconds': round(train_time, 1),
      # Images per second after this process's first dispatch, to the
      # last step (see `steady` above; None with one dispatch only).
      'train_images_per_second': (None if images_per_s is None
                                  else round(images_per_s, 1)),
      'class_names': list(prepared.class_names),
  }
  _write_scalars(writer, total_steps, {
      f'eval/{split}_{k}': results[split][k]
      for split in ('val', 'test', 'test_at_val_threshold')
      for k in ('accuracy', 'auc', 'balanced_accuracy')})
  if writer is not None:
    writer.close()
  if jax.process_index() == 0:
    _write_predictions(os.path.join(workdir, 'test_predictions.csv'),
                       test_ids, test_labels, test_probs)
    files.write_text(results_path,
                  json.dumps(_to_jsonable(results), indent=2) + '\n')
  logging.info('test: %s', results['test'])
  return _to_jsonable(results)


class Feed:
  """The training batches of one run: drawn on the device or streamed by
  grain (resnet_jax/train_data.py), behind one `run(state, n)`."""

  def __init__(self, config, prepared, data_kwargs: dict, mesh,
               total_steps: int):
    self.mode = train_data.choose_mode(
        config, train_data.nbytes(prepared, config),
        total_steps * int(config.batch_size))
    if self.mode == 'device':
      host = train_data.load(prepared, config, data_kwargs)
      self.draw, self.data = train_data.make_stream(config, host,
                                                    data_kwargs, mesh)
      self.length = train_data.steps_per_dispatch(config)
    else:
      self.iter = pipeline.create_iterator(
          prepared, config.data, role='train',
          batch_size=config.batch_size // jax.process_count(),
          seed=config.seed, train=True, **data_kwargs)
      self.length = 1
    self.mesh = mesh
    logging.info('classifier batches: %s, %d step(s) per dispatch',
                 'drawn on the device' if self.mode == 'device'
                 else 'streamed by grain', self.length)

  def run(self, state, n: int, sched: dict, bound: steps.Steps):
    """n <= self.length steps of `bound` (steps.bind) -> (state, metrics
    of [>= n] arrays)."""
    if self.mode == 'device':
      return bound.train_steps(state, self.data, np.int32(n), sched,
                               draw=self.draw, length=self.length)
    batch = sharding.shard_batch(next(self.iter), self.mesh)
    return bound.train_step(state, batch, sched)

  def save_args(self) -> dict:
    if self.mode == 'device':  # a function of (seed, step): no state
      return {'draws': ocp.args.JsonSave({'mode': 'device'})}
    return {'data': grain.checkpoint.CheckpointSave(self.iter)}

  def restore_args(self, step_dir: str) -> dict:
    if self.mode == 'device':
      if os.path.isdir(os.path.join(step_dir, 'data')):
        logging.warning('batches are now drawn on the device: checkpoint %s '
                        'was written with batches streamed by grain (the '
                        'model and optimizer resume exactly)', step_dir)
      return {}
    if not os.path.isdir(os.path.join(step_dir, 'data')):
      logging.warning('the grain stream restarts from its first batch: '
                      'checkpoint %s was written with batches drawn on the '
                      'device (the model and optimizer resume exactly)',
                      step_dir)
      return {}
    return {'data': grain.checkpoint.CheckpointRestore(self.iter)}


def _next_event(step: int, total_steps: int, config) -> int:
  """The first eval or checkpoint step after `step` (or the last step)."""
  out = total_steps
  for every in (config.eval_every_steps, config.checkpoint_every_steps):
    if every:
      out = min(out, (step // every + 1) * every)
  return out


def _per_step(pending: list) -> list[dict]:
  """[(metrics of [k] arrays or scalars, n)] -> one host dict per step."""
  out = []
  for m, n in jax.device_get(pending):
    m = {k: np.atleast_1d(v)[:n] for k, v in m.items()}
    out.extend({k: float(v[i]) for k, v in m.items()} for i in range(n))
  return out


def _check_finite(pending: list[dict], step: int, total_steps: int,
                  mngr: ocp.CheckpointManager) -> None:
  """FloatingPointError naming the first step with a non-finite loss among
  the `pending` metrics (steps step - len + 1 .. step) and the last good
  checkpoint (every saved one: the losses are checked before each save)."""
  losses = np.array([float(m['loss']) for m in pending])
  bad = np.flatnonzero(~np.isfinite(losses))
  if not bad.size:
    return
  first = step - len(pending) + 1 + int(bad[0])
  mngr.wait_until_finished()
  latest = mngr.latest_step()
  good = (f'last good checkpoint: step {latest} in {mngr.directory}'
          if latest is not None else 'no checkpoint was saved before it')
  raise FloatingPointError(
      f'non-finite loss ({losses[bad[0]]}) at step {first} of '
      f'{total_steps}; {good}; the same config diverges again: lower '
      'config.learning_rate (a new --workdir) or check the data')


def _summary_writer(workdir: str):
  if jax.process_index() != 0:
    return None
  import tensorboardX  # pylint: disable=g-import-not-at-top
  return tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))


def _write_scalars(writer, step: int, scalars: dict) -> None:
  if writer is None:
    return
  for k, v in scalars.items():
    if np.isfinite(v):
      writer.add_scalar(k, v, step)
  writer.flush()


def _progress(initial: int, total: int):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(initial=initial, total=total, desc='resnet', unit='step',
                   disable=jax.process_index() != 0, dynamic_ncols=True)
