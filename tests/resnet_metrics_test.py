"""Tests for resnet_jax.metrics against hand-computed values."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from resnet_jax import metrics


def _logits(probs):
  """[N, 2] logits whose softmax[:, 1] is `probs` (logit in column 1)."""
  p = np.asarray(probs, np.float64)
  return np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1)


def test_softmax_positive_hand_values():
  logits = np.array([[0., 0.], [5., 5.], [0., math.log(3)], [math.log(3), 0.],
                     [0., 800.], [800., 0.]])
  np.testing.assert_allclose(metrics.softmax_positive(logits),
                             [0.5, 0.5, 0.75, 0.25, 1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(
    'labels, probs, threshold, expected',
    [
        # tp=3 fn=1 fp=1 tn=3; AUC: 14 of 16 pos/neg pairs ordered.
        ([1, 1, 1, 1, 0, 0, 0, 0], [.9, .8, .4, .6, .3, .7, .1, .2], 0.5,
         dict(accuracy=.75, sensitivity=.75, specificity=.75,
              balanced_accuracy=.75, f1=.75, precision=.75, auc=14 / 16,
              tp=3, fp=1, tn=3, fn=1)),
        # Same scores cut at 0.35: every positive found, one false positive.
        ([1, 1, 1, 1, 0, 0, 0, 0], [.9, .8, .4, .6, .3, .7, .1, .2], 0.35,
         dict(accuracy=7 / 8, sensitivity=1., specificity=.75,
              balanced_accuracy=.875, f1=8 / 9, precision=.8, auc=14 / 16,
              tp=4, fp=1, tn=3, fn=0)),
        # prob == threshold counts as positive; a pos/neg tie counts 1/2 in
        # the AUC: pairs (.5,.5)=.5, (.5,.2)=1, others 0 -> 1.5 / 6.
        ([1, 0, 0, 0, 1], [.5, .5, .2, .9, .1], 0.5,
         dict(accuracy=.4, sensitivity=.5, specificity=1 / 3,
              balanced_accuracy=5 / 12, f1=.4, precision=1 / 3, auc=.25,
              tp=1, fp=2, tn=1, fn=1)),
    ])
def test_binary_metrics_hand_values(labels, probs, threshold, expected):
  probs_from_logits = metrics.softmax_positive(_logits(probs))
  got = metrics.binary_metrics(np.array(labels), probs_from_logits, threshold)
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key
  assert got['n'] == len(labels)
  assert got['threshold'] == threshold


def test_undefined_ratios_are_nan():
  got = metrics.binary_metrics(np.zeros(4, int), np.array([.1, .2, .7, .3]))
  assert math.isnan(got['sensitivity'])
  assert math.isnan(got['auc'])
  assert got['specificity'] == pytest.approx(.75)
  assert got['f1'] == 0.0  # 2*0 / (0 + 1 + 0): one false positive.


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 50)
  probs = np.round(rng.random(50) * 0.5 + 0.3 * labels, 1)  # many ties
  assert metrics.roc_auc(labels, probs) == pytest.approx(
      skm.roc_auc_score(labels, probs), abs=1e-12)


@pytest.mark.parametrize(
    'labels, probs, expected',
    [
        # Best balanced accuracy (0.875) between .3 and .4 -> midpoint .35.
        ([1, 1, 1, 1, 0, 0, 0, 0], [.9, .8, .4, .6, .3, .7, .1, .2], .35),
        # Perfectly separable: every cut in (.3, .6) is optimal; the midpoint
        # .45 is the candidate nearest to 0.5.
        ([0, 0, 1, 1], [.1, .3, .6, .95], .45),
        # One class only: nothing to tune, keep 0.5.
        ([1, 1, 1], [.2, .4, .9], .5),
    ])
def test_choose_threshold(labels, probs, expected):
  t = metrics.choose_threshold(np.array(labels), np.array(probs))
  assert t == pytest.approx(expected)
