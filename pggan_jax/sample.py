"""Sampling from a trained PGGAN: G_ema from a checkpoint -> PNG folder.

    python main.py --config=configs/sample.py --config.workdir=W \
        --config.num_images=N --config.output_dir=O

The model is rebuilt from W/config.json (written at train start), G_ema is
restored from the latest checkpoint (or `step`), and N 8-bit PNGs are
written at the checkpoint's resolution: in O/<class_name>/ for a
conditional model (every class, or `label`) and for an unconditional one
trained on one class (`data.class_filter`), directly in O for an
unconditional model of all classes. O/manifest.json records the run and,
under 'gan_training', which real images the GAN trained on (W's
training_data.json): the classifier refuses synthetic images whose GAN saw
its validation or test images (input_pipeline/provenance.py). Sampling
another class's GAN into the same O adds to the manifest; sampling a GAN
into O again replaces the images (and entry) of the classes it writes, and
a GAN of all classes everything sampled there before, so that after a run O
holds exactly what its manifest lists. G_ema generates data-parallel over
this process's devices. Same seed, same images (on another device count,
within one 8-bit level: float32 rounding).
"""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import files as files_lib
from input_pipeline import images as image_io
from input_pipeline import provenance
from input_pipeline import sharding
from input_pipeline import workdir as workdir_lib
from input_pipeline.errors import UserInputError
from pggan_jax import schedule
from pggan_jax import steps
from pggan_jax import train

_CHUNK = 64


def load_generator(workdir: str, step: int | None = None):
  """(config, g_graph, g_ema params, meta, step) from a training workdir."""
  config_path = os.path.join(workdir, 'config.json')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not os.path.isfile(config_path):
    raise UserInputError(f'{config_path} not found: is config.workdir a '
                         'PGGAN training workdir?')
  if not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
    raise UserInputError(f'no checkpoint in {ckpt_dir}')
  with open(config_path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  mgr = ocp.CheckpointManager(
      os.path.abspath(ckpt_dir),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=train.CHECKPOINT_ITEMS)
  steps_available = mgr.all_steps()
  if not steps_available:
    raise UserInputError(f'no checkpoint in {ckpt_dir}')
  if step is None or step < 0:
    step = max(steps_available)
  elif step not in steps_available:
    raise UserInputError(f'config.step={step} not in {ckpt_dir} (have '
                         f'{sorted(steps_available)})')
  g_graph, _, g_params, _ = train.build_models(cfg)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, g_params)
  restored = mgr.restore(step, args=ocp.args.Composite(
      g_ema=ocp.args.StandardRestore(abstract),
      meta=ocp.args.JsonRestore()))
  mgr.close()
  return cfg, g_graph, restored['g_ema'], restored['meta'], step


def _every_class(label) -> bool:
  """config.label unset: a conditional GAN samples every class."""
  return label in (None, '', -1)


def _resolve_label(label, class_names: list[str]) -> int:
  if isinstance(label, str) and label in class_names:
    return class_names.index(label)
  try:
    value = int(label)
  except ValueError:
    value = -1
  if not 0 <= value < len(class_names):
    raise UserInputError(f'config.label={label!r} is not a class index or '
                         f'name of {class_names}')
  return value


