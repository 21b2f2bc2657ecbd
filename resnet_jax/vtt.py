"""Visual Turing test: a blinded browser test of real vs synthetic images.

    python main.py --config=configs/vtt.py --config.real_dir=R \
        --config.synthetic_dir=S --config.num_images=N --workdir=W
    python main.py --config=configs/vtt.py:score \
        --config.answers=A.csv[,B.csv...] --workdir=W

`make_test` draws N/2 real and N/2 synthetic images with a seed (matching
the synthetic draw's classes when both folders have class subfolders, so
the class cannot give the answer away), puts every image through the same
grayscale / pad-to-square / resize (`input_pipeline.preprocess`) to one
display size, re-encodes it as a bare PNG from its pixels (no file name,
size or metadata survives), gives it a random opaque id and shuffles the
order. It writes `W/vtt/index.html` (self-contained, `vtt_page`) for the
readers and `W/vtt/key.json` (the answers) to keep apart.

`score` reads readers' CSVs against the key and writes `W/vtt_report.md`:
per reader and pooled accuracy with a Clopper-Pearson 95 % interval,
sensitivity / specificity for spotting synthetic images, accuracy by
confidence, Fleiss' kappa between readers, and `W/vtt_fooled.png`, the
synthetic images most often taken for real.
"""

import base64
import collections
import csv
import hashlib
import io
import json
import math
import os
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
from scipy import stats as sps

from input_pipeline import files
from input_pipeline import images as images_lib
from input_pipeline import preprocess
from input_pipeline.errors import UserInputError
from input_pipeline import sources
from resnet_jax import vtt_page

REAL, SYNTHETIC = 'real', 'synthetic'
# Used when display_size is 0: the smallest native size, but no larger
# (a page of 100 images at 1024^2 would weigh ~100 MB).
MAX_AUTO_DISPLAY = 512
REQUIRED_COLUMNS = ('reader_id', 'image_id', 'answer', 'confidence')


# ---------------------------------------------------------------- make ---


def _pick(paths: list, n: int, rng: np.random.Generator, what: str,
          where: str) -> list:
  if n > len(paths):
    raise UserInputError(
        f'config.num_images: needs {n} {what} images, found {len(paths)} in '
        f'{where}; lower config.num_images')
  return [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]


def draw(real: dict[str | None, list[str]],
         synthetic: dict[str | None, list[str]], num_images: int,
         rng: np.random.Generator, real_dir: str = 'R',
         synthetic_dir: str = 'S') -> list[tuple[str, str, str | None]]:
  """num_images/2 of each -> [(path, truth, class or None)], unshuffled.

  When both sides have classes, the real draw copies the synthetic draw's
  count per class, so the class mix of real and synthetic images is the
  same (a reader who knows the GAN made only haemorrhages cannot use it).
  """
  if num_images < 2 or num_images % 2:
    raise UserInputError(
        f'config.num_images={num_images}: must be an even number >= 2 '
        '(half real, half synthetic)')
  half = num_images // 2
  pool = [(p, c) for c, paths in synthetic.items() for p in paths]
  chosen = _pick(list(range(len(pool))), half, rng, SYNTHETIC, synthetic_dir)
  out = [(pool[i][0], SYNTHETIC, pool[i][1]) for i in chosen]
  if None not in real and None not in synthetic:
    counts = collections.Counter(c for _, _, c in out)
    for c in sorted(counts):
      if c not in real:
        raise UserInputError(
            f'{os.path.join(synthetic_dir, c)}: no real class folder '
            f'{os.path.join(real_dir, c)} to match it')
      out += [(p, REAL, c) for p in _pick(
          real[c], counts[c], rng, REAL, os.path.join(real_dir, c))]
    unused = sorted(set(real) - set(counts))
    if unused:
      logging.info('Real classes without synthetic images, not drawn: %s',
                   unused)
  else:
    if None not in synthetic:
      logging.warning('%s is flat (no class folders): real images are drawn '
                      'from every class, the class mix may differ.', real_dir)
    pool = [(p, c) for c, paths in real.items() for p in paths]
    chosen = _pick(list(range(len(pool))), half, rng, REAL, real_dir)
    out += [(pool[i][0], REAL, pool[i][1]) for i in chosen]
  return out


def _native_size(path: str) -> int:
  try:
    with Image.open(path) as img:
      return max(img.size)
  except Exception:  # pylint: disable=broad-except
    preprocess.open_image(path)  # raises UserInputError naming the file
    raise


