"""Tests for resnet_jax.vtt: making the test, scoring it, and the page in a
real browser (headless Chromium driven by playwright; skipped, saying so,
where either is missing)."""

import base64
import csv
import io
import json
import os
import re
import shutil

import numpy as np
from PIL import Image
from PIL import PngImagePlugin
import pytest

import input_pipeline_testlib as lib

from input_pipeline import phantom
from input_pipeline.errors import UserInputError
from resnet_jax import vtt
from resnet_jax import vtt_page

_CLASSES = ('hemorrhage', 'normal')
# Chromium flags for a sandboxed machine with no network (see README).
_CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu',
                  '--disable-background-networking',
                  '--disable-component-update', '--disable-sync',
                  '--no-first-run']


_main = lib.run_main


def _folders(base, *, classes=True, per_class=5):
  """R: real phantoms at 48x40 with give-away names and PNG text, one JPEG.
  S: as configs/sample.py writes it (S/<class>/NNNN_NNNNN.png at 32x32 plus
  manifest.json), or flat S/*.png when classes is False."""
  real, synth = base / 'R', base / 'S'
  for label, name in enumerate(_CLASSES):
    r = real / name if classes else real
    s = synth / name if classes else synth
    r.mkdir(parents=True, exist_ok=True)
    s.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      x = phantom.head_ct_phantom(48, label, 0, i)[:, 4:44]
      info = PngImagePlugin.PngInfo()
      info.add_text('Comment', 'REAL-SCAN patient 123')
      if i == 0:
        Image.fromarray(x).save(r / f'real_{name}_{i}.jpg', quality=95)
      else:
        Image.fromarray(x).save(r / f'real_{name}_{i}.png', pnginfo=info)
      y = phantom.head_ct_phantom(32, label, 1, i)
      Image.fromarray(y).save(s / f'0000_{label}{i:04d}.png')
  (synth / 'manifest.json').write_text('{"synthetic": true}')
  (real / '.DS_Store').write_text('junk')
  return str(real), str(synth)


def _page_images(html):
  return {im['id']: Image.open(io.BytesIO(base64.b64decode(
      im['src'].split(',', 1)[1]))) for im in
          vtt_page.extract_data(html)['images']}


def test_fleiss_kappa_hand_computed():
  # Wikipedia's worked example (Fleiss' kappa): 10 subjects, 14 raters.
  counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7]]
  assert vtt.fleiss_kappa(np.array(counts)) == pytest.approx(0.20993, abs=1e-5)
  assert vtt.fleiss_kappa(np.array([[2, 0], [0, 2]])) == pytest.approx(1.0)
  assert np.isnan(vtt.fleiss_kappa(np.array([[3, 0], [3, 0]])))


def test_make_blinds_and_balances(tmp_path):
  real, synth = _folders(tmp_path)
  key = vtt.make_test(real, synth, 8, str(tmp_path / 'W' / 'vtt'), seed=3)
  truths = [im['truth'] for im in key['images']]
  assert truths.count('real') == truths.count('synthetic') == 4
  # The real draw copies the synthetic draw's classes.
  for name in _CLASSES:
    assert (sum(im['class'] == name and im['truth'] == 'real'
                for im in key['images']) ==
            sum(im['class'] == name and im['truth'] == 'synthetic'
                for im in key['images']))
  assert key['classes'] == list(_CLASSES) and key['ask_class']
  assert key['display_size'] == 32  # smallest native size: none upsampled
  html = (tmp_path / 'W' / 'vtt' / 'index.html').read_text()
  # Nothing in the page names a source or its truth.
  for leak in ('real_', '0000_', 'REAL-SCAN', 'manifest', str(tmp_path),
               '"truth"', '"synthetic"', '"real"', 'http://', 'https://'):
    assert leak not in html, leak
  images = _page_images(html)
  assert list(images) == [im['id'] for im in key['images']]
  for im in images.values():
    assert (im.format, im.mode, im.size) == ('PNG', 'L', (32, 32))
    assert 'Comment' not in im.info and not getattr(im, 'text', {})
  assert all(re.fullmatch(r'i[0-9a-f]{6}', i) for i in images)
  # Seeded: the same call gives the same test; another seed another one.
  again = vtt.make_test(real, synth, 8, str(tmp_path / 'W' / 'vtt'), seed=3)
  assert again == key
  other = vtt.make_test(real, synth, 8, str(tmp_path / 'W2' / 'vtt'), seed=4)
  assert other['test_id'] != key['test_id']
  # ...and refuses to replace the key of a different test in the same place.
  with pytest.raises(UserInputError, match='already holds test'):
    vtt.make_test(real, synth, 8, str(tmp_path / 'W' / 'vtt'), seed=4)


