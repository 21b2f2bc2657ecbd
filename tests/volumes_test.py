"""Tests for input_pipeline.volumes and patient-level splits.

Every volume is synthetic and written here (nibabel, pydicom); `write_brats`
also makes the BraTS-like folder for the data and study commands:

  python -c "import sys; sys.path.insert(0, 'tests'); import volumes_test; \\
      volumes_test.write_brats('/tmp/brats13', 12)"
"""

import os

import input_pipeline_testlib as lib
import numpy as np
import pytest

from input_pipeline import dataset
from input_pipeline import report
from input_pipeline import splits
from input_pipeline import volumes
from input_pipeline.errors import UserInputError

nib = pytest.importorskip('nibabel')

# BraTS-like modalities: (brain, lesion) intensity.
MODALITIES = {'t1': (80, 50), 't1ce': (90, 180), 't2': (120, 200),
              'flair': (100, 230)}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ras_from_display(d: np.ndarray) -> np.ndarray:
  """[S, A, R] display slices -> RAS+ voxels [x, y, z] (inverse of _axial)."""
  return np.flip(d.transpose(2, 1, 0), (0, 1))


def write_brats(root, n_patients=10, shape=(32, 36, 20), seed=0,
                lesion_every=3):
  """DIR/<patient>/<patient>_{t1,t1ce,t2,flair,seg}.nii.gz, int16 volumes.

  An ellipsoid "brain" with noise; a spherical lesion (seg label 1, core 4)
  in every patient whose index is not a multiple of `lesion_every`. Even
  patients are stored LPS, odd ones RAS (the reader must orient both).
  """
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape],
                              indexing='ij')).astype(np.float32)
  for p in range(n_patients):
    name = f'patient{p:03d}'
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    c = (np.array(shape) - 1) / 2 + rng.uniform(-1.5, 1.5, 3)
    r = np.array(shape) * rng.uniform(0.38, 0.46, 3)
    d2 = (((grid - c[:, None, None, None]) / r[:, None, None, None])
          ** 2).sum(0)
    brain = d2 <= 1
    seg = np.zeros(shape, np.uint8)
    if p % lesion_every:
      lc = c + rng.uniform(-0.3, 0.3, 3) * r
      rad = rng.uniform(3, 5)
      dist = np.sqrt(((grid - lc[:, None, None, None]) ** 2).sum(0))
      seg[(dist <= rad) & brain] = 1
      seg[(dist <= rad / 2) & brain] = 4
    affine = LPS if p % 2 == 0 else np.eye(4)
    for mod, (base, les) in MODALITIES.items():
      vol = np.where(brain, base * (1.2 - 0.4 * d2) +
                     rng.normal(0, 6, shape), 0)
      vol = np.where(seg > 0, les + rng.normal(0, 6, shape), vol)
      nib.save(nib.Nifti1Image(np.clip(vol, 0, None).astype(np.int16),
                               affine),
               os.path.join(folder, f'{name}_{mod}.nii.gz'))
    nib.save(nib.Nifti1Image(seg, affine),
             os.path.join(folder, f'{name}_seg.nii.gz'))
  return str(root)


def write_series(folder, hu, spacing=2.5, positions=None, names=None,
                 modality='CT'):
  """hu [S, rows, cols] -> one axial DICOM file per slice (LPS, z up)."""
  from pydicom.uid import generate_uid  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  n = len(hu)
  positions = (positions if positions is not None
               else [spacing * k for k in range(n)])
  names = names or [f'im{k:03d}.dcm' for k in range(n)]
  series = generate_uid()
  for k in range(n):
    lib.write_dicom(
        os.path.join(folder, names[k]), hu[k], modality=modality,
        SeriesInstanceUID=series, InstanceNumber=k + 1,
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[-40.0, -40.0, float(positions[k])],
        PixelSpacing=[1.0, 1.0], SliceThickness=spacing)