def _png(x: np.ndarray) -> bytes:
  """A bare PNG of the pixels: no text chunks, no source metadata."""
  buf = io.BytesIO()
  Image.fromarray(x, 'L').save(buf, format='PNG')
  return buf.getvalue()


def _warn_giveaways(drawn, sizes, display_size) -> None:
  """Logs differences the pixels may still carry (resampling, JPEG)."""
  for truth in (REAL, SYNTHETIC):
    mine = [i for i, d in enumerate(drawn) if d[1] == truth]
    up = sum(sizes[i] < display_size for i in mine)
    if up:
      logging.warning('%d of %d %s images are smaller than display_size=%d '
                      'and upsampled (blurrier than the rest).', up,
                      len(mine), truth, display_size)
  jpeg = {t: any(d[0].lower().endswith(('.jpg', '.jpeg')) for d in drawn
                 if d[1] == t) for t in (REAL, SYNTHETIC)}
  if jpeg[REAL] != jpeg[SYNTHETIC]:
    logging.warning('Only the %s images include JPEGs: their compression '
                    'artefacts may give the answer away.',
                    REAL if jpeg[REAL] else SYNTHETIC)


def make_test(real_dir: str, synthetic_dir: str, num_images: int,
              outdir: str, *, seed: int = 0, display_size: int = 0,
              ask_class: bool = True) -> dict[str, Any]:
  """Writes outdir/index.html and outdir/key.json; returns the key."""
  if display_size < 0:
    raise UserInputError(f'config.display_size={display_size}: must be >= 0')
  real = sources.list_image_folder(real_dir, 'real_dir')
  synthetic = sources.list_image_folder(synthetic_dir, 'synthetic_dir')
  rng = np.random.default_rng(seed)
  drawn = draw(real, synthetic, num_images, rng, real_dir, synthetic_dir)
  drawn = [drawn[i] for i in rng.permutation(len(drawn))]
  sizes = [_native_size(p) for p, _, _ in drawn]
  size = display_size or min(min(sizes), MAX_AUTO_DISPLAY)
  _warn_giveaways(drawn, sizes, size)
  # Opaque ids drawn after the shuffle: nothing about them follows the truth.
  ids = [f'i{v:06x}' for v in rng.choice(16**6, len(drawn), replace=False)]
  pngs = [_png(preprocess.to_square(preprocess.to_gray(
      preprocess.open_image(p)), size)[..., 0]) for p, _, _ in drawn]
  digest = hashlib.sha256(f'{seed}:{size}'.encode())
  for i, png in zip(ids, pngs):
    digest.update(i.encode() + png)
  test_id = digest.hexdigest()[:12]
  classes = sorted({c for _, _, c in drawn if c is not None})
  key = {
      'test_id': test_id, 'seed': seed, 'num_images': len(drawn),
      'display_size': size, 'real_dir': os.path.abspath(real_dir),
      'synthetic_dir': os.path.abspath(synthetic_dir), 'classes': classes,
      'ask_class': bool(ask_class and classes),
      'images': [{'id': i, 'truth': t, 'class': c, 'source':
                  os.path.abspath(p)} for i, (p, t, c) in zip(ids, drawn)],
  }
  key_path = os.path.join(outdir, 'key.json')
  if os.path.isfile(key_path):
    with open(key_path) as f:
      old = json.load(f).get('test_id')
    if old != test_id:
      raise UserInputError(
          f'{key_path} already holds test {old} (other images or seed); '
          'readers\' answers need its key: use another --workdir or remove '
          f'{outdir}')
  page = {'test_id': test_id, 'classes': classes, 'ask_class': key['ask_class'],
          'images': [{'id': i, 'src': 'data:image/png;base64,'
                      + base64.b64encode(png).decode()}
                     for i, png in zip(ids, pngs)]}
  files.write_text(os.path.join(outdir, 'index.html'), vtt_page.render(page))
  files.write_json(key_path, key)
  return key


def _need_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UserInputError('--workdir is required (the test lives in W/vtt/)')
  return workdir


def make_from_config(config: ml_collections.ConfigDict,
                     workdir: str | None) -> dict[str, Any]:
  """`main.py` entry for config.task='vtt'."""
  outdir = os.path.join(_need_workdir(workdir), 'vtt')
  key = make_test(config.real_dir, config.synthetic_dir, config.num_images,
                  outdir, seed=config.seed, display_size=config.display_size,
                  ask_class=config.ask_class)
  print(f'Visual Turing test {key["test_id"]}: {key["num_images"]} images '
        f'at {key["display_size"]}x{key["display_size"]}'
        + (f', classes {key["classes"]}' if key['ask_class'] else '') + '\n'
        f'  give readers: {os.path.join(outdir, "index.html")}\n'
        f'  keep apart:   {os.path.join(outdir, "key.json")}')
  return key


