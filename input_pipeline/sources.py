"""Source scanners: find every (id, label, file) and validate it up front.

`scan(data)` checks the folder structure and labels without decoding pixels
(cheap, so it runs on every `prepare` to compute the cache key);
`load(scan, item, storage_size)` decodes one item to the stored square.
Supported `data.name`s:
  synthetic_head_ct  procedural phantoms (`phantom.py`), no files.
  head_ct            DIR/labels.csv (`id, hemorrhage`) + DIR/images/NNN.png
                     (or the Kaggle zip layout DIR/head_ct/N.png).
  image_folder       DIR/<class>/**/*.{png,jpg,jpeg,tif,tiff} (any case,
                     subfolders read recursively); labels by sorted folder
                     name, data.positive_class names the positive folder;
                     ids are paths relative to DIR (`yes/Y92.jpg`).
  dicom              DIR/**/*.dcm (or extensionless files with the DICM
                     preamble) + labels CSV (`id,label`; id = a path
                     relative to DIR, e.g. `p029/IM-0001-0001.dcm`, or a
                     file stem that names one file).
  nifti              DIR/<patient>/*.nii[.gz] volumes (BraTS layout), one
                     item per chosen axial slice (`volumes.py`).
  dicom_series       DIR/<patient>/[<series>/]*.dcm series (`volumes.py`).
Hidden files and folders and what operating systems leave behind
(`.DS_Store`, `Thumbs.db`, `__MACOSX/`, ...) are never read.
"""

import csv
import dataclasses
import hashlib
import os

from absl import logging
import numpy as np

from input_pipeline import phantom
from input_pipeline import preprocess
from input_pipeline.errors import UserInputError

NAMES = ('synthetic_head_ct', 'head_ct', 'image_folder', 'dicom', 'nifti',
         'dicom_series')
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff')
DICOM_EXTS = ('.dcm', '.dicom')
# Left behind by operating systems, archivers and NAS boxes (compared in
# lower case); hidden names (a leading '.') are skipped as well.
_JUNK = ('thumbs.db', 'ehthumbs.db', 'desktop.ini', '__macosx', '@eadir',
         '$recycle.bin', 'system volume information', 'dicomdir')
# Bump when preprocessing or the phantom generator changes: it is part of the
# cache key, so stale prepared datasets are not reused.
# 4: image_folder ids are relative paths with the extension; EXIF
# orientation applied; TIFF read.
_VERSION = 4
# Window presets (center, width) in Hounsfield units.
WINDOWS = {'brain': (40, 80), 'subdural': (80, 200), 'bone': (600, 2800)}


@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  label: int
  path: str = ''  # '' for synthetic items
  index: int = 0  # synthetic: index within its class; volumes: the slice
  # Volume sources: the patient; the splits keep a patient in one role.
  patient: str = ''


@dataclasses.dataclass
class Scan:
  name: str
  items: list[Item]  # sorted by id
  class_names: list[str]
  channels: int
  params: dict  # everything the stored pixels depend on (cache key)
  # Volume sources: Item.path -> volumes.Volume (the files to decode).
  volumes: dict = dataclasses.field(default_factory=dict)


def _id_key(s: str):
  """'7', '007' and '7.png' stem all name the same image."""
  s = s.strip()
  return (0, int(s), '') if s.isdigit() else (1, 0, s)


def _sort_items(items: list[Item]) -> list[Item]:
  return sorted(items, key=lambda it: _id_key(it.id))


def ignored(name: str) -> bool:
  """Hidden files/folders and OS leftovers (`.DS_Store`, `Thumbs.db`, ...)."""
  return name.startswith('.') or name.lower() in _JUNK


