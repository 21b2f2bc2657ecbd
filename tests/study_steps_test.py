"""resnet_jax.study_steps: steps keyed by their configuration hash."""

import pytest

from input_pipeline import errors
from resnet_jax import study_steps


def test_steps_accept_the_hash_earlier_code_gave(tmp_path):
  steps = study_steps.Steps(study_steps.Progress(2), recompute=False)
  marker = str(tmp_path / 'done.json')
  study_steps.write_json(marker, {'config_hash': 'old'})
  assert steps.run(marker, 'step', 'new', pytest.fail,
                   also=('old',))['config_hash'] == 'old'
  with pytest.raises(errors.UserInputError, match='another configuration'):
    steps.run(marker, 'step', 'new', pytest.fail)