# --------------------------------------------------------------- score ---


def fleiss_kappa(counts: np.ndarray) -> float:
  """Fleiss' kappa of [subjects, categories] rating counts (same raters
  per subject): (P_bar - P_e) / (1 - P_e) with P_i = (sum_j n_ij^2 - n) /
  (n (n - 1)) and P_e = sum_j p_j^2. NaN when every rating is one category.
  """
  counts = np.asarray(counts, np.float64)
  n = counts.sum(1)
  if len(counts) == 0 or np.any(n != n[0]) or n[0] < 2:
    raise ValueError('need >= 1 subject, each rated by the same n >= 2')
  n = n[0]
  p_i = ((counts**2).sum(1) - n) / (n * (n - 1))
  p_j = counts.sum(0) / counts.sum()
  p_e = float((p_j**2).sum())
  if p_e >= 1.0:
    return float('nan')
  return (float(p_i.mean()) - p_e) / (1.0 - p_e)


def load_key(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, 'vtt', 'key.json')
  if not os.path.isfile(path):
    raise UserInputError(f'{path} not found: make the test first '
                         '(configs/vtt.py) with this --workdir')
  with open(path) as f:
    return json.load(f)


def read_answers(paths: Sequence[str], key: dict[str, Any]) -> list[dict]:
  """Validated rows from readers' CSVs; UserInputError naming the file."""
  ids = {im['id'] for im in key['images']}
  rows, seen = [], {}
  for path in paths:
    if not os.path.isfile(path):
      raise UserInputError(f'{path}: answers file not found')
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      missing = [c for c in REQUIRED_COLUMNS
                 if c not in (reader.fieldnames or [])]
      if missing:
        raise UserInputError(f'{path}: missing column(s) {", ".join(missing)}'
                             f' (needs {", ".join(REQUIRED_COLUMNS)})')
      n = 0
      for line, r in enumerate(reader, start=2):
        n += 1
        where = f'{path} line {line}'
        test = (r.get('test_id') or '').strip()
        if test and test != key['test_id']:
          raise UserInputError(f'{where}: answers are for test {test}, the '
                               f'key is for test {key["test_id"]}')
        image = (r['image_id'] or '').strip()
        if image not in ids:
          raise UserInputError(f'{where}: unknown image_id {image!r} (not in '
                               f'test {key["test_id"]})')
        answer = (r['answer'] or '').strip().lower()
        if answer not in (REAL, SYNTHETIC):
          raise UserInputError(f'{where}: answer {r["answer"]!r} is not '
                               "'real' or 'synthetic'")
        conf = (r['confidence'] or '').strip()
        if conf not in ('1', '2', '3', '4', '5'):
          raise UserInputError(
              f'{where}: confidence {r["confidence"]!r} is not 1-5')
        cls = (r.get('class_answer') or '').strip()
        if cls and cls not in key['classes']:
          raise UserInputError(f'{where}: class_answer {cls!r} is not one of '
                               f'{key["classes"]}')
        reader_id = ((r['reader_id'] or '').strip()
                     or os.path.splitext(os.path.basename(path))[0])
        if (reader_id, image) in seen:
          raise UserInputError(f'{where}: reader {reader_id!r} already '
                               f'answered {image} ({seen[reader_id, image]})')
        seen[reader_id, image] = where
        time_ms = (r.get('time_ms') or '').strip()
        rows.append({'reader': reader_id, 'image': image, 'answer': answer,
                     'confidence': int(conf), 'class_answer': cls,
                     'time_ms': float(time_ms) if time_ms else None})
      if not n:
        raise UserInputError(f'{path}: no answers (header only)')
  return rows


def proportion(k: int, n: int) -> dict[str, float]:
  """k/n with its 95 % Clopper-Pearson interval (NaN when n is 0)."""
  if not n:
    return {'k': 0, 'n': 0, **dict.fromkeys(('value', 'lo', 'hi', 'p'),
                                            float('nan'))}
  test = sps.binomtest(k, n, 0.5)
  ci = test.proportion_ci(0.95, method='exact')
  return {'k': k, 'n': n, 'value': k / n, 'lo': float(ci.low),
          'hi': float(ci.high), 'p': float(test.pvalue)}