def list_image_folder(root: str, key: str, *, allow_flat: bool = True
                      ) -> dict[str | None, list[str]]:
  """{class: sorted image paths} of DIR/<class>/*, or {None: paths} of a
  flat DIR/* (only with allow_flat). Hidden entries and non-images (e.g.
  the sampler's manifest.json) are skipped. `key` names the config key in
  the one-line errors."""
  if not root or not os.path.isdir(root):
    raise UserInputError(f'config.{key}={root!r} is not a directory')

  def images_in(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if not ignored(f) and f.lower().endswith(IMAGE_EXTS)
                  and os.path.isfile(os.path.join(folder, f)))

  subdirs = sorted(d for d in os.listdir(root) if not ignored(d)
                   and os.path.isdir(os.path.join(root, d)))
  classes = {d: images_in(os.path.join(root, d)) for d in subdirs}
  loose = images_in(root)
  if any(classes.values()):
    if loose:
      layouts = 'DIR/<class>/*.png' + (' or DIR/*.png' if allow_flat else '')
      raise UserInputError(
          f'config.{key}={root!r} has both images ({loose[0]}) and class '
          f'subfolders; use one layout: {layouts}')
    for d, paths in classes.items():
      if not paths:
        raise UserInputError(
            f'{os.path.join(root, d)}: class {d!r} has no PNG/JPEG images')
    return classes
  if not allow_flat:
    raise UserInputError(f'config.{key}={root!r}: no class subfolders with '
                         'PNG/JPEG images (DIR/<class>/*.png)')
  if not loose:
    raise UserInputError(f'config.{key}={root!r}: no PNG/JPEG images '
                         '(DIR/<class>/*.png or DIR/*.png)')
  return {None: loose}


