"""resnet_jax.study_config: sub-run configs and the study's key names."""

import pytest

from configs import study as study_cfg
from input_pipeline import workdir as workdir_lib
from resnet_jax import study_config


def test_sub_config_copies_shared_data_and_cell_keys():
  config = study_cfg.get_config('tiny')
  config.data.name = 'head_ct'
  config.data.dir = '/some/dir'
  own_res = config.classifier.data.resolution
  sub = study_config.sub_config(config.classifier, config.data, seed=7,
                                arm='gan', data__fold=1,
                                data__synthetic_dir='/s')
  assert sub.data.name == 'head_ct' and sub.data.dir == '/some/dir'
  assert sub.data.storage_size == config.data.storage_size
  assert sub.data.resolution == own_res
  assert (sub.seed, sub.arm, sub.data.fold) == (7, 'gan', 1)
  assert sub.data.synthetic_dir == '/s'
  # The study config itself is untouched.
  assert config.classifier.seed != 7
  assert config.classifier.data.synthetic_dir == ''
  assert config.classifier.data.name == 'synthetic_head_ct'


@pytest.mark.parametrize('message, block, expected', [
    ("config.dtype='float16' is not float32", 'gan',
     "config.gan.dtype='float16' is not float32"),
    ('config.augment (ADA) and config.diffaug are both on', 'gan',
     'config.gan.augment (ADA) and config.gan.diffaug are both on'),
    ('config.data.storage_size=2 must be >= 4', 'gan',
     'config.data.storage_size=2 must be >= 4'),
    ('config.data.synthetic_ratio=1.5 must be in (0, 1)', 'classifier',
     'config.classifier.data.synthetic_ratio=1.5 must be in (0, 1)'),
    ("config.metrics.feature_net='x' is not 'auto'", 'quality',
     "config.quality.metrics.feature_net='x' is not 'auto'"),
    ('set config.kimg or config.num_epochs to > 0', 'classifier',
     'set config.classifier.kimg or config.classifier.num_epochs to > 0'),
    ('config.data.resolution=7', 'quality', 'config.data.resolution=7'),
    # Paths, file names and another run's command line stay as they are.
    ('/w/gan/normal/config.json holds checkpoints', 'gan',
     '/w/gan/normal/config.json holds checkpoints'),
    ('no config.json in W', 'gan', 'no config.json in W'),
    ('held by main.py --config.seed=3 --config.gan.dtype=x', 'gan',
     'held by main.py --config.seed=3 --config.gan.dtype=x'),
    ('/data/my.config.v2/a.png: bad', 'gan', '/data/my.config.v2/a.png: bad'),
])
def test_study_keys_names_the_studys_key(message, block, expected):
  assert study_config.study_keys(message, block) == expected


def test_sub_run_errors_keep_their_type():
  with pytest.raises(workdir_lib.WorkdirBusyError, match='config.gan.seed'):
    with study_config.keys_of('gan'):
      raise workdir_lib.WorkdirBusyError('config.seed is busy')