def summarize(rows: Sequence[dict], key: dict[str, Any]) -> dict[str, Any]:
  """Accuracy (CI), sensitivity, specificity, by-confidence, class accuracy."""
  truth = {im['id']: im for im in key['images']}
  right = [r['answer'] == truth[r['image']]['truth'] for r in rows]
  synth = [r['answer'] == SYNTHETIC for r in rows
           if truth[r['image']]['truth'] == SYNTHETIC]
  real = [r['answer'] == REAL for r in rows
          if truth[r['image']]['truth'] == REAL]
  by_conf = {}
  for c in range(1, 6):
    ok = [g for g, r in zip(right, rows) if r['confidence'] == c]
    by_conf[c] = proportion(sum(ok), len(ok))
  cls = [r['class_answer'] == truth[r['image']]['class'] for r in rows
         if r['class_answer'] and truth[r['image']]['class'] is not None]
  times = [r['time_ms'] for r in rows if r['time_ms'] is not None]
  return {'accuracy': proportion(sum(right), len(right)),
          'sensitivity': proportion(sum(synth), len(synth)),
          'specificity': proportion(sum(real), len(real)),
          'by_confidence': by_conf,
          'class_accuracy': proportion(sum(cls), len(cls)),
          'median_time_ms': float(np.median(times)) if times else None}


def agreement(rows: Sequence[dict]) -> dict[str, Any] | None:
  """Fleiss' kappa over the images every reader answered (>= 2 readers)."""
  readers = sorted({r['reader'] for r in rows})
  if len(readers) < 2:
    return None
  votes = collections.defaultdict(dict)
  for r in rows:
    votes[r['image']][r['reader']] = r['answer']
  common = sorted(i for i, v in votes.items() if len(v) == len(readers))
  if not common:
    return {'readers': len(readers), 'images': 0, 'kappa': float('nan')}
  counts = [[sum(a == c for a in votes[i].values()) for c in (REAL, SYNTHETIC)]
            for i in common]
  return {'readers': len(readers), 'images': len(common),
          'kappa': fleiss_kappa(np.array(counts))}


def fooled(rows: Sequence[dict], key: dict[str, Any],
           limit: int) -> list[dict[str, Any]]:
  """Synthetic images taken for real at least once, most often first."""
  truth = {im['id']: im for im in key['images']}
  tally = collections.defaultdict(lambda: [0, 0])
  for r in rows:
    if truth[r['image']]['truth'] == SYNTHETIC:
      tally[r['image']][0] += r['answer'] == REAL
      tally[r['image']][1] += 1
  out = [{'id': i, 'real': k, 'n': n, 'class': truth[i]['class']}
         for i, (k, n) in tally.items() if k]
  out.sort(key=lambda d: (-d['real'] / d['n'], -d['real'], d['id']))
  return out[:limit]


def _save_grid(html_path: str, ids: Sequence[str], path: str) -> None:
  with open(html_path) as f:
    srcs = {im['id']: im['src'] for im in vtt_page.extract_data(f.read())
            ['images']}
  imgs = []
  for i in ids:
    data = base64.b64decode(srcs[i].split(',', 1)[1])
    a = np.asarray(Image.open(io.BytesIO(data)).convert('L'), np.float32)
    imgs.append(a[..., None] / 127.5 - 1.0)
  images_lib.save_png(images_lib.make_grid(np.stack(imgs)), path)


def _ci(p: dict[str, float]) -> str:
  if not p['n']:
    return '–'
  return f'{p["value"]:.3f} [{p["lo"]:.3f}, {p["hi"]:.3f}]'


def _verdict(p: dict[str, float]) -> str:
  if not p['n']:
    return '–'
  if p['lo'] > 0.5:
    return 'yes: above chance'
  if p['hi'] < 0.5:
    return 'yes: below chance'
  return 'no'


def _label(reader: str | None) -> str:
  """A reader id as a table cell; None is the pooled row."""
  if reader is None:
    return 'pooled'
  reader = reader.replace('|', '\\|').replace('\n', ' ')
  return f'`{reader}`' if reader == 'pooled' else reader


