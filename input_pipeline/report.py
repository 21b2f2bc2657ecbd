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
from input_pipeline.errors import UserInputError

_EXAMPLES_PER_CLASS = 8


def _stats(values) -> str:
  v = np.asarray(values)
  return f'{v.min()} / {np.median(v):g} / {v.max()}'


def _patient_summary(m: dict) -> list[str]:
  if not m.get('patients'):
    return []
  return [f'- patients: {len(set(m["patients"].values()))} (volume slices; '
          f'every patient in one role of every fold)']


def _patient_lines(prepared: dataset.PreparedData) -> list[str]:
  """Volume sources: patients and slices per class, fold and role."""
  m = prepared.manifest
  if not m.get('patients'):
    return []
  names, lab = prepared.class_names, prepared.labels
  patient = np.array([m['patients'][i] for i in prepared.ids])

  def cells(idx):
    out = [f'{int((lab[idx] == c).sum())} '
           f'({len(set(patient[idx][lab[idx] == c]))})'
           for c in range(len(names))]
    return out + [f'{len(idx)} ({len(set(patient[idx]))})']

  lines = ['', '## Patients', '',
           'Slices (patients) per class; a patient counts in every class '
           'it has a slice of.', '',
           '| fold | role | ' + ' | '.join(names) + ' | total |',
           '|---|---|' + '---|' * (len(names) + 1),
           '| all | all | ' + ' | '.join(cells(np.arange(len(lab)))) + ' |']
  for k in range(m['num_folds']):
    for role in ('train', 'val', 'test'):
      lines.append(f'| {k} | {role} | ' +
                   ' | '.join(cells(prepared.indices(k, role))) + ' |')
  across = [g for g in m['duplicate_groups']
            if len({m['patients'][i] for i in g}) > 1]
  lines += ['', f'{len(across)} duplicate group(s) span two or more '
            f'patients (each joins its patients into one split unit).']
  return lines


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
      f'- images: {len(prepared.ids)}', *_patient_summary(m), '',
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
  lines += _patient_lines(prepared)
  groups = m['duplicate_groups']
  pos = {i: k for k, i in enumerate(prepared.ids)}
  lines += ['', '## Duplicates', '',
            f'Exact pixel duplicates or perceptual-hash distance <= '
            f'{data.hash_threshold} of 256 bits, on a fixed 256-px rendering of '
            'the original images (whatever data.storage_size is).', '',
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


def _fit(draw, font, text: str, width: float) -> str:
  """`text`, or its tail after '..', whatever fits in `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while len(text) > 1 and draw.textlength('..' + text, font=font) > width:
    text = text[1:]
  return '..' + text


def write_examples(prepared: dataset.PreparedData, path: str,
                   per_class: int = _EXAMPLES_PER_CLASS) -> None:
  """examples.png: a row of stored images per class, the class on the left
  and each image's id (its file name) under it.

  Small stored images are enlarged (nearest neighbour, whole factors) to at
  least 96 px, so that captions fit and pixels stay visible.
  """
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from PIL import ImageDraw
  from PIL import ImageFont
  s, c = prepared.storage_size, prepared.channels
  tile = s * max(1, -(-96 // s))
  pad, caption_h = 4, 14
  font = ImageFont.load_default(size=11)
  labels = [f'{name} ({k})' for k, name in enumerate(prepared.class_names)]
  measure = ImageDraw.Draw(Image.new('L', (1, 1)))
  label_w = int(max(measure.textlength(t, font=font) for t in labels)) + (
      2 * pad)
  mode = 'RGB' if c == 3 else 'L'
  canvas = Image.new(mode, (label_w + per_class * (tile + pad) + pad,
                            pad + len(labels) * (tile + caption_h + pad)),
                     'dimgray')  # CT backgrounds are black: tiles stand out
  draw = ImageDraw.Draw(canvas)
  for row, text in enumerate(labels):
    y = pad + row * (tile + caption_h + pad)
    draw.text((pad, y + tile // 2), text, fill='white', font=font,
              anchor='lm')
    for k, i in enumerate(
        np.nonzero(prepared.labels == row)[0][:per_class]):
      x = label_w + k * (tile + pad)
      image = prepared.source[i]['image']
      image = image if c == 3 else image[..., 0]
      canvas.paste(Image.fromarray(image).resize((tile, tile),
                                                 Image.NEAREST), (x, y))
      caption = _fit(draw, font, prepared.ids[i], tile)
      draw.text((x + tile // 2, y + tile + 1), caption, fill='white',
                font=font, anchor='mt')
  images.save_png(np.asarray(canvas), path)


def prepare_and_report(config: ml_collections.ConfigDict,
                       workdir: str | None) -> dataset.PreparedData:
  """Validates and prepares `config.data`; writes the report into workdir."""
  if not workdir:
    raise UserInputError('--workdir is required for the data command')
  prepared = dataset.prepare(config.data, workdir)
  write_examples(prepared, os.path.join(workdir, 'examples.png'))
  path = os.path.join(workdir, 'data_report.md')
  files.write_text(path, render(prepared, config.data))
  print(f'Wrote {path} and {os.path.join(workdir, "examples.png")}')
  return prepared