def test_make_flat_folders(tmp_path):
  real, synth = _folders(tmp_path, classes=False)
  key = vtt.make_test(real, synth, 6, str(tmp_path / 'vtt'),
                      display_size=40)
  assert key['classes'] == [] and not key['ask_class']
  assert all(im['class'] is None for im in key['images'])
  html = (tmp_path / 'vtt' / 'index.html').read_text()
  assert vtt_page.extract_data(html)['ask_class'] is False
  assert {im.size for im in _page_images(html).values()} == {(40, 40)}


@pytest.mark.parametrize('case,match', [
    ('odd', 'config.num_images=7: must be an even'),
    ('too_many', 'needs 11 synthetic images, found 10 in .*S;'),
    ('no_dir', "config.real_dir='.*nowhere' is not a directory"),
    ('mixed', 'has both images .* and class subfolders'),
    ('unmatched', 'no real class folder'),
    ('empty_class', "class 'empty' has no PNG/JPEG images"),
    ('corrupt', 'cannot decode image'),
])
def test_make_errors(tmp_path, case, match):
  real, synth = _folders(tmp_path)
  n = {'odd': 7, 'too_many': 22}.get(case, 20 if case == 'corrupt' else 4)
  if case == 'no_dir':
    real = str(tmp_path / 'nowhere')
  elif case == 'mixed':
    Image.new('L', (8, 8)).save(os.path.join(synth, 'loose.png'))
  elif case == 'unmatched':
    shutil.rmtree(os.path.join(real, 'normal'))
    n = 20
  elif case == 'empty_class':
    os.mkdir(os.path.join(real, 'empty'))
  elif case == 'corrupt':
    with open(os.path.join(real, 'normal', 'real_normal_1.png'), 'wb') as f:
      f.write(b'not a png')
    n = 20
  with pytest.raises(UserInputError, match=match):
    vtt.make_test(real, synth, n, str(tmp_path / 'vtt'))


def _write_answers(path, rows, columns=vtt_page.CSV_COLUMNS):
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, columns, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  return str(path)


def _answers(key, reader, answer):
  return [{'reader_id': reader, 'image_id': im['id'],
           'answer': answer(im), 'confidence': 5 if answer(im) == im['truth']
           else 2, 'class_answer': im['class'] or '', 'time_ms': 1500,
           'test_id': key['test_id']} for im in key['images']]


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  """A test made through the CLI: (workdir, key, CLI result)."""
  base = tmp_path_factory.mktemp('vtt')
  real, synth = _folders(base)
  workdir = str(base / 'W')
  res = _main('--config=configs/vtt.py', f'--config.real_dir={real}',
              f'--config.synthetic_dir={synth}', '--config.num_images=8',
              f'--workdir={workdir}')
  with open(os.path.join(workdir, 'vtt', 'key.json')) as f:
    return workdir, json.load(f), res


def test_score_two_readers_through_cli(made, tmp_path):
  workdir, key, res = made
  assert 'give readers:' in res.stdout and 'index.html' in res.stdout
  a = _write_answers(tmp_path / 'a.csv',
                     _answers(key, 'expert', lambda im: im['truth']))
  b = _write_answers(tmp_path / 'b.csv',
                     _answers(key, 'naive', lambda im: 'real'))
  _main('--config=configs/vtt.py:score', f'--config.answers={a},{b}',
        f'--workdir={workdir}')
  with open(os.path.join(workdir, 'vtt_report.md')) as f:
    text = f.read()
  row = lambda name: next(l for l in text.splitlines()
                          if l.startswith(f'| {name} |'))
  # 8/8 right: Clopper-Pearson lower bound 0.125^(1/8)... = 0.631.
  assert '| 8/8 | 1.000 [0.631, 1.000] | yes: above chance |' in row('expert')
  assert '| 8/8 | 0.500 [0.157, 0.843] | no |' in row('naive')
  # Sensitivity 0 (no synthetic image spotted), specificity 1.
  assert '0.000 [0.000, 0.602] | 1.000 [0.398, 1.000]' in row('naive')
  assert '| 16 (2 readers) | 0.750 [0.476, 0.927] | no |' in row('pooled')
  # Per image: synthetic [1 real, 1 synthetic] -> P_i 0; real [2, 0] -> 1;
  # P_bar 0.5, P_e 0.75^2 + 0.25^2 = 0.625 -> kappa = -0.125/0.375.
  assert "Fleiss' kappa = -0.333 over the 8 images all 2 readers" in text
  assert '| expert | – | – | – | – | 1.00 (8) |' in text
  assert '| naive | – | 0.00 (4) | – | – | 1.00 (4) |' in text
  grid = Image.open(os.path.join(workdir, 'vtt_fooled.png'))
  assert grid.size == (2 + 2 * 34, 2 + 2 * 34)  # 4 synthetic, 2x2 at 32px
  assert text.count('| 1/2 |') == 4