def _ct_volume(n=8, size=24, seed=0, bleed=False):
  """[S, rows, cols] HU: air, a body ellipse (40 HU) shrinking at the ends,
  with fat (-100 HU) and dense (300 HU) blobs placed per seed, so that
  patients are no near-duplicates of each other."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
  hu = np.full((n, size, size), -1000.0)
  ax = rng.uniform(0.7, 1.0, 2)
  blobs = [(rng.uniform(-5, 5, 2), rng.uniform(2, 4), v)
           for v in (-100.0, 300.0, -100.0)]
  for k in range(n):
    rad = size * (0.2 + 0.25 * np.sin(np.pi * (k + 0.5) / n))
    body = (xx / ax[0]) ** 2 + (yy / ax[1]) ** 2 <= rad ** 2
    hu[k][body] = 40 + rng.normal(0, 3)
    for (cy, cx), r, v in blobs:
      hu[k][body & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2)] = v
  hu[:, 2, 3] = 1000.0  # anterior (row 2), patient right (column 3)
  if bleed:
    hu[n // 2, 10:14, 10:14] = 75.0
  return hu


def write_series_set(root, n_patients=6):
  """DIR/<patient>/series1/*.dcm + labels.csv (patient,label)."""
  rows = ['patient,label']
  for p in range(n_patients):
    name = f'case{p:02d}'
    write_series(os.path.join(root, name, 'series1'),
                 _ct_volume(seed=p, bleed=p % 2 == 1))
    rows.append(f'{name},{p % 2}')
  with open(os.path.join(root, 'labels.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return str(root)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def brats(tmp_path_factory):
  return write_brats(tmp_path_factory.mktemp('brats'))


def _cfg(tfds_dir, root, **kw):
  kw.setdefault('name', 'nifti')
  kw.setdefault('modality', 'flair' if kw['name'] == 'nifti' else '')
  return lib.data_config(tfds_dir, dir=root, **kw)


def _check_patients(manifest, ids, patients):
  """No patient and no duplicate group in two roles; tests partition ids."""
  tests = []
  for fold in manifest['folds']:
    role = {i: r for r, members in fold.items() for i in members}
    assert sorted(role) == sorted(ids)
    by_patient = {}
    for i, p in zip(ids, patients):
      by_patient.setdefault(p, set()).add(role[i])
    assert all(len(r) == 1 for r in by_patient.values()), by_patient
    for g in manifest['duplicate_groups']:
      assert len({role[i] for i in g}) == 1
    tests += fold['test']
  assert sorted(tests) == sorted(ids)


# ------------------------------------------------------- selection, geometry


def test_parse_and_select_slices():
  fg = np.array([0, 0.05, 0.3, 0.6, 0.8, 0.6, 0.3, 0.05, 0])
  lesion = np.array([0, 0, 0, 5, 40, 20, 0, 0, 0])
  sel = lambda spec: volumes.select_slices(*volumes.parse_slices(spec), fg,
                                           lesion)
  assert sel('all') == [1, 2, 3, 4, 5, 6, 7]  # blank ends never picked
  assert sel('middle:3') == [3, 4, 5]
  assert sel('middle:100') == [1, 2, 3, 4, 5, 6, 7]
  assert sel('foreground:0.5') == [3, 4, 5]
  assert sel('lesion:2') == [4, 5]
  assert sel('lesion:4') == [2, 3, 4, 5]  # then nearest the middle, lower
  no_lesion = volumes.select_slices('lesion', 2, fg, np.zeros(9))
  assert no_lesion == [3, 4]
  for bad in ('some', 'middle:0', 'middle:x', 'foreground:0',
              'foreground:1.5', 'lesion', 'all:3'):
    with pytest.raises(UserInputError, match='config.data.slices'):
      volumes.parse_slices(bad)


def test_axial_orientation_from_any_storage():
  rng = np.random.default_rng(0)
  display = rng.normal(size=(5, 6, 7)).astype(np.float32)  # [S, A, R]
  ras = _ras_from_display(display)
  lps = np.flip(ras, (0, 1))
  sra = ras.transpose(2, 0, 1)  # stored as (S, R, A) voxel axes
  perm = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.]])
  for data, affine in ((ras, np.eye(4)), (lps, LPS), (sra, perm)):
    np.testing.assert_array_equal(volumes._axial(data, affine), display)


def test_index_is_cached_and_scan_reads_no_voxels(tfds_dir, brats,
                                                  monkeypatch):
  d = _cfg(tfds_dir, brats)
  first = volumes.scan(d)

  def no_read(*args, **kwargs):
    raise AssertionError('scan read voxels although the index is cached')

  monkeypatch.setattr(volumes, '_read', no_read)
  second = volumes.scan(d)
  assert [it.id for it in second.items] == [it.id for it in first.items]
  assert second.params == first.params


# --------------------------------------------------------------- nifti


def test_nifti_brats_slices_labels_and_patient_folds(tfds_dir, brats,
                                                     tmp_path):
  d = _cfg(tfds_dir, brats, slices='all', num_folds=3)
  p = dataset.prepare(d, str(tmp_path))
  assert p.class_names == ['no_lesion', 'lesion'] and p.channels == 1
  assert all(i.count('/') == 1 and '/slice_' in i for i in p.ids)
  patients = p.manifest['patients']
  assert sorted(set(patients.values())) == [f'patient{k:03d}'
                                            for k in range(10)]
  assert all(i.startswith(patients[i] + '/') for i in p.ids)
  # Lesions only where written (patients 0, 3, 6, 9 have none).
  pos = {patients[i] for i, y in zip(p.ids, p.labels) if y == 1}
  assert pos == {f'patient{k:03d}' for k in range(10) if k % 3}
  _check_patients(p.manifest, p.ids, [patients[i] for i in p.ids])
  # Repeated k-fold keeps patients together too.
  for seed in (1, 2, 3):
    q = p.with_split_seed(seed)
    _check_patients(q.manifest, q.ids, [patients[i] for i in q.ids])
  x = p.source[0]['image']
  assert x.shape == (64, 64, 1) and x.dtype == np.uint8
  text = report.render(p, d)
  assert '- patients: 10' in text
  assert '## Patients' in text and 'Slices (patients)' in text


def test_nifti_lesion_slices_threshold_and_channels(tfds_dir, brats):
  d = _cfg(tfds_dir, brats, slices='lesion:3', modality='flair,t1ce,t2',
           min_lesion_pixels=10)
  p = dataset.prepare(d)
  assert p.channels == 3 and p.source[0]['image'].shape == (64, 64, 3)
  by_patient = {}
  for i in p.ids:
    by_patient.setdefault(i.split('/')[0], []).append(i)
  assert all(len(v) == 3 for v in by_patient.values())
  # The segmentation's largest-area slices are picked, and only slices
  # with >= 10 lesion pixels are positive.
  scan = volumes.scan(d)
  for it in scan.items:
    v = scan.volumes[it.path]
    idx = volumes._index(v, d.intensity, volumes._cache_dir(d))
    areas = np.array(idx['lesion'])
    assert it.label == int(areas[it.index] >= 10)
    if areas.max() > 0:
      assert areas[it.index] >= np.sort(areas)[-3]


def test_nifti_percentile_normalisation_per_volume(tfds_dir, brats):
  d = _cfg(tfds_dir, brats, slices='middle:1')
  scan = volumes.scan(d)
  x, meta = volumes.decode(scan, scan.items[0])
  assert meta['mode'] == 'NIfTI flair' and x.dtype == np.uint8
  assert (meta['height'], meta['width']) == (36, 32)
  assert x.min() == 0 and x.max() == 255  # background 0, top percentile


def test_nifti_patient_csv_labels(tfds_dir, brats, tmp_path):
  csv = tmp_path / 'patients.csv'
  csv.write_text('patient,label\n' + ''.join(
      f'patient{k:03d},{"yes" if k < 4 else "no"}\n' for k in range(10)))
  d = _cfg(tfds_dir, brats, slices='middle:2', patient_labels_csv=str(csv),
           positive_class='yes')
  p = dataset.prepare(d)
  assert p.class_names == ['no', 'yes']
  for i, y in zip(p.ids, p.labels):
    assert y == int(int(i[7:10]) < 4)


# --------------------------------------------------------- dicom_series


def test_dicom_series_order_window_and_labels(tfds_dir, tmp_path):
  root = write_series_set(str(tmp_path / 'series'))
  # Files named against the slice order: ordering must use the positions.
  hu = _ct_volume(seed=9)
  write_series(str(tmp_path / 'series' / 'case99' / 'a'), hu,
               names=[f'x{9 - k}.dcm' for k in range(8)])
  with open(os.path.join(root, 'labels.csv'), 'a') as f:
    f.write('case99,0\n')
  d = _cfg(tfds_dir, root, name='dicom_series', slices='foreground:0.1',
           window='brain')
  scan = volumes.scan(d)
  assert scan.params['intensity'] == 'window' and scan.channels == 1
  assert {it.patient for it in scan.items} == {
      f'case{p:02d}' for p in range(6)} | {'case99'}
  ids = [it.id for it in scan.items if it.patient == 'case99']
  assert ids[0] == 'case99/a/slice_000'
  item = next(it for it in scan.items if it.id == 'case99/a/slice_003')
  x, meta = volumes.decode(scan, item)
  assert meta['mode'] == 'DICOM series CT'
  # Axial LPS DICOM is already radiological: the slice is the pixel array,
  # brain-windowed (40 / 80): 40 HU -> 128, air -> 0, bone -> 255.
  expected = np.rint(np.clip(np.rint(hu[3]) / 80, 0, 1) * 255)  # int16
  np.testing.assert_array_equal(x[..., 0], expected)
  assert x[2, 3, 0] == 255
  p = dataset.prepare(d)
  _check_patients(p.manifest, p.ids,
                  [p.manifest['patients'][i] for i in p.ids])
  multi = volumes.scan(_cfg(tfds_dir, root, name='dicom_series',
                            window='multi'))
  assert multi.channels == 3


# ------------------------------------------------- patient-level splits


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('policy', ['group', 'error'])
def test_no_patient_in_two_roles(seed, policy):
  rng = np.random.default_rng(seed)
  ids, labels, patients = [], [], []
  for p in range(24):
    for k in range(int(rng.integers(3, 12))):
      ids.append(f'p{p:02d}/slice_{k:03d}')
      patients.append(f'p{p:02d}')
      labels.append(int(rng.random() < (0.6 if p % 3 else 0.05)))
  labels = np.array(labels)
  by_patient = {}
  for i, p in zip(ids, patients):
    by_patient.setdefault(p, []).append(i)
  # Duplicates: within a patient (adjacent slices) always; across two
  # patients only for 'group' ('error' would rightly refuse them).
  groups = [by_patient[p][:2] for p in list(by_patient)[::4]]
  if policy == 'group':
    groups += [[by_patient['p01'][0], by_patient['p05'][1]],
               [by_patient['p07'][2], by_patient['p20'][0],
                by_patient['p21'][1]]]
  m = splits.make_manifest(ids, labels, groups, 4, 0.2, seed, policy,
                           patients=patients)
  _check_patients(m, ids, patients)
  assert m['patients'] == dict(zip(ids, patients))
  assert all(f['val'] for f in m['folds'])
  if policy == 'group':  # the duplicate pair joined p01 and p05
    for fold in m['folds']:
      role = {i: r for r, members in fold.items() for i in members}
      assert role[by_patient['p01'][-1]] == role[by_patient['p05'][-1]]


def test_check_patients_rejects_a_straddle():
  m = {'folds': [{'train': ['a/slice_000'], 'val': [],
                  'test': ['a/slice_001']}],
       'duplicate_groups': [],
       'patients': {'a/slice_000': 'a', 'a/slice_001': 'a'}}
  with pytest.raises(RuntimeError, match="patient 'a'"):
    splits.check_patients(m)


def test_too_few_patients_for_folds():
  ids = [f'p{p}/slice_{k:03d}' for p in range(3) for k in range(10)]
  with pytest.raises(UserInputError, match='patients'):
    splits.make_manifest(ids, np.arange(30) % 2, [], 5, 0.2, 0, 'group',
                         patients=[i[:2] for i in ids])


# --------------------------------------------------------------- bad input


def _no_affine(root):
  path = os.path.join(root, 'patient001', 'patient001_flair.nii.gz')
  img = nib.load(path)
  nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None), path)
  return path


def _seg_shape(root):
  path = os.path.join(root, 'patient002', 'patient002_seg.nii.gz')
  nib.save(nib.Nifti1Image(np.zeros((32, 36, 19), np.uint8), np.eye(4)),
           path)
  return path


def _several_modalities(root):
  return os.path.join(root, 'patient000')


def _missing_slice(root):
  folder = os.path.join(root, 'case03', 'series1')
  os.remove(os.path.join(folder, 'im004.dcm'))
  return folder


def _uneven_spacing(root):
  folder = os.path.join(root, 'case02', 'series1')
  for f in os.listdir(folder):
    os.remove(os.path.join(folder, f))
  pos = [0, 2.5, 5, 7.5, 10.5, 13, 15.5, 18]
  write_series(folder, _ct_volume(), positions=pos)
  return folder


def _series_size(root):
  folder = os.path.join(root, 'case01', 'series1')
  write_series(folder, _ct_volume(n=1, size=20), positions=[20.0],
               names=['im999.dcm'])
  return os.path.join(folder, 'im999.dcm')


@pytest.mark.parametrize('name,case,overrides', [
    ('nifti', _no_affine, {}),
    ('nifti', _seg_shape, {}),
    ('nifti', _several_modalities, {'modality': ''}),
    ('dicom_series', _missing_slice, {}),
    ('dicom_series', _uneven_spacing, {}),
    ('dicom_series', _series_size, {}),
])
def test_bad_volumes(tfds_dir, tmp_path, name, case, overrides):
  root = (write_brats(str(tmp_path / 'b'), n_patients=3, shape=(32, 36, 20))
          if name == 'nifti' else write_series_set(str(tmp_path / 's'), 4))
  needle = case(root)
  with pytest.raises(UserInputError) as e:
    dataset.prepare(_cfg(tfds_dir, root, name=name, **overrides))
  msg = str(e.value)
  assert needle in msg and '\n' not in msg, msg


@pytest.mark.parametrize('overrides,needle', [
    ({'slices': 'lesion:2', 'name': 'dicom_series'}, 'needs a segmentation'),
    ({'modality': 'dwi'}, "no 'dwi' volume"),
    ({'intensity': 'zscore'}, 'config.data.intensity'),
    ({'min_lesion_pixels': 0}, 'config.data.min_lesion_pixels'),
    ({'percentiles': (99.0, 1.0)}, 'config.data.percentiles'),
])
def test_bad_volume_config(tfds_dir, tmp_path, brats, overrides, needle):
  root = brats
  if overrides.get('name') == 'dicom_series':
    root = write_series_set(str(tmp_path / 's'), 2)
  with pytest.raises(UserInputError, match=needle):
    volumes.scan(_cfg(tfds_dir, root, **overrides))


def test_study_leakage_check_covers_patients():
  from resnet_jax import study_cells  # pylint: disable=g-import-not-at-top
  ids = ['a/slice_000', 'b/slice_000', 'a/slice_001']
  m = {'fold': 0, 'seed': 0, 'train': ids[:2], 'val': [], 'test': ids[2:],
       'gan_train_ids': {'lesion': ids[:1]}}
  patients = {i: i.split('/')[0] for i in ids}
  study_cells.check_leakage(m, [])  # without patient information: images only
  with pytest.raises(RuntimeError, match="patient 'a' is in both"):
    study_cells.check_leakage(m, [], patients)
  with pytest.raises(RuntimeError, match="patient 'a' is in both"):
    study_cells.check_leakage({**m, 'patients': patients}, [])
  study_cells.check_leakage({**m, 'test': ['b/slice_000'],
                       'train': ['a/slice_000', 'a/slice_001']}, [], patients)