def walk_files(folder: str) -> list[str]:
  """Every file under `folder`, as sorted '/'-separated relative paths.

  Recursive (symlinked folders followed once), skipping `ignored` names.
  """
  out, seen = [], set()
  for dirpath, dirnames, names in os.walk(folder, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:  # a symlink loop
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames[:] = sorted(d for d in dirnames if not ignored(d))
    rel = os.path.relpath(dirpath, folder)
    for f in names:
      if not ignored(f) and os.path.isfile(os.path.join(dirpath, f)):
        out.append(f if rel == '.' else f'{rel}/{f}'.replace(os.sep, '/'))
  return sorted(out)


def _examples(paths: list[str], n: int = 3) -> str:
  more = f' and {len(paths) - n} more' if len(paths) > n else ''
  return ', '.join(paths[:n]) + more


def _read_csv(path: str, id_col: str, label_col: str) -> list[tuple[str, str]]:
  """Rows (id, label) of a CSV; tolerant of spaces around cells."""
  if not os.path.isfile(path):
    raise UserInputError(f'{path}: labels file not found')
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = [[c.strip() for c in r] for r in csv.reader(f) if any(
        c.strip() for c in r)]
  if not rows:
    raise UserInputError(f'{path}: labels file is empty')
  header = [h.lower() for h in rows[0]]
  if id_col not in header or label_col not in header:
    raise UserInputError(
        f'{path}: expected columns {id_col!r} and {label_col!r}, '
        f'found {rows[0]}')
  i, j = header.index(id_col), header.index(label_col)
  out = []
  for n, r in enumerate(rows[1:], start=2):
    if len(r) <= max(i, j) or not r[i]:
      raise UserInputError(f'{path}: line {n} is malformed: {r}')
    out.append((r[i], r[j]))
  seen = {}
  for rid, _ in out:
    if _id_key(rid) in seen:
      raise UserInputError(f'{path}: id {rid!r} appears twice')
    seen[_id_key(rid)] = rid
  return out


def _match(labels: list[tuple[str, str]], files: dict, csv_path: str,
           folder: str, what: str) -> list[tuple[str, str, str]]:
  """Joins CSV rows to files by id; every label needs an image and back."""
  by_key = {}
  for stem, path in sorted(files.items()):
    other = by_key.setdefault(_id_key(stem), (stem, path))[1]
    if other != path:  # e.g. 7.png and 007.png: which one is labelled?
      raise UserInputError(
          f'{path}: same id as {other}; rename or remove one of them')
  keys = {_id_key(rid) for rid, _ in labels}
  for rid, _ in labels:
    if _id_key(rid) not in by_key:
      raise UserInputError(
          f'{csv_path}: id {rid!r} has no {what} in {folder}')
  for key, (stem, path) in sorted(by_key.items()):
    if key not in keys:
      raise UserInputError(f'{path}: {what} has no label in {csv_path}')
  return [(by_key[_id_key(rid)][0], lab, by_key[_id_key(rid)][1])
          for rid, lab in labels]


def _check_dir(data) -> str:
  if not data.dir:
    raise UserInputError(f'config.data.dir is required for '
                         f'data.name={data.name!r}')
  if not os.path.isdir(data.dir):
    raise UserInputError(f'config.data.dir={data.dir!r} is not a directory')
  return os.path.abspath(data.dir)


def _class_order(names: list[str], positive: str, where: str) -> list[str]:
  names = sorted(names)
  if positive:
    if positive not in names:
      raise UserInputError(
          f'config.data.positive_class={positive!r} is not a class in '
          f'{where} (found {names})')
    if len(names) != 2:
      raise UserInputError(
          f'config.data.positive_class needs exactly 2 classes, {where} '
          f'has {names}')
    names = [n for n in names if n != positive] + [positive]
  return names


def _check_not_empty(items: list[Item], class_names: list[str], where: str):
  counts = np.bincount([it.label for it in items], minlength=len(
      class_names))
  for c, n in zip(class_names, counts):
    if n == 0:
      raise UserInputError(f'{where}: class {c!r} has no images')
  if len(class_names) < 2:
    raise UserInputError(f'{where}: needs at least 2 classes, found '
                         f'{class_names}')


def _scan_head_ct(data) -> Scan:
  root = _check_dir(data)
  csv_path = data.labels_csv or os.path.join(root, 'labels.csv')
  if not data.labels_csv and not os.path.isfile(csv_path):
    alt = os.path.join(root, 'head_ct', 'labels.csv')
    csv_path = alt if os.path.isfile(alt) else csv_path
  labels = _read_csv(csv_path, 'id', 'hemorrhage')
  for cand in ('images', 'head_ct', os.path.join('head_ct', 'head_ct')):
    folder = os.path.join(root, cand)
    if os.path.isdir(folder) and any(
        f.lower().endswith('.png') and not ignored(f)
        for f in os.listdir(folder)):
      break
  else:
    raise UserInputError(
        f'config.data.dir={data.dir!r}: no images/ or head_ct/ folder with '
        f'PNG files')
  files = {os.path.splitext(f)[0]: os.path.join(folder, f)
           for f in os.listdir(folder)
           if f.lower().endswith('.png') and not ignored(f)}
  items = []
  for stem, lab, path in _match(labels, files, csv_path, folder, 'image'):
    if lab not in ('0', '1'):
      raise UserInputError(
          f'{csv_path}: id {stem!r} has label {lab!r}, expected 0 or 1')
    items.append(Item(stem, int(lab), path))
  class_names = list(phantom.CLASS_NAMES)
  items = _sort_items(items)
  _check_not_empty(items, class_names, csv_path)
  return Scan('head_ct', items, class_names, 1, {})


def _scan_image_folder(data) -> Scan:
  root = _check_dir(data)
  entries = sorted(os.listdir(root))
  classes = [d for d in entries
             if not ignored(d) and os.path.isdir(os.path.join(root, d))]
  if not classes:
    raise UserInputError(
        f'config.data.dir={data.dir!r}: no class subfolders')
  loose = [f for f in entries if f.lower().endswith(IMAGE_EXTS)
           and not ignored(f) and os.path.isfile(os.path.join(root, f))]
  if loose:
    logging.warning('%s: %d image(s) outside the class folders are not '
                    'used: %s', root, len(loose), _examples(loose))
  class_names = _class_order(classes, data.positive_class, root)
  items, skipped = [], []
  for label, c in enumerate(class_names):
    folder = os.path.join(root, c)
    rels = walk_files(folder)
    images = [r for r in rels if r.lower().endswith(IMAGE_EXTS)]
    skipped += [f'{c}/{r}' for r in sorted(set(rels) - set(images))]
    if not images:
      raise UserInputError(
          f'{folder}: class {c!r} has no images '
          f'({"/".join(e[1:] for e in IMAGE_EXTS)}, any case, any depth)')
    # The id is the path relative to DIR, extension included: Y92.png and
    # Y92.jpg are two images, and a report names the file unambiguously.
    items += [Item(f'{c}/{r}', label, os.path.join(folder, r))
              for r in images]
  if skipped:
    logging.warning('%s: skipped %d file(s) that are not %s images: %s',
                    root, len(skipped), '/'.join(e[1:] for e in IMAGE_EXTS),
                    _examples(skipped))
  items = sorted(items, key=lambda it: it.id)
  _check_not_empty(items, class_names, root)
  return Scan('image_folder', items, class_names, 1, {})


def is_dicom_file(path: str) -> bool:
  """The DICOM Part 10 preamble: 'DICM' at bytes 128-131."""
  try:
    with open(path, 'rb') as f:
      f.seek(128)
      return f.read(4) == b'DICM'
  except OSError:
    return False


def _strip_dicom_ext(rel: str) -> str:
  """p1/IM-0001.DCM -> p1/IM-0001; p1/1.2.840.5 (no DICOM extension) kept."""
  for ext in DICOM_EXTS:
    if rel.lower().endswith(ext):
      return rel[:-len(ext)]
  return rel


def _dicom_stem(rel: str) -> str:
  return _strip_dicom_ext(rel).rsplit('/', 1)[-1]


def _dicom_files(root: str, csv_path: str) -> dict[str, str]:
  """Relative path -> path of every DICOM file under root: a DICOM
  extension in any case, or none that says so and the DICM preamble."""
  skip = os.path.abspath(csv_path)
  files = {}
  for rel in walk_files(root):
    path = os.path.join(root, rel)
    if os.path.abspath(path) == skip:
      continue
    if rel.lower().endswith(DICOM_EXTS) or is_dicom_file(path):
      files[rel] = path
  return files


def _match_dicom(labels: list[tuple[str, str]], files: dict[str, str],
                 csv_path: str, root: str) -> list[tuple[str, str, str]]:
  """CSV ids -> (item id, label, path); every file needs exactly one row.

  An id is a path relative to root (with or without the DICOM extension;
  the item id is then that path) or, as before, a file stem that names a
  single file (the item id is the stem). A stem shared by several files
  (IM-0001-0001.dcm in every patient folder) is an error listing them.
  """
  no_ext, by_stem = {}, {}
  for rel in files:
    no_ext.setdefault(_strip_dicom_ext(rel), []).append(rel)
    by_stem.setdefault(_id_key(_dicom_stem(rel)), []).append(rel)
  rows, used = [], {}
  for rid, lab in labels:
    key = rid.replace('\\', '/').removeprefix('./')
    cands = (no_ext.get(key, []) if '/' in key
             else by_stem.get(_id_key(_strip_dicom_ext(key)), []))
    if key in files:
      rel, item_id = key, key
    elif len(cands) == 1:
      rel = cands[0]
      item_id = rel if '/' in key else _dicom_stem(rel)
    else:
      if cands:
        raise UserInputError(
            f'{csv_path}: id {rid!r} matches {len(cands)} files '
            f'({_examples(sorted(cands))}); name each file by its path '
            f'relative to {root}, e.g. {sorted(cands)[0]!r}')
      hint = ''
      if os.path.isfile(os.path.join(root, key)):
        hint = (f' ({os.path.join(root, key)} exists but is not a DICOM '
                "file: no .dcm extension and no 'DICM' at byte 128)")
      raise UserInputError(
          f'{csv_path}: id {rid!r} has no DICOM file in {root}{hint}')
    if rel in used:
      raise UserInputError(f'{csv_path}: ids {used[rel]!r} and {rid!r} '
                           f'both name {files[rel]}')
    used[rel] = rid
    rows.append((item_id, lab, files[rel]))
  for rel in sorted(files):
    if rel not in used:
      raise UserInputError(f'{files[rel]}: DICOM file has no label in '
                           f'{csv_path}')
  return rows


def _scan_dicom(data) -> Scan:
  root = _check_dir(data)
  if data.window not in (*WINDOWS, 'multi'):
    raise UserInputError(
        f'config.data.window={data.window!r} is not one of '
        f'{[*WINDOWS, "multi"]}')
  csv_path = data.labels_csv or os.path.join(root, 'labels.csv')
  labels = _read_csv(csv_path, 'id', 'label')
  files = _dicom_files(root, csv_path)
  if not files:
    raise UserInputError(f'config.data.dir={data.dir!r}: no DICOM files '
                         "(.dcm, or files with the 'DICM' preamble)")
  rows = _match_dicom(labels, files, csv_path, root)
  class_names = _class_order(list({lab for _, lab, _ in rows}),
                             data.positive_class, csv_path)
  if all(c.lstrip('-').isdigit() for c in class_names) and (
      not data.positive_class):
    class_names = sorted(class_names, key=int)
  index = {c: i for i, c in enumerate(class_names)}
  items = _sort_items([Item(item_id, index[lab], path)
                       for item_id, lab, path in rows])
  _check_not_empty(items, class_names, csv_path)
  channels = 3 if data.window == 'multi' else 1
  return Scan('dicom', items, class_names, channels, {'window': data.window})


def _scan_synthetic(data) -> Scan:
  n = int(data.synthetic_per_class)
  if n < 1:
    raise UserInputError('config.data.synthetic_per_class must be >= 1')
  items = [Item(f'{label}{i:05d}', label, '', i)
           for label in (0, 1) for i in range(n)]
  params = {'per_class': n, 'size': int(data.synthetic_size),
            'seed': int(data.synthetic_seed)}
  return Scan('synthetic_head_ct', sorted(items, key=lambda it: it.id),
              list(phantom.CLASS_NAMES), 1, params)


def _scan_volumes(data) -> Scan:
  from input_pipeline import volumes  # pylint: disable=g-import-not-at-top
  return volumes.scan(data)


def scan(data) -> Scan:
  """Validates the source named by config.data (structure and labels)."""
  scanners = {'synthetic_head_ct': _scan_synthetic, 'head_ct': _scan_head_ct,
              'image_folder': _scan_image_folder, 'dicom': _scan_dicom,
              'nifti': _scan_volumes, 'dicom_series': _scan_volumes}
  if data.name not in scanners:
    raise UserInputError(
        f'config.data.name={data.name!r} is not one of {list(NAMES)}')
  return scanners[data.name](data)


def fingerprint(s: Scan, storage_size: int) -> str:
  """Hash of everything the stored dataset depends on.

  File names, sizes and mtimes (not contents, to stay cheap), labels, class
  order and preprocessing parameters; bump `_VERSION` when preprocessing
  code changes.
  """
  h = hashlib.sha256(f'{_VERSION}|{s.name}|{storage_size}|{s.channels}|'
                     f'{sorted(s.params.items())}|{s.class_names}'.encode())
  for it in s.items:
    h.update(f'{it.id}|{it.label}|{it.path}|{it.index}'.encode())
    if it.patient:
      h.update(f'|{it.patient}'.encode())
    if it.path:
      st = os.stat(it.path)
      h.update(f'|{st.st_size}|{st.st_mtime_ns}'.encode())
  return h.hexdigest()[:16]


# Compressed transfer syntaxes decode through pydicom's plugins (RLE and
# Deflate need nothing): JPEG 2000 / HTJ2K through OpenJPEG, the JPEG
# family (baseline, extended, lossless, JPEG-LS) through libjpeg.
_J2K_UIDS = {f'1.2.840.10008.1.2.4.{n}' for n in (90, 91, 201, 202, 203)}
_PIXEL_ELEMENTS = ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData')


def _check_dicom_decoder(ds, path: str) -> None:
  """A compressed transfer syntax needs a pydicom plugin: say which."""
  meta = getattr(ds, 'file_meta', None)
  uid = meta.get('TransferSyntaxUID') if meta is not None else None
  if uid is None or not uid.is_compressed:
    return
  from pydicom import pixels  # pylint: disable=g-import-not-at-top
  try:
    available = pixels.get_decoder(uid).is_available
  except NotImplementedError:
    raise UserInputError(f'{path}: pixel data in {uid.name} ({uid}), which '
                         'pydicom cannot decode') from None
  if not available:
    plugins = 'pylibjpeg ' + ('pylibjpeg-openjpeg' if str(uid) in _J2K_UIDS
                              else 'pylibjpeg-libjpeg')
    raise UserInputError(
        f'{path}: pixel data is compressed ({uid.name}) and no pydicom '
        f'plugin for it is installed: pip install {plugins}')


def _load_dicom(path: str, window: str) -> tuple[np.ndarray, dict]:
  import pydicom  # pylint: disable=g-import-not-at-top

  try:
    ds = pydicom.dcmread(path)
  except pydicom.errors.InvalidDicomError:
    raise UserInputError(f"{path}: not a DICOM file (no 'DICM' preamble "
                         'and no file meta header)') from None
  except Exception as e:  # pydicom raises many types for broken files
    raise UserInputError(
        f'{path}: cannot read DICOM ({preprocess.one_line(e)})') from None
  if not any(k in ds for k in _PIXEL_ELEMENTS):
    raise UserInputError(f'{path}: DICOM file has no pixel data (a report, '
                         'structured report or presentation state?)')
  _check_dicom_decoder(ds, path)
  try:
    px = ds.pixel_array.astype(np.float32)
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(f'{path}: cannot decode DICOM pixel data '
                         f'({preprocess.one_line(e)})') from None
  if px.ndim != 2 or px.size == 0:
    raise UserInputError(f'{path}: expected one 2-D grayscale slice, got '
                         f'shape {px.shape} (multi-frame or colour)')
  hu = px * float(getattr(ds, 'RescaleSlope', 1) or 1) + float(
      getattr(ds, 'RescaleIntercept', 0) or 0)
  names = list(WINDOWS) if window == 'multi' else [window]
  planes = []
  for name in names:
    c, w = WINDOWS[name]
    x = np.clip((hu - (c - w / 2)) / w, 0, 1) * 255
    planes.append(np.rint(x).astype(np.uint8))
  meta = {'width': px.shape[1], 'height': px.shape[0],
          'mode': f'DICOM {getattr(ds, "BitsStored", "?")}-bit'}
  return np.stack(planes, axis=-1), meta


def decode(s: Scan, item: Item) -> tuple[np.ndarray, dict]:
  """Decodes one item at its own size -> (uint8 [H, W, C], meta).

  meta: {'width', 'height', 'mode'} of the original, for the data report.
  """
  if s.name == 'synthetic_head_ct':
    size = s.params['size']
    x = phantom.head_ct_phantom(size, item.label, s.params['seed'],
                                item.index)
    return x, {'width': size, 'height': size, 'mode': 'L'}
  if s.name == 'dicom':
    return _load_dicom(item.path, s.params['window'])
  if s.name in ('nifti', 'dicom_series'):
    from input_pipeline import volumes  # pylint: disable=g-import-not-at-top
    return volumes.decode(s, item)
  img = preprocess.open_image(item.path)
  meta = {'width': img.width, 'height': img.height, 'mode': img.mode}
  return preprocess.to_gray(img, item.path), meta


def load(s: Scan, item: Item, storage_size: int) -> tuple[np.ndarray, dict]:
  """Decodes one item -> (uint8 [S, S, C], {'width','height','mode'})."""
  x, meta = decode(s, item)
  return preprocess.to_square(x, storage_size), meta
