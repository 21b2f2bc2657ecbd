"""A bad-input corpus, built here, each case run through main.py.

Every case is a folder, file or command line a user could bring. Bad input
must end with exactly one `error: ...` line naming the file or config key
and a non-zero exit (no traceback); valid but messy input must be handled
(exit 0, and the check says how). Each case runs `main.py` in its own
subprocess with the cheapest job that reads that input (the data command,
or a GAN / classifier / sampler config that must refuse before training);
the cases run in parallel and the table of outcomes is printed
(`pytest -s tests/bad_input_test.py`). The messy valid folder is one run
with one row per thing it checks.
"""

import concurrent.futures
import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from typing import Callable

import input_pipeline_testlib as lib
import numpy as np
from PIL import Image
import pytest

from configs import resnet as resnet_config
from input_pipeline import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SMALL = ['--config.data.storage_size=32', '--config.data.num_folds=2',
          '--config.data.val_fraction=0.25']


@dataclasses.dataclass
class Case:
  what: str  # the input, in words
  args: list[str]  # main.py flags
  # Bad input: a string the one error line must contain (a path or key).
  needle: str | None = None
  # Valid input: (row label, check(result, workdir)) pairs; each raises.
  checks: list[tuple[str, Callable]] = dataclasses.field(
      default_factory=list)
  hold_lock: str = ''  # a workdir this test process locks meanwhile
  result: subprocess.CompletedProcess | None = None
  workdir: str = ''
  seconds: float = 0.0


# ---------------------------------------------------------------- files


def _png(path, x):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(x).save(path)
  return str(path)


def _image_folder(root, classes=('a', 'b'), n=4):
  for c, name in enumerate(classes):
    for i in range(n):
      _png(os.path.join(root, name, f'img{i}.png'),
           lib.phantom_image(c % 2, 10 * c + i, size=48))
  return str(root)


