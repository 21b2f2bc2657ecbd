"""The data command: prepare a dataset, write data_report.md, examples.png.

    python main.py --config=configs/data.py \\
        --config.data.name=head_ct --config.data.dir=DIR --workdir=W

Both files are written atomically (temp file, then rename), after every
check has passed, so a failed run leaves no half-written report.
"""

import collections
import os

import ml_collections
import numpy as np

from input_pipeline import dataset
from input_pipeline import files
from input_pipeline import images
from input_pipeline import transforms
from input_pipeline.errors import UserInputError

_EXAMPLES_PER_CLASS = 8


def _stats(values) -> str:
  v = np.asarray(values)
  return f'{v.min()} / {np.median(v):g} / {v.max()}'


def render(prepared: dataset.PreparedData, data) -> str:
  """The Markdown report of a prepared dataset."""
  names = prepared.class_names
  lab = prepared.labels
  orig = prepared.original
  m = prepared.manifest
  lines = [
      f'# Data report: {prepared.name}', '',
      f'- source: `{data.dir or "(generated)"}`',
      f'- prepared: `{prepared.data_dir}` (fingerprint {prepared.fingerprint})',
      f'- stored: {prepared.storage_size}x{prepared.storage_size}, '
      f'{prepared.channels} channel(s), uint8 (grayscale, aspect kept, '
      f'padded with the border median)',
      f'- images: {len(prepared.ids)}', '',
      '## Classes', '', '| label | class | images |', '|---|---|---|']
  for c, name in enumerate(names):
    lines.append(f'| {c} | {name} | {int((lab == c).sum())} |')
  lines += ['', '## Size before preprocessing', '',
            '| class | width min / median / max | height min / median / max '
            '| modes |', '|---|---|---|---|']
  for c, name in [(-1, 'all')] + list(enumerate(names)):
    sel = np.arange(len(lab)) if c < 0 else np.nonzero(lab == c)[0]
    modes = collections.Counter(orig['mode'][i] for i in sel)
    mode_s = ', '.join(f'{k} {v}' for k, v in sorted(modes.items()))
    lines.append(f'| {name} | {_stats([orig["width"][i] for i in sel])} | '
                 f'{_stats([orig["height"][i] for i in sel])} | {mode_s} |')
  lines += ['', f'## Folds (seed {m["split_seed"]}, {m["num_folds"]} folds, '
            f'val fraction {m["val_fraction"]}, duplicates policy '
            f'{m["duplicates_policy"]!r})', '',
            '| fold | role | ' + ' | '.join(names) + ' | total |',
            '|---|---|' + '---|' * (len(names) + 1)]
  for k in range(m['num_folds']):
    for role in ('train', 'val', 'test'):
      idx = prepared.indices(k, role)
      counts = [int((lab[idx] == c).sum()) for c in range(len(names))]
      lines.append(f'| {k} | {role} | ' + ' | '.join(map(str, counts)) +
                   f' | {len(idx)} |')
  groups = m['duplicate_groups']
  pos = {i: k for k, i in enumerate(prepared.ids)}
  lines += ['', '## Duplicates', '',
            f'Exact pixel duplicates or perceptual-hash distance <= '
            f'{data.hash_threshold} of 256 bits, on the stored images.', '',
            f'{len(groups)} group(s), {sum(map(len, groups))} images.']
  for g in groups:
    classes = sorted({names[lab[pos[i]]] for i in g})
    flag = '  **labels disagree**' if len(classes) > 1 else ''
    lines.append(f'- {", ".join(g)} ({", ".join(classes)}){flag}')
  if groups and m['duplicates_policy'] == 'group':
    lines.append('\nEach group is kept inside one role of every fold.')
  lines += ['', 'Examples: `examples.png` (rows of '
            f'{_EXAMPLES_PER_CLASS} per class, in class order: '
            f'{", ".join(names)}).', '']
  return '\n'.join(lines)


def prepare_and_report(config: ml_collections.ConfigDict,
                       workdir: str | None) -> dataset.PreparedData:
  """Validates and prepares `config.data`; writes the report into workdir."""
  if not workdir:
    raise UserInputError('--workdir is required for the data command')
  prepared = dataset.prepare(config.data, workdir)
  rows = []
  for c in range(len(prepared.class_names)):
    idx = np.nonzero(prepared.labels == c)[0][:_EXAMPLES_PER_CLASS]
    row = [transforms.to_float(prepared.source[i]['image']) for i in idx]
    row += [np.full_like(row[0], -1.0)] * (_EXAMPLES_PER_CLASS - len(row))
    rows += row
  grid = np.stack(rows)
  if grid.shape[-1] not in (1, 3):
    grid = grid[..., :1]
  images.save_grid(grid, os.path.join(workdir, 'examples.png'),
                   ncols=_EXAMPLES_PER_CLASS)
  path = os.path.join(workdir, 'data_report.md')
  files.write_text(path, render(prepared, config.data))
  print(f'Wrote {path} and {os.path.join(workdir, "examples.png")}')
  return prepared
