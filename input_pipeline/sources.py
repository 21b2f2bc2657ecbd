"""Source scanners: find every (id, label, file) and validate it up front.

`scan(data)` checks the folder structure and labels without decoding pixels
(cheap, so it runs on every `prepare` to compute the cache key);
`load(scan, item, storage_size)` decodes one item to the stored square.
Supported `data.name`s:
  synthetic_head_ct  procedural phantoms (`phantom.py`), no files.
  head_ct            DIR/labels.csv (`id, hemorrhage`) + DIR/images/NNN.png
                     (or the Kaggle zip layout DIR/head_ct/N.png).
  image_folder       DIR/<class>/*.{png,jpg,jpeg}; labels by sorted folder
                     name, data.positive_class names the positive folder.
  dicom              DIR/**/*.dcm + labels CSV (`id,label`, id = file stem).
  nifti              DIR/<patient>/*.nii[.gz] volumes (BraTS layout), one
                     item per chosen axial slice (`volumes.py`).
  dicom_series       DIR/<patient>/[<series>/]*.dcm series (`volumes.py`).
"""

import csv
import dataclasses
import hashlib
import os

import numpy as np

from input_pipeline import phantom
from input_pipeline import preprocess
from input_pipeline.errors import UserInputError

NAMES = ('synthetic_head_ct', 'head_ct', 'image_folder', 'dicom', 'nifti',
         'dicom_series')
IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
# Bump when preprocessing or the phantom generator changes: it is part of the
# cache key, so stale prepared datasets are not reused.
_VERSION = 3
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
        f.lower().endswith('.png') for f in os.listdir(folder)):
      break
  else:
    raise UserInputError(
        f'config.data.dir={data.dir!r}: no images/ or head_ct/ folder with '
        f'PNG files')
  files = {os.path.splitext(f)[0]: os.path.join(folder, f)
           for f in os.listdir(folder) if f.lower().endswith('.png')}
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
  classes = [d for d in os.listdir(root)
             if os.path.isdir(os.path.join(root, d)) and not d.startswith('.')]
  if not classes:
    raise UserInputError(
        f'config.data.dir={data.dir!r}: no class subfolders')
  class_names = _class_order(classes, data.positive_class, root)
  items = []
  for label, c in enumerate(class_names):
    folder = os.path.join(root, c)
    files = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
      raise UserInputError(f'{folder}: class {c!r} has no PNG/JPEG images')
    stems = {}
    for f in files:
      stem = os.path.splitext(f)[0]
      if stem in stems:  # a.png and a.jpg would share the id c/a
        raise UserInputError(
            f'{os.path.join(folder, f)}: same id as '
            f'{os.path.join(folder, stems[stem])}; rename or remove one')
      stems[stem] = f
      items.append(Item(f'{c}/{stem}', label, os.path.join(folder, f)))
  items = sorted(items, key=lambda it: it.id)
  _check_not_empty(items, class_names, root)
  return Scan('image_folder', items, class_names, 1, {})


def _scan_dicom(data) -> Scan:
  root = _check_dir(data)
  if data.window not in (*WINDOWS, 'multi'):
    raise UserInputError(
        f'config.data.window={data.window!r} is not one of '
        f'{[*WINDOWS, "multi"]}')
  csv_path = data.labels_csv or os.path.join(root, 'labels.csv')
  labels = _read_csv(csv_path, 'id', 'label')
  files = {}
  for dirpath, _, names in os.walk(root):
    for f in names:
      if f.lower().endswith('.dcm'):
        stem = os.path.splitext(f)[0]
        if stem in files:
          raise UserInputError(
              f'{os.path.join(dirpath, f)}: file stem {stem!r} is not unique')
        files[stem] = os.path.join(dirpath, f)
  rows = _match(labels, files, csv_path, root, '.dcm file')
  class_names = _class_order(list({lab for _, lab, _ in rows}),
                             data.positive_class, csv_path)
  if all(c.lstrip('-').isdigit() for c in class_names) and (
      not data.positive_class):
    class_names = sorted(class_names, key=int)
  index = {c: i for i, c in enumerate(class_names)}
  items = _sort_items([Item(stem, index[lab], path)
                       for stem, lab, path in rows])
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



def _load_dicom(path: str, window: str) -> tuple[np.ndarray, dict]:
  import pydicom  # pylint: disable=g-import-not-at-top

  try:
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.float32)
  except Exception as e:  # pydicom raises many types for broken files
    raise UserInputError(f'{path}: cannot read DICOM ({e})') from None
  if px.ndim != 2 or px.size == 0:
    raise UserInputError(f'{path}: expected one 2-D slice, got shape '
                         f'{px.shape}')
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
  return preprocess.to_gray(img), meta


def load(s: Scan, item: Item, storage_size: int) -> tuple[np.ndarray, dict]:
  """Decodes one item -> (uint8 [S, S, C], {'width','height','mode'})."""
  x, meta = decode(s, item)
  return preprocess.to_square(x, storage_size), meta