def _bomb_png(path):
  """A PNG whose header claims 30000 x 30000 pixels (Pillow's bomb check)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  ihdr = struct.pack('>IIBBBBB', 30000, 30000, 8, 0, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) +
            chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))
  return str(path)


def _messy_folder(root):
  """Valid, as real folders come: quirky names, every pixel format."""
  g = lambda k, size=48: lib.phantom_image(k % 2, 50 + k, size=size)
  yes, no = os.path.join(root, 'yes'), os.path.join(root, 'no')
  _png(os.path.join(yes, 'Y92.png'), g(1))
  os.makedirs(yes, exist_ok=True)
  Image.fromarray(g(3)).convert('RGB').save(os.path.join(yes, 'Y92.jpg'))
  _png(os.path.join(yes, 'UPPER.PNG'), g(5))
  _png(os.path.join(yes, 'series 1', 'deeper', 'n1.png'), g(7))
  for junk in ('.DS_Store', 'Thumbs.db', '._Y92.png', 'desktop.ini'):
    with open(os.path.join(yes, junk), 'wb') as f:
      f.write(b'\0junk')
  _png(os.path.join(yes, '.hidden', 'h.png'), g(9))
  os.makedirs(os.path.join(root, '__MACOSX', 'yes'))
  with open(os.path.join(root, '__MACOSX', 'yes', '._Y92.png'), 'wb') as f:
    f.write(b'junk')
  os.makedirs(no)
  with open(os.path.join(no, 'notes.txt'), 'w') as f:
    f.write('scanner notes')
  Image.fromarray(g(0).astype(np.uint16) * 257).save(
      os.path.join(no, 'sixteen.png'))
  Image.fromarray(g(2)).convert('P').save(os.path.join(no, 'palette.png'))
  Image.fromarray(g(4)).convert('RGBA').save(os.path.join(no, 'rgba.png'))
  Image.fromarray(g(6)).convert('RGB').convert('CMYK').save(
      os.path.join(no, 'cmyk.jpg'))
  Image.fromarray(g(8)).save(os.path.join(no, 'scan.tif'))
  Image.fromarray(g(10).astype(np.uint16) * 257).save(
      os.path.join(no, 'scan16.TIFF'))
  _png(os.path.join(no, 'one_pixel.png'), np.full((1, 1), 200, np.uint8))
  big = np.zeros((4000, 6000), np.uint8)
  big[1000:3000, 2000:4000] = 180
  _png(os.path.join(no, 'large_6000x4000.png'), big)
  # The same scan under both labels (a cross-class duplicate).
  shutil.copy(os.path.join(yes, 'UPPER.PNG'), os.path.join(no, 'copy.png'))
  return str(root)


_MESSY_IDS = sorted([
    'yes/Y92.png', 'yes/Y92.jpg', 'yes/UPPER.PNG',
    'yes/series 1/deeper/n1.png', 'no/sixteen.png', 'no/palette.png',
    'no/rgba.png', 'no/cmyk.jpg', 'no/scan.tif', 'no/scan16.TIFF',
    'no/one_pixel.png', 'no/large_6000x4000.png', 'no/copy.png'])


def _ids(workdir):
  with open(os.path.join(workdir, 'splits.json')) as f:
    fold = json.load(f)['folds'][0]
  return sorted(i for role in fold.values() for i in role)


def _report(workdir):
  with open(os.path.join(workdir, 'data_report.md')) as f:
    return f.read()


def _edit(path, old, new):
  with open(path) as f:
    text = f.read()
  assert old in text, (old, path)
  with open(path, 'w') as f:
    f.write(text.replace(old, new, 1))
  return str(path)


def _dicom_folder(root, n_per_class=3):
  return lib.write_dicom_folder(str(root), n_per_class)


def _scanner_export(root):
  """DIR/p<k>/IM-0001-0001.dcm in every patient folder, an extensionless
  DICOM, labels by relative path."""
  rows = ['id,label']
  for k in range(6):
    hu = lib.phantom_image(k % 2, 20 + k, size=32).astype(float) * 4 - 1000
    os.makedirs(os.path.join(root, f'p{k}'))
    lib.write_dicom(os.path.join(root, f'p{k}', 'IM-0001-0001.dcm'), hu)
    rows.append(f'p{k}/IM-0001-0001.dcm,{k % 2}')
  os.makedirs(os.path.join(root, 'p9', 'SE1'))
  lib.write_dicom(os.path.join(root, 'p9', 'SE1', 'IM000001'),
                  lib.phantom_image(1, 40, size=32).astype(float) * 4 - 1000)
  rows.append('p9/SE1/IM000001,1')
  with open(os.path.join(root, 'labels.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return str(root)


def _recode_dicom(path, uid, fragments=None, drop_pixels=False):
  # pylint: disable=g-import-not-at-top
  import pydicom
  from pydicom.encaps import encapsulate
  ds = pydicom.dcmread(path)
  if drop_pixels:
    del ds.PixelData
  else:
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate(fragments)
  ds.save_as(path)
  return str(path)


# ---------------------------------------------------------------- cases


def _build(base) -> dict[str, Case]:
  """Writes every case's input under `base`; -> name -> Case."""
  tfds = f'--config.data.tfds_dir={base / "tfds"}'
  data = lambda *a: ['--config=configs/data.py', tfds, *_SMALL, *a]
  folder = lambda d: ['--config.data.name=image_folder',
                      f'--config.data.dir={d}']
  head_ct = lambda d: ['--config.data.name=head_ct', f'--config.data.dir={d}']
  dicom = lambda d: ['--config.data.name=dicom', f'--config.data.dir={d}']
  cases = {}

  def new(name, kind='folder'):
    path = base / name
    if kind == 'folder':
      return _image_folder(path)
    if kind == 'head_ct':
      return lib.write_head_ct(path, n_per_class=4)
    return _dicom_folder(path)

  # -- image files
  d = new('truncated_png')
  raw = open(os.path.join(d, 'a', 'img1.png'), 'rb').read()
  bad = os.path.join(d, 'a', 'img1.png')
  with open(bad, 'wb') as f:
    f.write(raw[:len(raw) // 2])
  cases['truncated_png'] = Case('PNG cut in half', data(*folder(d)), bad)
  d = new('text_as_png')
  bad = os.path.join(d, 'b', 'notes.png')
  with open(bad, 'w') as f:
    f.write('this is a text file\n')
  cases['text_named_png'] = Case('text file named .png', data(*folder(d)),
                                 bad)
  d = new('zero_byte')
  bad = os.path.join(d, 'b', 'empty.jpg')
  open(bad, 'wb').close()
  cases['zero_byte_file'] = Case('0-byte .jpg', data(*folder(d)), bad)
  d = new('bomb')
  bad = _bomb_png(os.path.join(d, 'a', 'huge.png'))
  cases['decompression_bomb'] = Case('PNG header 30000x30000 (900 Mpx)',
                                     data(*folder(d)), bad)
  d = new('tiff_stack')
  bad = os.path.join(d, 'a', 'stack.tif')
  pages = [Image.fromarray(lib.phantom_image(0, i, size=32)) for i in range(3)]
  pages[0].save(bad, save_all=True, append_images=pages[1:])
  cases['multipage_tiff'] = Case('3-page TIFF stack', data(*folder(d)), bad)
  # -- folder structure
  d = new('empty_class')
  os.makedirs(os.path.join(d, 'c'))
  open(os.path.join(d, 'c', '.DS_Store'), 'w').close()
  cases['empty_class_folder'] = Case(
      'class folder with only .DS_Store', data(*folder(d)),
      f"{os.path.join(d, 'c')}: class 'c' has no images")
  d = _image_folder(base / 'one_class', classes=('a',))
  cases['one_class_only'] = Case('one class folder', data(*folder(d)),
                                 'needs at least 2 classes')
  cases['missing_dir'] = Case(
      'data.dir does not exist', data(*folder(base / 'nowhere')),
      'config.data.dir')
  # -- labels CSV (head_ct)
  d = new('csv_id_no_image', 'head_ct')
  os.remove(os.path.join(d, 'images', '005.png'))
  cases['csv_id_without_image'] = Case(
      'CSV id whose image is missing', data(*head_ct(d)), "id '005'")
  d = new('csv_image_no_id', 'head_ct')
  bad = _edit(os.path.join(d, 'labels.csv'), '003,1\n', '')
  cases['image_without_csv_id'] = Case(
      'image missing from the CSV', data(*head_ct(d)),
      os.path.join(d, 'images', '003.png'))
  d = new('csv_empty_id', 'head_ct')
  bad = _edit(os.path.join(d, 'labels.csv'), '003,1', ',1')
  cases['csv_empty_id'] = Case('CSV row with an empty id', data(*head_ct(d)),
                               f'{bad}: line 5 is malformed')
  d = new('csv_dup', 'head_ct')
  bad = _edit(os.path.join(d, 'labels.csv'), '004,0', '003,0')
  cases['csv_duplicate_ids'] = Case('CSV id listed twice', data(*head_ct(d)),
                                    f"{bad}: id '003' appears twice")
  d = new('csv_label', 'head_ct')
  bad = _edit(os.path.join(d, 'labels.csv'), '002,1', '002,yes')
  cases['csv_non_numeric_label'] = Case(
      "label 'yes' in a 0/1 column", data(*head_ct(d)), bad)
  d = new('csv_header', 'head_ct')
  bad = _edit(os.path.join(d, 'labels.csv'), 'id, hemorrhage', 'file,class')
  cases['csv_wrong_header'] = Case('CSV header file,class',
                                   data(*head_ct(d)), bad)
  # -- DICOM
  d = new('dicom_no_pixels', 'dicom')
  bad = _recode_dicom(os.path.join(d, 'scan1.dcm'), None, drop_pixels=True)
  cases['dicom_without_pixel_data'] = Case(
      'DICOM with no PixelData', data(*dicom(d)), f'{bad}: DICOM file has no '
      'pixel data')
  d = new('dicom_jpeg_lossless', 'dicom')
  bad = _recode_dicom(os.path.join(d, 'scan2.dcm'), '1.2.840.10008.1.2.4.70',
                      [b'\xff\xd8\xff\xc3 not decodable \xff\xd9'])
  cases['dicom_compressed_no_plugin'] = Case(
      'JPEG Lossless DICOM, no pylibjpeg', data(*dicom(d)),
      f'{bad}: pixel data is compressed (JPEG Lossless')
  d = new('dicom_not_dicom', 'dicom')
  bad = os.path.join(d, 'scan3.dcm')
  with open(bad, 'w') as f:
    f.write('not a dicom')
  cases['dicom_not_dicom'] = Case('text file named .dcm', data(*dicom(d)),
                                  bad)
  d = _scanner_export(str(base / 'dicom_ambiguous'))
  bad = _edit(os.path.join(d, 'labels.csv'), 'p0/IM-0001-0001.dcm',
              'IM-0001-0001')
  cases['dicom_ambiguous_stem'] = Case(
      'CSV stem shared by 6 patient folders', data(*dicom(d)),
      "id 'IM-0001-0001' matches 6 files")
  # -- config
  cases['unknown_config_key'] = Case(
      '--config.data.postive_class', data('--config.data.postive_class=x'),
      'did you mean --config.data.positive_class?')
  cases['unknown_variant'] = Case(
      'configs/pggan.py:small', ['--config=configs/pggan.py:small'],
      "unknown variant 'small' of configs/pggan.py (variants: :tiny")
  cases['bad_value_type'] = Case(
      '--config.data.storage_size=abc', data('--config.data.storage_size=abc'),
      '--config.data.storage_size=abc')
  cases['unknown_data_name'] = Case('--config.data.name=png',
                                    data('--config.data.name=png'),
                                    'config.data.name')
  cases['gan_resolution_not_pow2'] = Case(
      'pggan :tiny at resolution 12',
      ['--config=configs/pggan.py:tiny', tfds, '--config.model.resolution=12'],
      'config.model.resolution')
  cases['gan_dtype'] = Case(
      'pggan :tiny in float16',
      ['--config=configs/pggan.py:tiny', tfds, '--config.dtype=float16'],
      "config.dtype='float16' is not float32 or bfloat16")
  cases['resolution_above_storage'] = Case(
      'classifier at 64 px, stored 32 px',
      ['--config=configs/resnet.py:tiny', tfds, '--config.data.resolution=64'],
      'config.data.storage_size=32')
  # -- workdirs
  gan = base / 'gan_no_ckpt'
  os.makedirs(gan / 'checkpoints')
  (gan / 'config.json').write_text('{}')
  cases['sample_no_checkpoint'] = Case(
      'sample from a GAN workdir without checkpoints',
      ['--config=configs/sample.py', f'--config.output_dir={base / "out"}'],
      f'no checkpoint in {gan}/checkpoints')
  cases['sample_no_checkpoint'].workdir = str(gan)
  syn = base / 'synthetic_cats'
  _image_folder(syn, classes=('cats', 'dogs'), n=2)
  cases['synthetic_wrong_classes'] = Case(
      'synthetic_dir with cats/ and dogs/',
      ['--config=configs/resnet.py:tiny', tfds, '--config.arm=gan',
       f'--config.data.synthetic_dir={syn}',
       '--config.data.allow_unverified_synthetic=True'],
      "looked for 'normal', 'hemorrhage'")
  w = base / 'clf_done'
  os.makedirs(w / 'checkpoints' / '4')
  done = resnet_config.get_config('tiny')
  workdir_lib.record_config(str(w), done)  # arm='classic' made it
  (w / 'results.json').write_text('{}')
  cases['classifier_other_config'] = Case(
      'finished classic workdir rerun with arm=none',
      ['--config=configs/resnet.py:tiny', tfds, '--config.arm=none'],
      "arm: 'classic' there, 'none' now")
  cases['classifier_other_config'].workdir = str(w)
  cases['workdir_in_use'] = Case(
      'workdir locked by another run', ['--config=configs/resnet.py:tiny',
                                        tfds],
      f'is in use by pid {os.getpid()}', hold_lock=str(base / 'busy'))
  cases['workdir_in_use'].workdir = str(base / 'busy')
  # -- valid but messy: handled, exit 0
  d = _messy_folder(str(base / 'messy'))
  cases['messy_folder_valid'] = Case(
      'image folder as it comes (one run)', data(*folder(d)), None, [
          ('Y92.png + Y92.jpg: two images, ids with extension',
           lambda r, w: _assert({'yes/Y92.png', 'yes/Y92.jpg'} <= set(
               _ids(w)))),
          ('upper-case .PNG/.TIFF read',
           lambda r, w: _assert({'yes/UPPER.PNG', 'no/scan16.TIFF'} <= set(
               _ids(w)))),
          ('.DS_Store, Thumbs.db, ._*, .hidden/, __MACOSX/ ignored',
           lambda r, w: _assert(_ids(w) == _MESSY_IDS)),
          ('nested subfolder read, id keeps the subpath',
           lambda r, w: _assert('yes/series 1/deeper/n1.png' in _ids(w))),
          ('16-bit, palette, RGBA, CMYK, TIFF modes',
           lambda r, w: _assert(all(m in _report(w) for m in (
               'I;16 2', 'P 1', 'RGBA 1', 'CMYK 1')))),
          ('1x1 and 6000x4000 images prepared',
           lambda r, w: _assert('1 / ' in _report(w) and '/ 6000 |' in
                                _report(w))),
          ('notes.txt skipped with a warning',
           lambda r, w: _assert('not png/jpg/jpeg/tif/tiff images: '
                                'no/notes.txt' in r.stderr)),
          ('cross-class duplicate warned on the console',
           lambda r, w: _assert('no/copy.png (no) = yes/UPPER.PNG (yes)' in
                                r.stderr and 'different labels' in
                                r.stderr)),
      ])
  d = _scanner_export(str(base / 'dicom_export'))
  cases['dicom_scanner_export_valid'] = Case(
      'p*/IM-0001-0001.dcm + extensionless DICOM, CSV by path',
      data(*dicom(d)), None, [
          ('repeated names and extensionless file, ids = relative paths',
           lambda r, w: _assert(_ids(w) == sorted(
               [f'p{k}/IM-0001-0001.dcm' for k in range(6)] +
               ['p9/SE1/IM000001'])))])
  return cases


def _assert(ok):
  assert ok


# ----------------------------------------------------------------- run


def _run(name: str, case: Case, base) -> Case:
  case.workdir = case.workdir or str(base / 'work' / name)
  flags = [a for a in case.args if not a.startswith('--workdir')]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  t0 = time.time()
  case.result = subprocess.run(
      [sys.executable, 'main.py', *flags, f'--workdir={case.workdir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
      check=False)
  case.seconds = time.time() - t0
  return case


def _error_lines(result):
  return [l for l in result.stderr.splitlines() if l.startswith('error:')]


def _outcomes(case: Case) -> list[tuple[str, str, bool]]:
  """(row label, outcome, ok) rows for the table."""
  r = case.result
  if case.needle is not None:
    errors = _error_lines(r)
    last = (r.stderr.strip().splitlines() or [''])[-1]
    ok = (r.returncode != 0 and len(errors) == 1 and last == errors[0] and
          case.needle in last and 'Traceback' not in r.stderr)
    return [(case.what, f'exit {r.returncode}: {last}', ok)]
  rows = []
  for label, check in case.checks:
    try:
      assert r.returncode == 0, r.stderr[-2000:]
      check(r, case.workdir)
      rows.append((label, 'exit 0: handled', True))
    except AssertionError as e:
      rows.append((label, f'exit {r.returncode}: FAILED {e}'[:300], False))
  return rows


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  base = tmp_path_factory.mktemp('bad_input')
  cases = _build(base)
  t0 = time.time()
  locks = [workdir_lib.lock(c.hold_lock, job='bad_input_test holder')
           for c in cases.values() if c.hold_lock]
  for held in locks:
    held.__enter__()  # pylint: disable=unnecessary-dunder-call
  try:
    # Config errors first: they fail in about a second and free the cores.
    order = sorted(cases, key=lambda n: n not in (
        'unknown_config_key', 'unknown_variant', 'bad_value_type'))
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
      list(pool.map(lambda n: _run(n, cases[n], base), order))
  finally:
    for held in locks:
      held.__exit__(None, None, None)
  rows = [(name, label, outcome, ok, case.seconds)
          for name, case in cases.items()
          for label, outcome, ok in _outcomes(case)]
  width = max(len(r[0]) for r in rows)
  print(f'\nbad-input corpus: {len(cases)} runs of main.py, {len(rows)} '
        f'checks, {time.time() - t0:.0f} s wall')
  print(f'| {"case":{width}} | input | s | outcome |')
  for name, label, outcome, ok, seconds in rows:
    mark = '' if ok else '  <-- WRONG'
    print(f'| {name:{width}} | {label} | {seconds:.1f} | {outcome}{mark} |')
  return cases


CASES = (
    'truncated_png', 'text_named_png', 'zero_byte_file', 'decompression_bomb',
    'multipage_tiff', 'empty_class_folder', 'one_class_only', 'missing_dir',
    'csv_id_without_image', 'image_without_csv_id', 'csv_empty_id',
    'csv_duplicate_ids', 'csv_non_numeric_label', 'csv_wrong_header',
    'dicom_without_pixel_data', 'dicom_compressed_no_plugin',
    'dicom_not_dicom', 'dicom_ambiguous_stem', 'unknown_config_key',
    'unknown_variant', 'bad_value_type', 'unknown_data_name',
    'gan_resolution_not_pow2', 'gan_dtype', 'resolution_above_storage',
    'sample_no_checkpoint', 'synthetic_wrong_classes',
    'classifier_other_config', 'workdir_in_use', 'messy_folder_valid',
    'dicom_scanner_export_valid')


def test_corpus_is_complete(corpus):
  assert sorted(corpus) == sorted(CASES)
  assert len(CASES) >= 20


@pytest.mark.parametrize('name', CASES)
def test_case(corpus, name):
  case = corpus[name]
  for label, outcome, ok in _outcomes(case):
    assert ok, (f'{name} ({label}): {outcome}\n--- stderr tail ---\n'
                f'{case.result.stderr[-3000:]}')


@pytest.mark.parametrize('config_file, variants', [
    ('configs/data.py', ['tiny']), ('configs/resnet.py', ['tiny', 'paper']),
    ('configs/study.py', ['tiny', 'paper']), ('configs/sample.py', []),
    ('configs/vtt.py', ['score', 'make'])])
def test_config_variants_listed(config_file, variants):
  # pylint: disable=g-import-not-at-top
  from input_pipeline import cli
  found = cli.config_variants(os.path.join(ROOT, config_file))
  # At least these (a config may gain variants), and none for a config
  # whose get_config ignores its argument.
  assert set(variants) <= set(found) and bool(found) == bool(variants)
