"""Shared helpers for the input_pipeline tests: tiny datasets on disk."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from input_pipeline import config
from input_pipeline import phantom

# The real Kaggle Head CT data lives beside the repository (never in it):
# ../shared/data/head_ct, or wherever $HEAD_CT_DIR points.
HEAD_CT = os.environ.get('HEAD_CT_DIR') or os.path.normpath(os.path.join(
    os.path.dirname(__file__), '..', '..', 'shared', 'data', 'head_ct'))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, check=True) -> subprocess.CompletedProcess:
  """`python main.py ARGS` from the repo root, as a user runs it."""
  res = subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT,
                       capture_output=True, text=True)
  if check and res.returncode:
    raise AssertionError(f'main.py {args} failed:\n{res.stderr[-3000:]}')
  return res


def data_config(tfds_dir, **overrides):
  """config.data for tests: small storage, 2 folds, tmp TFDS cache."""
  d = config.get_data_config()
  d.tfds_dir = str(tfds_dir)
  d.storage_size = 64
  d.resolution = 32
  d.num_folds = 2
  d.val_fraction = 0.25
  d.synthetic_per_class = 8
  d.synthetic_size = 64
  for k, v in overrides.items():
    setattr(d, k, v)
  return d


def phantom_image(label, index, size=64, seed=7):
  return phantom.head_ct_phantom(size, label, seed, index)


_MODES = ('L', 'RGB', 'RGBA', 'P')


def write_head_ct(root, n_per_class=6, padded=True, header='id, hemorrhage'):
  """A small head_ct-style folder: labels.csv + images/NNN.png, mixed modes
  and sizes (non-square, to exercise the aspect-preserving resize)."""
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  rows = [header]
  for i in range(2 * n_per_class):
    label = int(i < n_per_class)
    x = phantom_image(label, i)
    img = Image.fromarray(x).resize((64 + 8 * (i % 3), 64 + 4 * (i % 4)))
    img = img.convert(_MODES[i % len(_MODES)])
    img.save(os.path.join(root, 'images', f'{i:03d}.png'))
    rows.append(f'{i:03d},{label}' if padded else f'{i},{label}')
  with open(os.path.join(root, 'labels.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return str(root)


def write_image_folder(root, classes=('cats', 'dogs'), n=4, ext='.png'):
  for c, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(n):
      x = phantom_image(c % 2, 100 * c + i)
      img = Image.fromarray(x).convert('RGB' if i % 2 else 'L')
      img.save(os.path.join(root, name, f'img{i}{ext}'))
  return str(root)


def tiny_pggan_config(total_kimg, *, phase_kimg=0.02, tick_kimg=0.04,
                      checkpoint_kimg=0.04):
  """configs/pggan.py:tiny grown only to 8x8, in short phases (training
  tests): each phase lasts `phase_kimg`, to stabilise and to fade in."""
  from configs import pggan  # pylint: disable=g-import-not-at-top
  cfg = pggan.get_config('tiny')
  cfg.model.resolution = 8
  cfg.sched.lod_training_kimg = phase_kimg
  cfg.sched.lod_transition_kimg = phase_kimg
  cfg.sched.tick_kimg = tick_kimg
  cfg.total_kimg = total_kimg
  cfg.checkpoint_kimg = checkpoint_kimg
  cfg.log_every_steps = 4
  cfg.metrics.swd_images = 16
  return cfg


def write_dicom(path, hu, slope=1.0, intercept=-1024.0, modality='CT',
                **attributes):
  """A minimal DICOM slice with the given HU values (int16 storage);
  `attributes` are further DICOM elements (SeriesInstanceUID=..., ...)."""
  # pylint: disable=g-import-not-at-top
  import pydicom
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian
  from pydicom.uid import generate_uid

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.2'  # CT Image
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = modality
  ds.Rows, ds.Columns = hu.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
  ds.PixelRepresentation = 1
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  for name, value in attributes.items():
    setattr(ds, name, value)
  raw = np.rint((hu - intercept) / slope).astype(np.int16)
  ds.PixelData = raw.tobytes()
  ds.save_as(path, enforce_file_format=True)


def write_dicom_folder(root, n_per_class=3):
  """DIR/*.dcm + DIR/labels.csv (`id,label`): distinct phantoms with two
  probe patches, 40 HU around (32, 10) and 1000 HU around (32, 50)."""
  os.makedirs(root, exist_ok=True)
  rows = ['id,label']
  for i in range(2 * n_per_class):
    label = int(i < n_per_class)
    hu = phantom_image(label, i).astype(np.float64) * 4 - 1000
    hu[24:40, 4:16] = 40.0
    hu[24:40, 44:56] = 1000.0
    write_dicom(os.path.join(root, f'scan{i}.dcm'), hu)
    rows.append(f'scan{i},{label}')
  with open(os.path.join(root, 'labels.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return str(root)
