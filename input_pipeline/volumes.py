"""Volume sources: NIfTI and DICOM series -> axial uint8 slices.

Two `data.name`s (called through `sources.scan` / `sources.decode`):
  nifti         DIR/<patient>/*.nii[.gz], e.g. the BraTS layout
                DIR/<patient>/<patient>_{t1,t1ce,t2,flair,seg}.nii.gz. A
                file's modality is its stem after the last '_'; 'seg' is the
                segmentation (nonzero = lesion). `data.modality` picks one
                modality, or a comma list stacked as channels ('' = the
                patient's only image volume).
  dicom_series  DIR/<patient>/[<series>/]*.dcm: each folder holding DICOM
                files (.dcm or .dicom in any case, or any file with the
                DICM preamble, e.g. extensionless PACS exports) is one
                series of 2-D slices, ordered along the slice normal by
                ImagePositionPatient (by InstanceNumber, taken as axial,
                where positions are absent); HU from rescale
                slope/intercept.

Every volume is oriented to axial (nibabel's closest canonical RAS+ axes)
and each axial slice is shown radiologically: anterior up, the patient's
right on the image's left; slice 0 is the most inferior. Intensities are
normalised per volume (`data.intensity`): HU windows as for `dicom`
(`data.window`; the default for DICOM CT) or percentiles (`data.percentiles`
of the volume's foreground voxels -> [0, 255]; the default for MRI and any
NIfTI). `data.slices` picks the slices that become images; slices with no
foreground voxel are never picked (blank slices of different patients would
be pixel duplicates and merge them into one split unit):
  all           every non-empty slice;
  middle:K      the K central slices of the non-empty extent;
  foreground:F  slices whose foreground mask covers >= fraction F;
  lesion:K      the K slices with the largest lesion area (ties and lesion-free
                volumes: nearest the middle first); needs segmentations.
The foreground is the first modality's voxels above its minimum (MRI) or
above -500 HU (CT). Labels: per slice from the segmentation (class 'lesion'
iff the slice has >= `data.min_lesion_pixels` lesion pixels) or per patient
from `data.patient_labels_csv` (columns `patient,label`; dicom_series
default DIR/labels.csv; nifti default: segmentations, else DIR/labels.csv).

Ids are `<patient>/slice_NNN` (`<patient>/<series>/slice_NNN` for nested
DICOM series), NNN the axial index; `Item.patient` carries the patient, so
the splits keep all of a patient's slices in one role (`splits.py`).

Cost: `scan` needs each volume's per-slice foreground and lesion areas; they
are computed once per volume and kept as JSON in `<tfds_dir>/volume_index`,
keyed by the volume's files (name, size, mtime) and the settings they depend
on, so the many `prepare`s of a study read no voxels. `decode` keeps the
last normalised volume in memory: the builder asks for slices in id order,
so each volume is read once per preparation.
"""

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from input_pipeline import files
from input_pipeline import sources
from input_pipeline.errors import UserInputError

# pylint: disable=protected-access  # sources' validation helpers are shared.

NAMES = ('nifti', 'dicom_series')
SEG_CLASSES = ('no_lesion', 'lesion')
INTENSITIES = ('auto', 'window', 'percentile')
SLICE_KINDS = ('all', 'middle', 'foreground', 'lesion')
# Bump when the per-volume index (foreground, lesion areas) changes meaning.
_INDEX_VERSION = 1
_CT_BODY_HU = -500.0  # CT foreground: voxels above this (air is -1000)
_NIFTI_EXTS = ('.nii.gz', '.nii')


@dataclasses.dataclass(frozen=True)
class Volume:
  """One volume: a NIfTI patient folder or one DICOM series."""
  key: str  # id prefix: '<patient>' or '<patient>/<series>'
  patient: str
  kind: str  # 'nifti' | 'dicom_series'
  files: tuple[str, ...]  # nifti: one file per channel; dicom: the slices
  seg: str = ''  # nifti segmentation ('' = none)


def parse_slices(spec: str) -> tuple[str, float]:
  """'all' | 'middle:K' | 'foreground:F' | 'lesion:K' -> (kind, value)."""
  kind, _, arg = str(spec).strip().partition(':')
  try:
    if kind == 'all' and not arg:
      return kind, 0.0
    if kind in ('middle', 'lesion') and int(arg) >= 1:
      return kind, float(int(arg))
    if kind == 'foreground' and 0 < float(arg) <= 1:
      return kind, float(arg)
  except ValueError:
    pass
  raise UserInputError(
      f"config.data.slices={spec!r} is not 'all', 'middle:K', "
      f"'foreground:F' (0 < F <= 1) or 'lesion:K' (K >= 1)")


