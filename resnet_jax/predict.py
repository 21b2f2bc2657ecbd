"""Apply a trained classifier to new images: `predict_from_config`.

    python main.py --config=configs/predict.py --config.workdir=W \\
        --config.input=DIR_OR_FILE --config.output=P.csv

W is a classifier workdir (configs/resnet.py): the model is rebuilt from
W/config.json, its final weights restored from W/checkpoints, and the
decision threshold chosen on the validation split read from W/results.json.
Each image gets the training preprocessing (`preprocess.load_square` at
data.storage_size, `resize_square` to data.resolution, [-1, 1]) and one CSV
row: path, P(positive class), the predicted class at that threshold, and an
error (empty, or one line saying why this file could not be read; a bad
file never stops the run).
"""

import csv
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import files
from input_pipeline import preprocess
from input_pipeline import sharding
from input_pipeline import sources
from input_pipeline import transforms
from input_pipeline.errors import UserInputError
from resnet_jax import steps

# The extensions the data sources read (any case).
IMAGE_EXTENSIONS = sources.IMAGE_EXTS
COLUMNS = ('path', 'prob', 'label', 'error')


def list_images(path: str) -> list[str]:
  """A file, or every PNG/JPEG/TIFF under a directory (recursive, sorted,
  hidden files, folders and OS leftovers such as Thumbs.db skipped,
  extensions in any case)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise UserInputError(f'config.input={path!r} is not a file or directory')
  out = []
  for root, dirs, names in os.walk(path):
    # Skipped as the data sources skip them (sources.ignored).
    dirs[:] = sorted(d for d in dirs if not sources.ignored(d))
    out += [os.path.join(root, f) for f in sorted(names)
            if not sources.ignored(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
  if not out:
    raise UserInputError(f'config.input={path!r}: no PNG or JPEG images, '
                         'nor TIFF')
  return out


def read_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, results) of a finished classifier run; UserInputError if W
  is not one."""
  out = []
  for name in ('results', 'config'):
    path = os.path.join(workdir, f'{name}.json')
    if not os.path.isfile(path):
      raise UserInputError(
          f'{path} not found: config.workdir must be a finished classifier '
          f'run (python main.py --config=configs/resnet.py --workdir=W)'
          + (' from a version that writes config.json' if name == 'config'
             else ''))
    with open(path) as f:
      out.append(json.load(f))
  results, config = out
  return ml_collections.ConfigDict(config), results


def load_classifier(workdir: str, run=None):
  """(config, results, eval graphdef, TrainState) of a finished run; `run`:
  its `read_run(workdir)` if already read."""
  config, results = run or read_run(workdir)
  channels = int(results.get('channels', 1))
  model = steps.create_model(config, channels,
                             len(results.get('class_names', [0, 1])))
  tx = steps.create_optimizer(config)
  _, eval_graphdef, state = steps.init_state(model, tx)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if not os.path.isdir(ckpt_dir):
    raise UserInputError(f'no checkpoint in {ckpt_dir}')
  # Not read_only=True: orbax warns about it on every run; nothing is saved.
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      create=False))
  step = mngr.latest_step()
  if step is None:
    raise UserInputError(f'no checkpoint in {ckpt_dir}')
  if step != int(results['steps']):
    raise UserInputError(
        f'{ckpt_dir}: latest step {step} is not the final step '
        f'{results["steps"]} that results.json was evaluated at')
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state
  mngr.close()
  return config, results, eval_graphdef, state


def _load(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The training preprocessing of one file -> float32 [R, R, 1]."""
  x, _ = preprocess.load_square(path, int(config.data.storage_size))
  x = preprocess.resize_square(x, int(config.data.resolution))
  return transforms.to_float(x)


def _one_line(path: str, e: Exception) -> str:
  msg = str(e).splitlines()[0] if str(e) else type(e).__name__
  return msg.removeprefix(f'{path}: ')


def predict(workdir: str, input_path: str, output: str,
            batch_size: int = 0) -> dict[str, Any]:
  """Writes `output` (CSV, one row per image); returns a summary."""
  if not output:
    raise UserInputError('config.output (the CSV to write) is required')
  run = read_run(workdir)  # a wrong workdir fails before anything is read
  paths = list_images(input_path)
  config, results, eval_graphdef, state = load_classifier(workdir, run)
  channels = int(results.get('channels', 1))
  if channels > 1:
    raise UserInputError(
        f'the classifier in {workdir} reads {channels} channels (DICOM '
        'windows); predict reads PNG/JPEG as one grayscale channel')
  names = results.get('class_names') or ['0', '1']
  threshold = float(results['threshold'])
  n_dev = jax.device_count()
  batch_size = batch_size or int(config.eval_batch_size)
  batch_size = -(-batch_size // n_dev) * n_dev
  mesh = sharding.make_mesh()
  positives = errors = 0
  with files.atomic_open(output, newline='') as f, _progress(len(paths)) as bar:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      images, rows = [], []
      for path in chunk:
        try:
          images.append(_load(path, config))
          rows.append(None)
        except Exception as e:  # pylint: disable=broad-except
          # Any unreadable file (bad bytes, permissions, odd format) is
          # reported in its row; the others are still predicted.
          rows.append(_one_line(path, e))
      probs = iter(steps.predict(state, eval_graphdef, np.stack(images),
                                 batch_size, mesh) if images else [])
      for path, err in zip(chunk, rows):
        if err is not None:
          errors += 1
          writer.writerow([path, '', '', err])
          continue
        p = float(next(probs))
        positives += p >= threshold
        writer.writerow([path, f'{p:.6f}', names[int(p >= threshold)], ''])
      bar.update(len(chunk))
  summary = {'output': output, 'images': len(paths), 'errors': errors,
             'positive': int(positives), 'positive_class': names[1],
             'threshold': threshold}
  print(f'wrote {len(paths)} row(s) to {output}: {positives} predicted '
        f'{names[1]!r} (P >= {threshold:.4f}, the threshold chosen on '
        f'validation), {len(paths) - positives - errors} {names[0]!r}, '
        f'{errors} unreadable')
  return summary


def predict_from_config(config: ml_collections.ConfigDict,
                        workdir: str | None = None) -> dict[str, Any]:
  """`main.py` entry for configs/predict.py (--workdir = config.workdir)."""
  run = _workdir(config.workdir, workdir)
  return predict(run, config.input, config.output,
                 batch_size=int(config.batch_size))


def _workdir(config_workdir: str, flag_workdir: str | None) -> str:
  if (config_workdir and flag_workdir and os.path.abspath(config_workdir)
      != os.path.abspath(flag_workdir)):
    raise UserInputError(
        f'--config.workdir={config_workdir} and --workdir={flag_workdir} '
        'differ: give the classifier workdir once')
  run = config_workdir or flag_workdir
  if not run:
    raise UserInputError('the classifier workdir is required: '
                         '--config.workdir=W (or --workdir=W)')
  return run


def _progress(total: int):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc='predict', unit='img',
                   disable=total < 100 or jax.process_index() != 0,
                   dynamic_ncols=True)