@pytest.mark.parametrize('case,match', [
    ('unknown_id', r"line 2: unknown image_id 'i999999'"),
    ('missing_column', 'missing column.s. confidence'),
    ('bad_answer', "answer 'maybe' is not 'real' or 'synthetic'"),
    ('bad_confidence', "confidence '7' is not 1-5"),
    ('other_test', 'answers are for test 0123456789ab'),
    ('duplicate', "reader 'r' already answered"),
    ('bad_class', "class_answer 'tumour' is not one of"),
    ('header_only', 'no answers'),
])
def test_score_rejects_bad_answers(made, tmp_path, case, match):
  _, key, _ = made
  rows = _answers(key, 'r', lambda im: 'real')
  columns = vtt_page.CSV_COLUMNS
  if case == 'unknown_id':
    rows[0]['image_id'] = 'i999999'
  elif case == 'missing_column':
    columns = [c for c in columns if c != 'confidence']
  elif case == 'bad_answer':
    rows[3]['answer'] = 'maybe'
  elif case == 'bad_confidence':
    rows[3]['confidence'] = 7
  elif case == 'other_test':
    rows[3]['test_id'] = '0123456789ab'
  elif case == 'duplicate':
    rows.append(rows[0])
  elif case == 'bad_class':
    rows[3]['class_answer'] = 'tumour'
  elif case == 'header_only':
    rows = []
  path = _write_answers(tmp_path / 'answers.csv', rows, columns)
  with pytest.raises(UserInputError, match=match) as e:
    vtt.read_answers([path], key)
  assert str(e.value).startswith(path)


def test_score_cli_error_is_one_line(made, tmp_path):
  workdir, key, _ = made
  rows = _answers(key, 'r', lambda im: 'real')
  rows[2]['image_id'] = 'nope'
  path = _write_answers(tmp_path / 'bad.csv', rows)
  res = _main('--config=configs/vtt.py:score', f'--config.answers={path}',
              f'--workdir={workdir}', check=False)
  assert res.returncode == 2
  errors = [l for l in res.stderr.splitlines() if l.startswith('error:')]
  assert errors == [(f"error: {path} line 4: unknown image_id 'nope' (not "
                     f"in test {key['test_id']})")]


# ------------------------------------------------------------- browser ---


def _chromium():
  """(playwright.sync_api, executable) or a skip saying what is missing."""
  try:
    from playwright import sync_api  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip('playwright is not installed (pip install -e ".[test]")')
  exe = os.environ.get('VTT_CHROMIUM') or next(
      (p for p in (shutil.which('chromium'), shutil.which('chromium-browser'),
                   '/usr/bin/chromium') if p and os.path.exists(p)), None)
  if not exe:
    pytest.skip('no Chromium installed (Debian: apt-get install -y chromium; '
                'or set VTT_CHROMIUM to a Chromium/Chrome binary)')
  return sync_api, exe


