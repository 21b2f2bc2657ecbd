"""Small image classifiers behind the synthetic-image metrics, and the
metrics that train one: the classifier two-sample test (`c2st`) and
train-synthetic / train-real, test-real (`tstr_trtr`).

One recipe serves every metric of `gan_metrics.py` that needs a network:
the feature network (Fréchet distance, KID, precision/recall, feature-space
nearest neighbours; also the TRTR classifier), the classifier two-sample
test and TSTR. It reuses the project's ResNet (`models.py`) and its training
step and optimiser (`train.py`): a narrow ResNet trained for
`classifier.kimg` thousand images with SGD-Nesterov, warmup + cosine decay,
label smoothing and random horizontal flips.

Compilation is paid once per process: the training length is fixed in kimg
(not epochs), so every classifier with the same number of classes has the
same step count (the shape of its batch-index array), the same optimiser
object (`steps.create_optimizer` is cached) and the same batch shape, so
`steps.bind` gives the same jitted steps and `train_steps` hits its jit
cache. The images go to the device once and each step gathers its batch
there (`train_data.IndexDraw`).
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats
from flax import nnx
from sklearn import metrics as skm

from input_pipeline import sharding
from resnet_jax import models
from resnet_jax import steps
from resnet_jax import train_data

# ResNet-10 (one basic block per stage): half the cost of ResNet-18 per step
# on the CPU, and plenty for ~100 images at 64x64.
MODELS = dict(models.MODELS, resnet10=functools.partial(
    models.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=models.ResNetBlock))


@dataclasses.dataclass
class Classifier:
  """A trained (or random) network, ready for `predict`."""
  graphdef: nnx.GraphDef  # eval mode
  params: nnx.State
  batch_stats: nnx.State
  num_classes: int
  eval_batch_size: int
  trained: bool


_KEY = 'config.metrics.classifier'


def check_config(cfg: ml_collections.ConfigDict) -> None:
  steps.check_model_keys(cfg, MODELS, _KEY)


def create_model(cfg: ml_collections.ConfigDict, num_classes: int,
                 num_channels: int, seed: int) -> nnx.Module:
  return steps.create_model(cfg, num_channels, num_classes, seed=seed,
                            registry=MODELS, key=_KEY)


def num_steps(cfg: ml_collections.ConfigDict) -> int:
  """Training steps from cfg.kimg: the same for every training set."""
  return max(1, math.ceil(cfg.kimg * 1000 / cfg.batch_size))


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
  """Index arrays of `steps` batches: epochs of fresh permutations, so every
  image is seen once per epoch, and sets smaller than a batch still give a
  full (fixed-shape) batch."""
  need = batch_size * steps
  order = np.concatenate([rng.permutation(n)
                          for _ in range(math.ceil(need / n))])
  return order[:need].reshape(steps, batch_size)


def fit(images: np.ndarray, labels: np.ndarray, num_classes: int,
        cfg: ml_collections.ConfigDict, *, seed: int) -> Classifier:
  """Trains the recipe on (images [N, H, W, C] in [-1, 1], labels [N])."""
  if len(images) == 0:
    raise ValueError('fit: no training images')
  sharding.check_batch_size(cfg.batch_size,
                            'metrics.classifier.batch_size')
  sharding.check_batch_size(cfg.eval_batch_size,
                            'metrics.classifier.eval_batch_size')
  n = num_steps(cfg)
  tx = steps.create_optimizer(cfg)
  model = create_model(cfg, num_classes, images.shape[-1], seed)
  graphdef, eval_graphdef, state = steps.init_state(model, tx)
  mesh = sharding.make_mesh()
  state = sharding.put_replicated(state, mesh)
  rng = np.random.default_rng(seed)
  idx = _batches(len(images), cfg.batch_size, n, rng)
  # Drawn after every batch's indices, as the per-step loop drew them.
  flip = np.zeros(idx.shape, bool)
  if cfg.flip:
    for s in range(n):
      flip[s] = rng.random(cfg.batch_size) < 0.5
  rep = sharding.replicated(mesh)
  data = jax.device_put({'images': images,
                         'labels': np.asarray(labels, np.int32),
                         'idx': idx, 'flip': flip}, rep)
  draw = train_data.IndexDraw(sharding.data_sharding(mesh))
  length = train_data.steps_per_dispatch(cfg)
  sched = steps.schedule(cfg, n)
  bound = steps.bind(graphdef, tx, float(cfg.label_smoothing))
  for start in range(0, n, length):
    state, m = bound.train_steps(
        state, data, np.int32(min(length, n - start)), sched, draw=draw,
        length=length)
  loss = m['loss'][(n - 1) % length]
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f'non-finite classifier loss {float(loss)}')
  return Classifier(eval_graphdef, state.params, state.batch_stats,
                    num_classes, cfg.eval_batch_size, trained=True)


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _calibrate_bn(params, batch_stats, images, *, graphdef):
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  model(images)
  return nnx.state(model, nnx.BatchStat)


def random_network(images: np.ndarray, cfg: ml_collections.ConfigDict, *,
                   seed: int) -> Classifier:
  """An untrained network whose BatchNorm statistics fit `images`.

  The fallback feature extractor when there is nothing to classify (one
  class). Randomly initialised CNNs give usable embeddings for fidelity /
  diversity metrics outside ImageNet (Naeem et al. 2020, 'Reliable fidelity
  and diversity metrics', §5), and they cannot leak labels or favour
  anything the GAN saw. Two changes make the random features informative:
  every BatchNorm scale is 1 (the recipe zero-initialises the last one of
  each residual branch, which would reduce the network to its shortcuts),
  and the running statistics are set, in one pass with momentum 0, to the
  batch statistics of (up to 256 of) `images`, so every layer is
  standardised on the real training images.
  """
  model = create_model(cfg, 1, images.shape[-1], seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      node.scale[...] = jnp.ones_like(node.scale[...])
      node.momentum = 0.0
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  sample = images[np.random.default_rng(seed).permutation(len(images))[:256]]
  batch_stats = _calibrate_bn(params, batch_stats, jnp.asarray(sample),
                              graphdef=graphdef)
  return Classifier(eval_graphdef, params, batch_stats, 1,
                    cfg.eval_batch_size, trained=False)


def features_and_logits(model: models.ResNet,
                        x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Penultimate (global-average-pooled) features and logits (float32)."""
  features = model.features(x)
  return (features.astype(jnp.float32),
          model.head(features).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _forward(params, batch_stats, images, *, graphdef):
  model = nnx.merge(graphdef, params, batch_stats)
  features, logits = features_and_logits(model, images)
  return features, jax.nn.softmax(logits, axis=-1)


def predict(clf: Classifier, images: np.ndarray) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """(features [N, F], class probabilities [N, K]) in eval mode.

  The last batch is padded to the fixed batch size (no recompilation).
  """
  feats, probs = [], []
  b = clf.eval_batch_size
  for start in range(0, len(images), b):
    chunk = images[start:start + b]
    f, p = _forward(clf.params, clf.batch_stats,
                    jnp.asarray(sharding.pad_rows(chunk, b)),
                    graphdef=clf.graphdef)
    feats.append(np.asarray(f)[:len(chunk)])
    probs.append(np.asarray(p)[:len(chunk)])
  if not feats:
    return (np.zeros((0, 0), np.float32),
            np.zeros((0, clf.num_classes), np.float32))
  return np.concatenate(feats), np.concatenate(probs)


# ------------------------------------------------------------- metrics


def clopper_pearson(successes: int, n: int,
                    confidence: float = 0.95) -> tuple[float, float]:
  """Exact binomial interval (scipy.stats.binomtest)."""
  ci = scipy.stats.binomtest(successes, n).proportion_ci(
      confidence_level=confidence, method='exact')
  return float(ci.low), float(ci.high)


def c2st(real: np.ndarray, synthetic: np.ndarray,
         cfg: ml_collections.ConfigDict, *, test_fraction: float = 0.5,
         seed: int = 0) -> dict[str, Any]:
  """Classifier two-sample test: real (label 0) vs synthetic (label 1).

  Both sets are subsampled to the same size m (balanced), each split with
  the same seeded permutation into a training part and a test part of
  round(m * test_fraction) images; the classifier's accuracy on the test
  parts (n = 2 * that) comes with a 95 % Clopper-Pearson interval.
  """
  m = min(len(real), len(synthetic))
  n_test = int(round(m * test_fraction))
  if m - n_test < 2 or n_test < 1:
    return {'c2st_accuracy': None, 'c2st_ci_low': None, 'c2st_ci_high': None,
            'c2st_n': 0,
            'c2st_note': f'too few images for a C2ST ({m} per set)'}
  rng = np.random.default_rng(seed)
  ri = rng.permutation(len(real))[:m]
  si = rng.permutation(len(synthetic))[:m]
  train_x = np.concatenate([real[ri[n_test:]], synthetic[si[n_test:]]])
  train_y = np.repeat([0, 1], m - n_test)
  test_x = np.concatenate([real[ri[:n_test]], synthetic[si[:n_test]]])
  test_y = np.repeat([0, 1], n_test)
  clf = fit(train_x, train_y, 2, cfg, seed=seed)
  _, probs = predict(clf, test_x)
  correct = int(np.sum(np.argmax(probs, 1) == test_y))
  lo, hi = clopper_pearson(correct, len(test_y))
  return {'c2st_accuracy': correct / len(test_y), 'c2st_ci_low': lo,
          'c2st_ci_high': hi, 'c2st_n': int(len(test_y))}


def classification_scores(labels: np.ndarray, probs: np.ndarray,
                          classes: list[int]) -> tuple[float, float]:
  """(accuracy, AUC) of probs [N, K] restricted to `classes`.

  Probabilities are renormalised over `classes`; AUC is binary for two
  classes, else one-vs-rest macro (sklearn.metrics.roc_auc_score).
  """
  p = probs[:, classes]
  p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
  y = np.searchsorted(classes, labels)
  accuracy = float(np.mean(np.argmax(p, 1) == y))
  if len(classes) == 2:
    auc = skm.roc_auc_score(y, p[:, 1])
  else:
    auc = skm.roc_auc_score(y, p, multi_class='ovr',
                            labels=list(range(len(classes))))
  return accuracy, float(auc)


def tstr_trtr(net: Classifier, held: np.ndarray, held_labels: np.ndarray,
              p_held: np.ndarray, synthetic: np.ndarray,
              synthetic_labels: np.ndarray | None, num_classes: int,
              cfg: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
  """Train on synthetic / on real, test on held-out real images.

  TSTR trains the recipe on the synthetic images; TRTR is `net`, the
  feature network, i.e. the same recipe trained on the real training
  images (its held-out probabilities are `p_held`). Both are tested on the
  held-out real images of the classes the synthetic set has (TRTR: of all
  held-out classes when there is no TSTR); `tstr_note` says what is missing
  and why.
  """
  out = {'tstr_accuracy': None, 'tstr_auc': None, 'trtr_accuracy': None,
         'trtr_auc': None}
  held_classes = sorted(np.unique(held_labels).tolist())
  notes = []
  classes = held_classes
  if synthetic_labels is None:
    notes.append('synthetic images are unlabelled: no TSTR')
  else:
    common = sorted(set(held_classes) & set(synthetic_labels.tolist()))
    if len(common) < 2:
      notes.append(f'synthetic and held-out real images share {len(common)} '
                   'class(es): no TSTR (needs 2)')
    else:
      classes = common
      clf = fit(synthetic, synthetic_labels, num_classes, cfg.classifier,
                seed=seed + 1)
      keep = np.isin(held_labels, classes)
      if not keep.all():
        notes.append(f'TSTR/TRTR tested on held-out classes {classes} only')
      _, p = predict(clf, held[keep])
      out['tstr_accuracy'], out['tstr_auc'] = classification_scores(
          held_labels[keep], p, classes)
  if not net.trained:
    notes.append('one class in the real training images: no TRTR')
  elif len(classes) >= 2:
    keep = np.isin(held_labels, classes)
    out['trtr_accuracy'], out['trtr_auc'] = classification_scores(
        held_labels[keep], p_held[keep], classes)
  else:
    notes.append('one class in the held-out real images: no TRTR')
  if notes:
    out['tstr_note'] = '; '.join(notes)
  return out