def report(key: dict[str, Any], paths: Sequence[str], rows: Sequence[dict],
           summaries: dict[str | None, dict], kappa: dict | None,
           worst: Sequence[dict], grid: str | None) -> str:
  """The markdown report."""
  truths = collections.Counter(im['truth'] for im in key['images'])
  out = [
      '# Visual Turing test', '',
      f'Test `{key["test_id"]}`: {key["num_images"]} images '
      f'({truths[REAL]} real, {truths[SYNTHETIC]} synthetic) at '
      f'{key["display_size"]}×{key["display_size"]}; {len(rows)} answers '
      f'from {len(summaries) - 1} reader(s) in '
      + ', '.join(f'`{p}`' for p in paths) + '.', '',
      '## Telling real from synthetic', '',
      ('Accuracy with its 95 % Clopper-Pearson interval and two-sided '
       'binomial p against 0.5 (guessing). Sensitivity: synthetic images '
       'called synthetic; specificity: real images called real. The pooled '
       'row treats every answer as independent, which readers are not.'), '',
      ('| reader | answered | accuracy [95 % CI] | excludes 0.5 | p | '
       'sensitivity [95 % CI] | specificity [95 % CI] | class accuracy | '
       'median time (s) |'),
      '|---|---|---|---|---|---|---|---|---|']
  for name, s in summaries.items():
    a, t = s['accuracy'], s['median_time_ms']
    answered = (f'{a["n"]} ({len(summaries) - 1} readers)' if name is None
                else f'{a["n"]}/{key["num_images"]}')
    out.append(
        f'| {_label(name)} | {answered} | {_ci(a)} | '
        f'{_verdict(a)} | {a["p"]:.3g} | {_ci(s["sensitivity"])} | '
        f'{_ci(s["specificity"])} | '
        + (f'{s["class_accuracy"]["value"]:.3f} ({s["class_accuracy"]["n"]})'
           if s['class_accuracy']['n'] else '–') + ' | '
        + (f'{t / 1000:.1f}' if t is not None else '–') + ' |')
  out += ['', '## Accuracy by confidence', '',
          'Accuracy (answers) at each confidence, 1 = a guess, 5 = certain.',
          '', '| reader | 1 | 2 | 3 | 4 | 5 |', '|---|---|---|---|---|---|']
  for name, s in summaries.items():
    out.append(f'| {_label(name)} | ' + ' | '.join(
        f'{p["value"]:.2f} ({p["n"]})' if p['n'] else '–'
        for p in s['by_confidence'].values()) + ' |')
  out += ['', '## Agreement between readers', '']
  if kappa is None:
    out.append('One reader: no agreement to measure.')
  elif not kappa['images']:
    out.append(f'No image was answered by all {kappa["readers"]} readers.')
  else:
    k = kappa['kappa']
    out.append("Fleiss' kappa is undefined: every answer was the same."
               if math.isnan(k) else f"Fleiss' kappa = {k:.3f} over the "
               f'{kappa["images"]} images all {kappa["readers"]} readers '
               'answered.')
  out += ['', '## Synthetic images most often taken for real', '']
  if not worst:
    out.append('No synthetic image was taken for real.')
  else:
    out += [f'![synthetic images taken for real]({grid})', '',
            'Left to right, top to bottom:', '',
            '| # | image | taken for real | class |', '|---|---|---|---|']
    out += [f'| {n + 1} | `{d["id"]}` | {d["real"]}/{d["n"]} | '
            f'{d["class"] if d["class"] is not None else "–"} |'
            for n, d in enumerate(worst)]
  return '\n'.join(out) + '\n'


def score(answer_paths: Sequence[str], workdir: str,
          grid_size: int = 16) -> dict[str, Any]:
  """Scores readers' CSVs; writes W/vtt_report.md and W/vtt_fooled.png."""
  key = load_key(workdir)
  rows = read_answers(answer_paths, key)
  readers = list(dict.fromkeys(r['reader'] for r in rows))
  summaries = {name: summarize([r for r in rows if r['reader'] == name], key)
               for name in readers}
  summaries[None] = summarize(rows, key)  # pooled
  kappa = agreement(rows)
  worst = fooled(rows, key, grid_size)
  grid = None
  if worst:
    grid = 'vtt_fooled.png'
    _save_grid(os.path.join(workdir, 'vtt', 'index.html'),
               [d['id'] for d in worst], os.path.join(workdir, grid))
  text = report(key, answer_paths, rows, summaries, kappa, worst, grid)
  files.write_text(os.path.join(workdir, 'vtt_report.md'), text)
  return {'summaries': summaries, 'kappa': kappa, 'fooled': worst,
          'report': text}


def score_from_config(config: ml_collections.ConfigDict,
                      workdir: str | None) -> dict[str, Any]:
  """`main.py` entry for config.task='vtt_score'."""
  workdir = _need_workdir(workdir)
  paths = [p.strip() for p in str(config.answers).split(',') if p.strip()]
  if not paths:
    raise UserInputError('config.answers: give the readers\' CSV files, '
                         'comma-separated (--config.answers=A.csv,B.csv)')
  out = score(paths, workdir, config.grid_size)
  print(out['report'])
  print(f'Wrote {os.path.join(workdir, "vtt_report.md")}')
  return out