def _take_test(expect, page, url, reader, answer_for, key, save_to,
               reload_at=None):
  """Answers every image with the keyboard; saves the downloaded CSV."""
  by_id = {im['id']: im for im in key['images']}
  page.goto(url)
  page.keyboard.type(reader)  # the reader id box has focus
  page.keyboard.press('Enter')
  # What a screen reader announces: controls by name, not by key hint.
  for role, name in (('button', 'Real'), ('button', 'Synthetic'),
                     ('radio', 'Confidence 3'), ('button', 'Next'),
                     ('img', 'Image 1 of')):
    expect(page.get_by_role(role, name=name)).to_have_count(1)
  n = len(key['images'])
  for i in range(n):
    if i == reload_at:
      page.reload()
      expect(page.locator('#count')).to_have_text(f'{i + 1} / {n}')
      assert float(page.locator('#progress').get_attribute('value')) == (
          pytest.approx(i / n))
      expect(page.locator('#status')).to_contain_text(
          f'Welcome back, {reader}. Image {i + 1} of {n}')
    im = by_id[page.locator('#img').get_attribute('data-id')]
    assert im == key['images'][i]  # the key's order is the page's
    page.keyboard.press('Enter')  # too early: nothing chosen yet
    assert page.locator('#count').inner_text() == f'{i + 1} / {n}'
    a = answer_for(im)
    page.keyboard.press(a[0].upper())
    assert page.locator(f'#ans-{a}').get_attribute('aria-pressed') == 'true'
    expect(page.locator('#status')).to_have_text(
        f'{a.capitalize()} selected.')
    page.keyboard.press('4')
    if im['class'] is not None:
      page.keyboard.press(vtt_page.CLASS_KEYS[key['classes'].index(
          im['class'])])
    page.keyboard.press('Enter')
  assert page.locator('#done').is_visible()
  with page.expect_download() as info:
    page.keyboard.press('d')
  assert info.value.suggested_filename == f'vtt_{key["test_id"]}_' + (
      re.sub(r'[^A-Za-z0-9_-]+', '_', reader) + '.csv')
  info.value.save_as(save_to)
  with open(save_to, newline='') as f:
    return list(csv.DictReader(f))


def test_browser_keyboard_reload_download_score(made, tmp_path):
  sync_api, exe = _chromium()
  workdir, key, _ = made
  url = 'file://' + os.path.join(workdir, 'vtt', 'index.html')
  # A second test (another seed) must not see the first one's progress.
  other = str(tmp_path / 'other')
  shutil.copytree(os.path.join(workdir, 'vtt'), os.path.join(other, 'vtt'))
  page_b = tmp_path / 'other' / 'vtt' / 'index.html'
  page_b.write_text(page_b.read_text().replace(key['test_id'],
                                               'feedfacecafe'))
  paths = [str(tmp_path / 'expert.csv'), str(tmp_path / 'naive.csv')]
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=exe, args=_CHROMIUM_ARGS)
    try:
      ctx = browser.new_context(accept_downloads=True)
      page = ctx.new_page()
      errors = []
      page.on('pageerror', lambda e: errors.append(str(e)))
      expert = _take_test(sync_api.expect, page, url, 'Dr. A, "expert"',
                          lambda im: im['truth'], key, paths[0],
                          reload_at=len(key['images']) // 2)
      page.goto(f'file://{page_b}')
      assert page.locator('#start').is_visible()
      assert not page.locator('#quiz').is_visible()
      page.goto(url)  # back to the finished test: still finished
      assert page.locator('#done').is_visible()
      ctx.close()
      ctx = browser.new_context(accept_downloads=True)
      naive = _take_test(sync_api.expect, ctx.new_page(), url, 'naive',
                         lambda im: 'real', key, paths[1])
      assert not errors, errors
    finally:
      browser.close()
  assert len(expert) == len(naive) == len(key['images'])
  assert list(expert[0]) == list(vtt_page.CSV_COLUMNS)
  assert {r['reader_id'] for r in expert} == {'Dr. A, "expert"'}
  assert all(r['test_id'] == key['test_id'] and r['confidence'] == '4'
             and int(r['time_ms']) >= 0 for r in expert)
  assert [r['class_answer'] for r in expert] == [
      im['class'] for im in key['images']]
  res = _main('--config=configs/vtt.py:score',
              f'--config.answers={",".join(paths)}', f'--workdir={workdir}')
  rows = {l.split('|')[1].strip(): l for l in res.stdout.splitlines()
          if l.startswith('| ') and '/8 |' in l}
  assert '| 1.000 [0.631, 1.000] | yes: above chance |' in rows[
      'Dr. A, "expert"']
  assert '| 0.500 [0.157, 0.843] | no |' in rows['naive']