def sample(workdir: str, num_images: int, output_dir: str, *, seed: int = 0,
           label: int | str | None = None, step: int | None = None) -> dict:
  """Writes `num_images` PNGs (per class if conditional); returns manifest."""
  if num_images < 1:
    raise UserInputError(f'config.num_images={num_images} must be >= 1')
  if jax.process_count() > 1:
    raise UserInputError(
        f'sampling runs in one process, not over {jax.process_count()} '
        '(its chunks are placed on this process\'s devices)')
  cfg, g_graph, g_ema, meta, step = load_generator(workdir, step)
  # One sampler per output folder at a time: two would interleave their
  # class folders and manifest.json (input_pipeline/workdir.py).
  with workdir_lib.lock(output_dir, job='sample'):
    point = schedule.from_config(cfg, meta['nimg'] / 1000)
    # Sample at the resolution G_ema was last trained at.
    stage = int(math.log2(meta['data_res'])) - 2 if meta['data_res'] else (
        point.stage)
    alpha = point.alpha if stage == point.stage else 1.0
    class_names = list(cfg.class_names)
    conditional = cfg.model.num_classes > 0
    record = provenance.read_training_record(workdir)
    class_filter = int(cfg.data.get('class_filter', -1))
    if conditional:
      labels = ([_resolve_label(label, class_names)]
                if not _every_class(label) else range(len(class_names)))
      folders = {lab: class_names[lab] for lab in labels}
    else:
      if not _every_class(label):
        raise UserInputError('config.label is set but the model in '
                             f'{workdir} is unconditional')
      labels = [None]
      # A one-class GAN knows its class: its images go to O/<class>/.
      folders = {None: (class_names[class_filter] if class_filter >= 0
                        else '')}
    # Key of this GAN's entry: the one class folder written (a one-class GAN,
    # or a conditional GAN asked for one label), else 'all'.
    written = [folders[lab] for lab in labels]
    entry = written[0] if len(written) == 1 and written[0] else 'all'
    replaced = [folders[lab] for lab in labels if folders[lab]]
    manifest, stale = _merged_manifest(output_dir, entry, class_names,
                                       replaced)
    manifest['class_names'] = class_names
    manifest_path = os.path.join(output_dir, provenance.MANIFEST)
    # First the manifest without the entries being replaced: images of an
    # interrupted run have no training record, so the classifier refuses
    # them (provenance.check_synthetic) until a run completes.
    files_lib.write_json(manifest_path, manifest)
    # Then an earlier sampler's images that the new manifest drops go (flat
    # ones too), and the class folders they leave empty: after a run the
    # folder holds exactly what its manifest lists.
    for f in stale:
      try:
        os.remove(os.path.join(output_dir, f))
      except FileNotFoundError:
        pass
    for d in sorted({os.path.dirname(f) for f in stale} - {''}):
      try:
        os.rmdir(os.path.join(output_dir, d))
      except OSError:  # gone, or holds other files
        pass
    files = []
    # Data-parallel over this process's devices (sampling runs in one
    # process): G_ema replicated, each chunk of latents split over 'data'.
    mesh = sharding.make_mesh()
    chunk = -(-_CHUNK // jax.device_count()) * jax.device_count()
    g_ema = sharding.put_replicated(g_ema, mesh)
    batch = sharding.data_sharding(mesh)
    for lab in labels:
      out = os.path.join(output_dir, folders[lab])
      if folders[lab]:  # a class folder is replaced whole, never mixed
        shutil.rmtree(out, ignore_errors=True)
      key = jax.random.fold_in(jax.random.key(seed), lab or 0)
      z_all = np.asarray(jax.random.normal(
          key, (num_images, cfg.model.latent_size)))
      for start in range(0, num_images, chunk):
        z = z_all[start:start + chunk]
        # One shape (the last chunk padded), split over the devices.
        z_dev, y_dev = jax.device_put(
            (sharding.pad_rows(z, chunk), np.full((chunk,), lab or 0,
                                                   np.int32)), batch)
        imgs = np.asarray(steps.generate(
            g_ema, z_dev, y_dev, jnp.float32(alpha), g_graph=g_graph,
            stage=stage))[:len(z)]
        for i, img in enumerate(image_io.to_uint8(imgs)):
          path = os.path.join(out, f'{seed:04d}_{start + i:05d}.png')
          image_io.save_png(img, path)
          files.append(os.path.relpath(path, output_dir))
    run = {
        'workdir': os.path.abspath(workdir), 'checkpoint_step': int(step),
        'kimg': meta['nimg'] / 1000, 'seed': seed,
        'resolution': 4 * 2 ** stage, 'label': label if conditional else None,
        'conditional': conditional, 'num_images': len(files)}
    manifest.update(run)
    manifest['runs'][entry] = run
    manifest['files'] = sorted(set(manifest['files']) | set(files))
    manifest['num_images'] = len(manifest['files'])
    if record is not None:
      manifest['gan_training'][entry] = record
    else:
      manifest['gan_training'].pop(entry, None)
    files_lib.write_json(manifest_path, manifest)
    return manifest


def _merged_manifest(output_dir: str, entry: str, class_names: list[str],
                     replaced_folders: list[str]) -> tuple[dict, list[str]]:
  """An existing O/manifest.json to add to, or a fresh one; and the files
  the old manifest listed that the new one drops (paths in O).

  Entries of other one-class GANs of the same classes are kept (one GAN per
  class sampled into one folder); anything else starts afresh.
  """
  fresh = {'runs': {}, 'files': [], 'gan_training': {}}
  path = os.path.join(output_dir, provenance.MANIFEST)
  if not os.path.isfile(path):
    return fresh, []
  try:
    with open(path) as f:
      old = json.load(f)
    old_files = [str(f) for f in old.get('files', [])]
  except (OSError, ValueError, AttributeError, TypeError):
    return fresh, []
  # Only the sampler's own PNGs, never a path leaving the folder.
  old_files = [f for f in old_files if f.endswith('.png') and
               not os.path.isabs(f) and '..' not in f.split('/')]
  if (entry == 'all' or old.get('class_names') != class_names
      or 'all' in old.get('runs', {})):
    return fresh, old_files
  keep = lambda f: f.split('/')[0] not in replaced_folders
  merged = {'runs': {k: v for k, v in old.get('runs', {}).items()
                     if k != entry},
            'files': [f for f in old_files if keep(f)],
            'gan_training': {k: v for k, v in old.get('gan_training',
                                                      {}).items()
                             if k != entry}}
  return merged, [f for f in old_files if not keep(f)]


def sample_from_config(config: ml_collections.ConfigDict,
                       workdir: str | None = None) -> dict:
  """`main.py` entry for configs/sample.py.

  The GAN's training workdir is config.workdir or, when that is empty, the
  --workdir flag every other job takes.
  """
  if (config.workdir and workdir and os.path.abspath(config.workdir)
      != os.path.abspath(workdir)):
    raise UserInputError(
        f'--config.workdir={config.workdir} and --workdir={workdir} differ: '
        'give the GAN training workdir once')
  gan_workdir = config.workdir or workdir
  if not gan_workdir:
    raise UserInputError('the GAN training workdir is required: '
                         '--config.workdir=W (or --workdir=W)')
  if not config.output_dir:
    raise UserInputError('config.output_dir is required')
  manifest = sample(gan_workdir, config.num_images, config.output_dir,
                    seed=config.seed, label=config.label or None,
                    step=config.step if config.step >= 0 else None)
  per_class = (' per class' if manifest['conditional']
               and _every_class(manifest['label']) else '')
  print(f'wrote {config.num_images} images{per_class} at '
        f'{manifest["resolution"]}x{manifest["resolution"]} to '
        f'{config.output_dir} ({manifest["num_images"]} there in all)')
  return manifest
