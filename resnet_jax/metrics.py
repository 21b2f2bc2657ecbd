"""Binary classification metrics, pure numpy.

Scores are P(positive) (label 1). A case is called positive when
`prob >= threshold`. Undefined ratios (e.g. sensitivity with no positives)
are NaN rather than a made-up 0 or 1.

The threshold is chosen on the validation split (`choose_threshold`) and then
applied unchanged to the test split, so the test set never tunes anything.
"""

from typing import Any

import numpy as np


def _ratio(num: float, den: float) -> float:
  return float(num) / float(den) if den else float('nan')


def softmax_positive(logits: np.ndarray) -> np.ndarray:
  """[N, 2] logits -> P(class 1) [N], numerically stable."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[1] != 2:
    raise ValueError(f'expected [N, 2] logits, got shape {logits.shape}')
  # softmax(z)[1] = sigmoid(z1 - z0).
  d = logits[:, 1] - logits[:, 0]
  return np.where(d >= 0, 1 / (1 + np.exp(-np.abs(d))),
                  np.exp(-np.abs(d)) / (1 + np.exp(-np.abs(d))))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
  """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie).

  Rank-based (Mann-Whitney U) with average ranks for ties; equals
  sklearn.metrics.roc_auc_score. NaN when a class is absent.
  """
  labels = np.asarray(labels).astype(bool)
  probs = np.asarray(probs, np.float64)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  order = np.argsort(probs, kind='mergesort')
  sorted_p = probs[order]
  ranks = np.empty(probs.size, np.float64)
  # Average 1-based rank over each run of tied scores.
  _, start, counts = np.unique(sorted_p, return_index=True, return_counts=True)
  avg = start + (counts + 1) / 2.0
  ranks[order] = np.repeat(avg, counts)
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray, probs: np.ndarray,
                   threshold: float = 0.5) -> dict[str, Any]:
  """Accuracy, sensitivity, specificity, balanced accuracy, F1, AUC, counts.

  Args:
    labels: int [N] in {0, 1}.
    probs: float [N], P(label == 1).
    threshold: call positive when prob >= threshold.

  Returns:
    A JSON-serialisable dict of floats/ints.
  """
  labels = np.asarray(labels).astype(np.int64)
  probs = np.asarray(probs, np.float64)
  if labels.shape != probs.shape or labels.ndim != 1:
    raise ValueError(
        f'labels {labels.shape} and probs {probs.shape} must be equal 1-D')
  if np.any((labels != 0) & (labels != 1)):
    raise ValueError('labels must be 0 or 1')
  pred = probs >= threshold
  pos = labels == 1
  tp = int(np.sum(pred & pos))
  fp = int(np.sum(pred & ~pos))
  tn = int(np.sum(~pred & ~pos))
  fn = int(np.sum(~pred & pos))
  sens = _ratio(tp, tp + fn)
  spec = _ratio(tn, tn + fp)
  prec = _ratio(tp, tp + fp)
  return {
      'n': int(labels.size),
      'accuracy': _ratio(tp + tn, labels.size),
      'sensitivity': sens,
      'specificity': spec,
      'balanced_accuracy': (sens + spec) / 2,
      'precision': prec,
      # F1 = 2TP / (2TP + FP + FN); NaN only if there is nothing positive.
      'f1': _ratio(2 * tp, 2 * tp + fp + fn),
      'auc': roc_auc(labels, probs),
      'threshold': float(threshold),
      'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn,
  }


def choose_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
  """Threshold maximising balanced accuracy (equivalently Youden's J).

  Candidates are midpoints between consecutive distinct scores (plus one
  below the lowest and one above the highest), so the chosen cut does not
  sit exactly on a validation score. Ties go to the candidate closest to
  0.5. Returns 0.5 if a class is absent (nothing to tune on).
  """
  labels = np.asarray(labels).astype(bool)
  probs = np.asarray(probs, np.float64)
  if labels.all() or not labels.any():
    return 0.5
  u = np.unique(probs)
  cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2,
                          [u[-1] + 1e-6]])
  pred = probs[None, :] >= cands[:, None]
  sens = (pred & labels).sum(1) / labels.sum()
  spec = (~pred & ~labels).sum(1) / (~labels).sum()
  j = sens + spec
  best = np.flatnonzero(np.isclose(j, j.max()))
  return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])
