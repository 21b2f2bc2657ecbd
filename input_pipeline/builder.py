"""The TFDS builder that stores preprocessed images as array_record.

One builder class serves every source: its `BuilderConfig` name carries the
source fingerprint (file names/sizes/mtimes, labels, preprocessing params),
so a changed folder or parameter prepares a new dataset and an unchanged one
is reused. TFDS writes into an `incomplete.*` folder and renames it when done,
so a half-prepared dataset is never read. No TensorFlow is needed: features
are plain tensors (`tfds.features.Image` would need TF for PNG encoding).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import preprocess
from input_pipeline import sources
from input_pipeline import splits


@dataclasses.dataclass(eq=False)
class ImagesConfig(tfds.core.BuilderConfig):
  storage_size: int = 256
  channels: int = 1
  num_classes: int = 2


class PreparedImages(tfds.core.GeneratorBasedBuilder):
  """Preprocessed square uint8 images with integer labels and string ids."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, scan: sources.Scan | None = None, **kwargs):
    self._scan = scan
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    s = cfg.storage_size
    return tfds.core.DatasetInfo(
        builder=self,
        description='Preprocessed images (grayscale, aspect kept, padded).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, cfg.channels),
                                          dtype=np.uint8),
            'label': tfds.features.Tensor(shape=(), dtype=np.int64),
            'id': tfds.features.Text(),
            # Before preprocessing, for the data report.
            'orig_width': tfds.features.Tensor(shape=(), dtype=np.int64),
            'orig_height': tfds.features.Tensor(shape=(), dtype=np.int64),
            'orig_mode': tfds.features.Text(),
            # Duplicate-detection hashes of a fixed-size rendering of the
            # original (splits.HASH_RENDER_SIZE), so duplicate groups and
            # folds do not depend on storage_size (splits.image_hashes).
            'sha': tfds.features.Text(),
            'phash': tfds.features.Tensor(shape=(splits.HASH_BYTES,),
                                          dtype=np.uint8),
        }),
        # Keep records in generation (= id) order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._scan is None:
      raise RuntimeError('PreparedImages needs scan= to generate data')
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    size = self.builder_config.storage_size
    for i, item in enumerate(self._scan.items):
      original, meta = sources.decode(self._scan, item)
      image = preprocess.to_square(original, size)
      sha, phash = splits.image_hashes(original)
      yield i, {'image': image, 'label': item.label, 'id': item.id,
                'orig_width': meta['width'], 'orig_height': meta['height'],
                'orig_mode': meta['mode'], 'sha': sha, 'phash': phash}
