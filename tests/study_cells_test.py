"""resnet_jax.study_cells: cell manifests, leakage checks, synthetic counts."""

import pytest

from resnet_jax import study_cells


def _manifest(**kw):
  m = {'fold': 0, 'seed': 0, 'train': ['a', 'b', 'c'], 'val': ['d'],
       'test': ['e', 'f'], 'gan_train_ids': {'x': ['a', 'b']}}
  m.update(kw)
  return m


def test_check_leakage_accepts_clean_split():
  study_cells.check_leakage(_manifest(), [['a', 'b'], ['e', 'f']])


def test_synthetic_counts_follow_training_prevalence():
  m = {'class_names': ['normal', 'hemorrhage'],
       'gan_train_ids': {'normal': ['a'] * 60, 'hemorrhage': ['b'] * 20}}
  assert study_cells.synthetic_counts(m, 400, 'prevalence') == {
      'normal': 300, 'hemorrhage': 100}
  assert study_cells.synthetic_counts(m, 400, 'equal') == {
      'normal': 200, 'hemorrhage': 200}
  # Largest remainder: the total is kept.
  m['gan_train_ids']['hemorrhage'] = ['b'] * 19
  assert sum(study_cells.synthetic_counts(m, 401, 'prevalence').values()) == 401


@pytest.mark.parametrize('manifest,groups,match', [
    (_manifest(gan_train_ids={'x': ['a', 'e']}), [], 'non-train'),
    (_manifest(gan_train_ids={'x': ['a', 'd']}), [], 'non-train'),
    (_manifest(test=['e', 'a']), [], 'overlap'),
    (_manifest(), [['c', 'f']], 'straddles'),
    (_manifest(), [['c', 'd']], 'straddles'),
])
def test_check_leakage_rejects(manifest, groups, match):
  with pytest.raises(RuntimeError, match=match):
    study_cells.check_leakage(manifest, groups)