def select_slices(kind: str, value: float, foreground: np.ndarray,
                  lesion: np.ndarray | None = None) -> list[int]:
  """Sorted axial indices picked by `data.slices` (see module docstring).

  foreground: fraction of each slice's pixels in the foreground mask;
  lesion: lesion pixels per slice (needed for 'lesion').
  """
  fg = np.asarray(foreground, np.float64)
  nonempty = np.nonzero(fg > 0)[0]
  if not len(nonempty):
    return []
  if kind == 'all':
    return nonempty.tolist()
  if kind == 'foreground':
    return np.nonzero(fg >= value)[0].tolist()
  k = int(value)
  lo, hi = int(nonempty[0]), int(nonempty[-1])
  if kind == 'middle':
    start = max(lo, (lo + hi + 1 - k) // 2)
    return [i for i in range(start, min(hi + 1, start + k)) if fg[i] > 0]
  if lesion is None:
    raise ValueError("slices='lesion:K' needs lesion areas")
  mid = (lo + hi) / 2
  order = sorted(nonempty.tolist(),
                 key=lambda i: (-int(lesion[i]), abs(i - mid), i))
  return sorted(order[:k])


# ---------------------------------------------------------------- reading


def _axial(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """Voxels [I, J, K] in any orientation -> axial slices [S, A, R].

  Reoriented to RAS+ (nibabel closest canonical axes, no resampling), then
  per slice: rows anterior -> posterior, columns patient right -> left.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  ornt = nib.orientations.io_orientation(affine)
  ras = nib.orientations.apply_orientation(data, ornt)
  return np.ascontiguousarray(np.flip(ras, (0, 1)).transpose(2, 1, 0))


def _open_nifti(path: str):
  """(nibabel image, 3-D shape); UserInputError naming the file."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  try:
    img = nib.load(path)
  except Exception as e:  # nibabel raises many types for broken files
    raise UserInputError(f'{path}: cannot read NIfTI ({e})') from None
  hdr = img.header
  if isinstance(hdr, nib.Nifti1Header) and int(hdr['sform_code']) == 0 and (
      int(hdr['qform_code']) == 0):
    raise UserInputError(
        f'{path}: no affine (qform_code and sform_code are 0), so the '
        f'slice orientation is unknown')
  shape = tuple(int(s) for s in img.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3 or min(shape) < 1:
    raise UserInputError(f'{path}: expected a 3-D volume, got shape '
                         f'{tuple(img.shape)}')
  a = np.asarray(img.affine, np.float64)
  if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-9:
    raise UserInputError(f'{path}: degenerate affine (zero or non-finite '
                         f'voxel spacing)')
  return img, shape


def _voxels(img, shape, path: str) -> np.ndarray:
  try:
    return np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
  except Exception as e:  # truncated .gz, short file, ...
    raise UserInputError(f'{path}: cannot read NIfTI voxels ({e})') from None


def _check_grid(path: str, img, shape, ref, what: str,
                affine_message: str) -> None:
  """UserInputError unless `img` lies on the voxel grid of ref (path, shape,
  affine): the same shape and the same affine within 1e-2."""
  if shape != ref[1]:
    raise UserInputError(f'{path}: {what} of shape {shape}, but {ref[0]} is '
                         f'{ref[1]}')
  if not np.allclose(img.affine, ref[2], atol=1e-2):
    raise UserInputError(f'{path}: {affine_message}')


def _read_nifti(vol: Volume, with_seg: bool):
  """-> ([(axial float32 [S, A, R], path)], lesion bool [S, A, R] | None)."""
  chans, ref = [], None
  for path in vol.files:
    img, shape = _open_nifti(path)
    if ref is None:
      ref = (path, shape, img.affine)
    else:
      _check_grid(path, img, shape, ref, 'volume', 'affine differs from '
                  f'{ref[0]} (volumes of one patient must share one voxel '
                  'grid)')
    chans.append((_axial(_voxels(img, shape, path), ref[2]), path))
  lesion = None
  if with_seg and vol.seg:
    img, shape = _open_nifti(vol.seg)
    _check_grid(vol.seg, img, shape, ref, 'segmentation',
                f'segmentation affine differs from {ref[0]} (not on the '
                'same voxel grid)')
    lesion = _axial(np.rint(_voxels(img, shape, vol.seg)) != 0, ref[2])
  return chans, lesion


def _series_geometry(vol: Volume, heads: list) -> tuple[np.ndarray,
                                                        np.ndarray]:
  """(slice order, RAS affine of [col, row, slice]) of a DICOM series.

  UserInputError on mixed sizes or orientations, two slices at one
  position, a gap (missing slices) or uneven spacing.
  """
  folder = os.path.dirname(vol.files[0])
  name = lambda i: os.path.basename(vol.files[i])
  first = heads[0]
  shape = (int(first.get('Rows', 0)), int(first.get('Columns', 0)))
  for i, ds in enumerate(heads):
    if int(ds.get('NumberOfFrames', 1) or 1) > 1:
      raise UserInputError(f'{vol.files[i]}: multi-frame DICOM; a series '
                           f'needs one slice per file')
    if (int(ds.get('Rows', 0)), int(ds.get('Columns', 0))) != shape:
      raise UserInputError(
          f'{vol.files[i]}: {ds.get("Rows")}x{ds.get("Columns")} pixels in '
          f'a series of {shape[0]}x{shape[1]} ({name(0)})')
  iops = [ds.get('ImageOrientationPatient') for ds in heads]
  ipps = [ds.get('ImagePositionPatient') for ds in heads]
  if all(v is not None for v in iops + ipps):
    iop = np.array(iops[0], np.float64)
    for i, o in enumerate(iops):
      if not np.allclose(np.array(o, np.float64), iop, atol=1e-3):
        raise UserInputError(f'{vol.files[i]}: ImageOrientationPatient '
                             f'differs from {name(0)} in the same series')
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pos = np.array(ipps, np.float64)
    depth, unit = pos @ normal, 'mm'
  else:
    nums = [ds.get('InstanceNumber') for ds in heads]
    if any(n is None for n in nums):
      raise UserInputError(
          f'{folder}: slices need ImagePositionPatient and '
          f'ImageOrientationPatient, or InstanceNumber, to be ordered')
    row, col, normal = np.eye(3)
    pos, depth, unit = None, np.array(nums, np.float64), 'instance numbers'
  order = np.argsort(depth, kind='stable')
  steps = np.diff(depth[order])
  dz = float(first.get('SpacingBetweenSlices') or first.get(
      'SliceThickness') or 1.0)
  if len(steps):
    j = int(np.argmin(steps))
    if steps[j] <= 1e-6:
      raise UserInputError(f'{vol.files[order[j]]}: same slice position as '
                           f'{name(order[j + 1])}')
    m = float(np.median(steps))
    j = int(np.argmax(steps))
    if steps[j] > 1.5 * m:
      raise UserInputError(
          f'{folder}: missing slice(s) between {name(order[j])} and '
          f'{name(order[j + 1])} (gap {steps[j]:g} {unit}, spacing {m:g})')
    bad = np.nonzero(np.abs(steps - m) > 1e-2 * m + 1e-3)[0]
    if len(bad):
      raise UserInputError(
          f'{folder}: inconsistent slice spacing ({steps.min():g} to '
          f'{steps.max():g} {unit}) at {name(order[bad[0] + 1])}')
    if pos is not None:
      dz = m
  spacing = first.get('PixelSpacing') or (1.0, 1.0)  # (row, column) mm
  lps = np.eye(4)
  lps[:3, 0] = row * float(spacing[1])
  lps[:3, 1] = col * float(spacing[0])
  lps[:3, 2] = normal * dz
  if pos is not None:
    lps[:3, 3] = pos[order[0]]
  return order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_series(vol: Volume):
  """-> ([(axial HU float32 [S, A, R], folder)], DICOM Modality tag)."""
  import pydicom  # pylint: disable=g-import-not-at-top
  heads = []
  for path in vol.files:
    try:
      heads.append(pydicom.dcmread(path))
    except Exception as e:  # pydicom raises many types for broken files
      raise UserInputError(f'{path}: cannot read DICOM ({e})') from None
  order, affine = _series_geometry(vol, heads)
  planes = []
  for i in order:
    ds = heads[i]
    try:
      px = ds.pixel_array.astype(np.float32)
    except Exception as e:  # missing pixel data, unsupported compression
      raise UserInputError(f'{vol.files[i]}: cannot read DICOM pixels '
                           f'({e})') from None
    if px.ndim != 2:
      raise UserInputError(f'{vol.files[i]}: expected one 2-D slice, got '
                           f'shape {px.shape}')
    slope = float(ds.get('RescaleSlope', 1) or 1)
    planes.append(px * slope + float(ds.get('RescaleIntercept', 0) or 0))
  # [rows, cols, slices] -> [cols, rows, slices], the axes of the affine.
  data = np.stack(planes, axis=-1).transpose(1, 0, 2)
  folder = os.path.dirname(vol.files[0])
  return [(_axial(data, affine), folder)], str(heads[0].get('Modality', ''))


def _read(vol: Volume, with_seg: bool):
  """-> (channels [(axial float32, path)], lesion | None, mode, is_ct)."""
  if vol.kind == 'nifti':
    chans, lesion = _read_nifti(vol, with_seg)
    mods = [_modality(p) for p in vol.files]
    return chans, lesion, 'NIfTI ' + '+'.join(mods), False
  chans, tag = _read_series(vol)
  return chans, None, f'DICOM series {tag or "?"}', tag.upper() == 'CT'


def _foreground(x: np.ndarray, hu: bool) -> np.ndarray:
  return x > _CT_BODY_HU if hu else x > x.min()


def _normalise(chans, hu: bool, params: dict) -> np.ndarray:
  """Channels of one volume -> uint8 [S, H, W, C], per volume and channel."""
  planes = []
  for x, path in chans:
    if params['intensity'] == 'window':
      window = params['window']
      for name in (list(sources.WINDOWS) if window == 'multi' else [window]):
        c, w = sources.WINDOWS[name]
        planes.append(np.clip((x - (c - w / 2)) / w, 0, 1))
    else:
      fg = _foreground(x, hu)
      if not fg.any():
        raise UserInputError(f'{path}: the volume is constant')
      lo, hi = np.percentile(x[fg], params['percentiles'])
      hi = hi if hi > lo else lo + 1.0
      planes.append(np.clip((x - lo) / (hi - lo), 0, 1))
  return np.rint(np.stack(planes, axis=-1) * 255).astype(np.uint8)


# ------------------------------------------------------------ index (cache)


def _cache_dir(data) -> str:
  from input_pipeline import dataset  # pylint: disable=g-import-not-at-top
  return os.path.join(data.tfds_dir or dataset.default_tfds_dir(),
                      'volume_index')


def _stat_key(paths) -> str:
  h = hashlib.sha256()
  for p in paths:
    st = os.stat(p)
    h.update(f'{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|'.encode())
  return h.hexdigest()


def _index(vol: Volume, intensity: str, cache_dir: str) -> dict:
  """Per-slice foreground fraction and lesion pixels of one volume (cached).

  -> {'shape': [S, H, W], 'foreground': [S floats], 'lesion': [S ints] or
  None, 'mode': str, 'ct': bool}.
  """
  key = hashlib.sha256(
      f'{_INDEX_VERSION}|{vol.kind}|{intensity}|{vol.seg != ""}|'
      f'{_stat_key(vol.files + ((vol.seg,) if vol.seg else ()))}'.encode()
  ).hexdigest()[:24]
  path = os.path.join(cache_dir, f'{key}.json')
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        return json.load(f)
    except (OSError, ValueError):
      pass  # unreadable: recompute and overwrite
  chans, lesion, mode, is_ct = _read(vol, with_seg=True)
  x = chans[0][0]
  hu = is_ct or (vol.kind == 'nifti' and intensity == 'window')
  idx = {'shape': list(x.shape), 'mode': mode, 'ct': is_ct,
         'foreground': np.round(_foreground(x, hu).mean((1, 2)),
                                6).tolist(),
         'lesion': None if lesion is None else lesion.sum((1, 2)).tolist()}
  files.write_json(path, idx)
  return idx


# ----------------------------------------------------------------- scanning


def _modality(path: str) -> str:
  base = os.path.basename(path)
  stem = next(base[:-len(e)] for e in _NIFTI_EXTS if base.lower().endswith(e))
  return stem.rsplit('_', 1)[-1].lower()


def _nifti_volumes(root: str, mods: list[str]) -> list[Volume]:
  stray = sorted(f for f in os.listdir(root)
                 if f.lower().endswith(_NIFTI_EXTS))
  if stray:
    raise UserInputError(
        f'{os.path.join(root, stray[0])}: volumes go in one folder per '
        f'patient (DIR/<patient>/<patient>_<modality>.nii.gz)')
  patients = sorted(d for d in os.listdir(root) if not d.startswith('.')
                    and os.path.isdir(os.path.join(root, d)))
  if not patients:
    raise UserInputError(f'config.data.dir={root!r}: no patient folders')
  vols = []
  for p in patients:
    folder = os.path.join(root, p)
    found = {}
    for f in sorted(os.listdir(folder)):
      if f.lower().endswith(_NIFTI_EXTS):
        path = os.path.join(folder, f)
        if _modality(path) in found:
          raise UserInputError(f'{path}: a second {_modality(path)!r} volume '
                               f'beside {found[_modality(path)]}')
        found[_modality(path)] = path
    seg = found.pop('seg', '')
    if not found:
      raise UserInputError(f'{folder}: no image volume (.nii or .nii.gz)')
    if mods:
      missing = [m for m in mods if m not in found]
      if missing:
        raise UserInputError(f'{folder}: no {missing[0]!r} volume (found '
                             f'{sorted(found)}); see config.data.modality')
      chosen = tuple(found[m] for m in mods)
    elif len(found) == 1:
      chosen = tuple(found.values())
    else:
      raise UserInputError(
          f'{folder}: several volumes ({", ".join(sorted(found))}); set '
          f'config.data.modality to one of them or a comma list')
    vols.append(Volume(p, p, 'nifti', chosen, seg))
  return vols


def _series_volumes(root: str) -> list[Volume]:
  """One Volume per folder holding DICOM files: a DICOM extension in any
  case, or the DICM preamble (as the `dicom` source finds them; hidden
  files, DICOMDIR and other OS leftovers skipped)."""
  series: dict[str, list[str]] = {}
  for rel in sources.walk_files(root):
    path = os.path.join(root, rel)
    if rel.lower().endswith(sources.DICOM_EXTS) or sources.is_dicom_file(
        path):
      series.setdefault(rel.rpartition('/')[0], []).append(path)
  if '' in series:
    raise UserInputError(
        f'{series[""][0]}: series go in one folder per patient '
        f'(DIR/<patient>/[<series>/]*.dcm)')
  if not series:
    raise UserInputError(f'config.data.dir={root!r}: no DICOM files (.dcm, '
                         "or the 'DICM' preamble) in patient folders")
  return [Volume(key, key.split('/')[0], 'dicom_series', tuple(paths))
          for key, paths in sorted(series.items())]


def _patient_labels(csv_path: str, patients: dict[str, str], root: str,
                    positive: str) -> tuple[list[str], dict[str, int]]:
  """(class names, {patient: label}) from a `patient,label` CSV."""
  rows = sources._read_csv(csv_path, 'patient', 'label')
  matched = sources._match(rows, patients, csv_path, root, 'patient folder')
  names = sources._class_order(list({lab for _, lab, _ in matched}),
                               positive, csv_path)
  if all(c.lstrip('-').isdigit() for c in names) and not positive:
    names = sorted(names, key=int)
  index = {c: i for i, c in enumerate(names)}
  return names, {p: index[lab] for p, lab, _ in matched}


def _settings(data) -> dict:
  kind, value = parse_slices(data.slices)
  if data.intensity not in INTENSITIES:
    raise UserInputError(f'config.data.intensity={data.intensity!r} is not '
                         f'one of {list(INTENSITIES)}')
  if data.window not in (*sources.WINDOWS, 'multi'):
    raise UserInputError(f'config.data.window={data.window!r} is not one of '
                         f'{[*sources.WINDOWS, "multi"]}')
  pct = tuple(float(v) for v in data.percentiles)
  if len(pct) != 2 or not 0 <= pct[0] < pct[1] <= 100:
    raise UserInputError(f'config.data.percentiles={data.percentiles} must '
                         f'be (lo, hi) with 0 <= lo < hi <= 100')
  if int(data.min_lesion_pixels) < 1:
    raise UserInputError(f'config.data.min_lesion_pixels='
                         f'{data.min_lesion_pixels} must be >= 1')
  mods = [m.strip().lower() for m in str(data.modality).split(',')
          if m.strip()]
  if 'seg' in mods or len(set(mods)) != len(mods):
    raise UserInputError(f'config.data.modality={data.modality!r}: list each '
                         f'image modality once (not seg)')
  if mods and data.name != 'nifti':
    raise UserInputError(f'config.data.modality={data.modality!r} applies '
                         f'to nifti only')
  return {'slices': (kind, value), 'modalities': mods, 'percentiles': pct}


def scan(data) -> sources.Scan:
  """Validates a nifti / dicom_series source; one Item per chosen slice."""
  root = sources._check_dir(data)
  st = _settings(data)
  vols = (_nifti_volumes(root, st['modalities']) if data.name == 'nifti'
          else _series_volumes(root))
  csv_path = data.patient_labels_csv
  no_seg = [v for v in vols if not v.seg]
  if data.name == 'nifti' and not csv_path and no_seg:
    if len(no_seg) < len(vols):
      raise UserInputError(
          f'{os.path.join(root, no_seg[0].key)}: no segmentation '
          f'(<patient>_seg.nii.gz) while other patients have one; add it or '
          f'set config.data.patient_labels_csv')
    csv_path = os.path.join(root, 'labels.csv')
    if not os.path.isfile(csv_path):
      raise UserInputError(
          f'{root}: no segmentations (<patient>_seg.nii.gz) for per-slice '
          f'labels and no labels.csv (patient,label); see '
          f'config.data.patient_labels_csv')
  elif data.name == 'dicom_series' and not csv_path:
    csv_path = os.path.join(root, 'labels.csv')
  if st['slices'][0] == 'lesion' and (data.name != 'nifti' or no_seg):
    raise UserInputError(
        f'config.data.slices={data.slices!r} needs a segmentation per '
        f'patient (nifti: DIR/<patient>/<patient>_seg.nii.gz)')
  if csv_path:
    patients = {v.patient: os.path.join(root, v.patient) for v in vols}
    class_names, by_patient = _patient_labels(
        csv_path, patients, root, data.positive_class)
  else:
    class_names = list(SEG_CLASSES)
  cache = _cache_dir(data)
  items, volumes, cts = [], {}, set()
  for v in vols:
    idx = _index(v, data.intensity, cache)
    cts.add(idx['ct'])
    lesion = idx['lesion']
    picked = select_slices(*st['slices'], idx['foreground'], lesion)
    if not picked:
      logging.warning('%s: no slice selected by data.slices=%r', v.key,
                      data.slices)
    path = os.path.join(root, *v.key.split('/'))
    volumes[path] = v
    width = max(3, len(str(idx['shape'][0] - 1)))
    for k in picked:
      label = (by_patient[v.patient] if csv_path else
               int(lesion[k] >= int(data.min_lesion_pixels)))
      items.append(sources.Item(f'{v.key}/slice_{k:0{width}d}', label, path,
                                k, v.patient))
  if len(cts) > 1:
    raise UserInputError(f'{root}: mixes CT and non-CT series; their '
                         f'intensities cannot be normalised alike')
  items = sources._sort_items(items)
  if not items:
    raise UserInputError(f'{root}: config.data.slices={data.slices!r} '
                         f'selects no slice')
  sources._check_not_empty(items, class_names, csv_path or root)
  intensity = data.intensity
  if intensity == 'auto':
    intensity = 'window' if cts == {True} else 'percentile'
  channels = len(vols[0].files) if data.name == 'nifti' else 1
  if intensity == 'window' and data.window == 'multi':
    channels *= len(sources.WINDOWS)
  params = {'slices': str(data.slices), 'modality': ','.join(st['modalities']),
            'intensity': intensity, 'window': data.window,
            'percentiles': st['percentiles'],
            'files': _stat_key(sorted({p for v in vols
                                       for p in v.files + (v.seg,) if p}))}
  return sources.Scan(data.name, items, class_names, channels, params,
                      volumes)


# ----------------------------------------------------------------- decoding

# The last normalised volume, {(path, params): (uint8 [S, H, W, C], mode)}.
_LAST: dict = {}


def decode(s: sources.Scan, item: sources.Item) -> tuple[np.ndarray, dict]:
  """One slice of a volume source -> (uint8 [H, W, C], meta)."""
  key = (item.path, repr(sorted(s.params.items())))
  if key not in _LAST:
    _LAST.clear()  # one volume at a time: the builder goes in id order
    vol = s.volumes[item.path]
    chans, _, mode, is_ct = _read(vol, with_seg=False)
    hu = is_ct or (vol.kind == 'nifti' and s.params['intensity'] == 'window')
    _LAST[key] = (_normalise(chans, hu, s.params), mode)
  x, mode = _LAST[key]
  return x[item.index].copy(), {'width': x.shape[2], 'height': x.shape[1],
                                'mode': mode}
