"""The `config.data` block shared by every job (data, pggan, resnet, study).

Each config file calls `get_data_config()` and overrides what it needs, so a
flag such as `--config.data.name=head_ct --config.data.dir=DIR` means the same
thing in every command.
"""

import ml_collections


def get_augment_config(enabled: bool = False) -> ml_collections.ConfigDict:
  """Classic augmentation (numpy, in grain's `random_map`)."""
  aug = ml_collections.ConfigDict()
  aug.enabled = enabled
  # Probability of a horizontal flip (left/right hemispheres are symmetric).
  aug.flip_prob = 0.5
  # Uniform rotation in [-rotate_deg, rotate_deg].
  aug.rotate_deg = 10.0
  # Uniform translation, as a fraction of the image side.
  aug.translate = 0.05
  # Uniform zoom factor in [1 - zoom, 1 + zoom].
  aug.zoom = 0.1
  # Additive brightness in [-b, b] and contrast factor in [1 - c, 1 + c],
  # both on the [-1, 1] intensity scale.
  aug.brightness = 0.1
  aug.contrast = 0.1
  return aug


def get_data_config() -> ml_collections.ConfigDict:
  """Defaults: the embedded synthetic head-CT set, 5 stratified folds."""
  data = ml_collections.ConfigDict()
  # synthetic_head_ct | head_ct | image_folder | dicom | nifti | dicom_series
  data.name = 'synthetic_head_ct'
  # Where the source data lives (required for all but synthetic_head_ct).
  data.dir = ''
  # Where prepared TFDS array_record files are cached ('' = ~/.cache/...).
  data.tfds_dir = ''
  # image_folder: the subfolder name of the positive class ('' = second of
  # the sorted folder names).
  data.positive_class = ''
  # dicom: labels CSV ('' = DIR/labels.csv; columns id,label, id = the
  # file's path relative to DIR, with or without .dcm, or a stem that names
  # one file), window preset (brain | subdural | bone) or 'multi' for the
  # three windows as channels.
  data.labels_csv = ''
  data.window = 'brain'
  # nifti / dicom_series (volumes, input_pipeline/volumes.py): which axial
  # slices become images: 'all' (every non-empty slice), 'middle:K' (the K
  # central ones), 'foreground:F' (foreground covers >= fraction F of the
  # slice), 'lesion:K' (the K largest lesion areas; needs segmentations).
  data.slices = 'all'
  # nifti: the modality (file stem after the last '_', e.g. 'flair' for
  # BraTS <patient>_flair.nii.gz) or a comma list stacked as channels
  # ('' = each patient's only image volume).
  data.modality = ''
  # Per-slice labels from the segmentation: class 'lesion' iff the slice has
  # at least this many lesion pixels (at the volume's own resolution).
  data.min_lesion_pixels = 1
  # Per-patient labels instead: CSV with columns patient,label ('' = nifti:
  # segmentations if present, else DIR/labels.csv; dicom_series:
  # DIR/labels.csv).
  data.patient_labels_csv = ''
  # Volume intensities, normalised per volume: 'window' (HU, data.window),
  # 'percentile' (data.percentiles of the foreground voxels -> 0..255) or
  # 'auto' (window for DICOM CT series, percentiles otherwise, e.g. MRI).
  data.intensity = 'auto'
  data.percentiles = (0.5, 99.5)
  # synthetic_head_ct: images per class, side length, generator seed.
  data.synthetic_per_class = 100
  data.synthetic_size = 256
  data.synthetic_seed = 0
  # Side of the stored square (grayscale, aspect kept, padded). Consumers
  # ask for any resolution <= this one.
  data.storage_size = 256
  # Resolution the consumer trains at (PGGAN overrides it per stage).
  data.resolution = 64
  # Stratified k-fold: number of folds, which fold (-1 = all images, no
  # test split), and a validation carve-out from each training split.
  data.num_folds = 5
  data.fold = 0
  data.val_fraction = 0.15
  data.split_seed = 0
  # Duplicates (identical pixels, or 256-bit perceptual hash Hamming
  # distance <= hash_threshold; -1 = exact only), both on a fixed 256-px
  # rendering of each original, so groups and folds do not depend on
  # storage_size. 'group': folds are split by
  # duplicate group, so a group never straddles train/val/test; 'error':
  # split image by image and fail if a group straddles (names its ids).
  # 40 of 256 bits: in head_ct the re-exported slices are <= 20 bits apart,
  # but same-lesion and adjacent slices of one scan lie at 26-38 bits and
  # must stay in one split too; unrelated pairs are typically ~110 bits
  # apart (0.1 % of pairs below 36). Over-grouping only costs a little
  # stratification balance; see input_pipeline/splits.py.
  data.duplicates = 'group'
  data.hash_threshold = 40
  # Keep only these labels (-1 = all): one GAN per class uses 0 or 1.
  data.class_filter = -1
  # Classic augmentation.
  data.augment = get_augment_config(enabled=False)
  # Synthetic images (an image_folder, e.g. written by configs/sample.py)
  # mixed into training batches: fraction of each batch that is synthetic.
  data.synthetic_dir = ''
  data.synthetic_ratio = 0.0
  # The classifier refuses a synthetic_dir whose manifest.json does not say
  # which real images its GAN trained on (leakage cannot be ruled out);
  # True uses such images anyway, with a warning.
  data.allow_unverified_synthetic = False
  # grain read workers (0 = in-process).
  data.num_workers = 0
  return data
