"""Tests for resnet_jax/gan_metrics.py, gan_classifiers.py and the CLI.

Formulas against brute-force or hand-computed values on small arrays; the
networks with the ':tiny' metrics config (seconds); one end-to-end
`python main.py --config=configs/gan_metrics.py:tiny` run in a subprocess.
"""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import scipy.ndimage

from configs import gan_metrics as gan_metrics_cfg
from input_pipeline.errors import UserInputError
from resnet_jax import gan_classifiers
from resnet_jax import gan_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _textures(n, size=32, seed=0, smooth=1.5, offset=0.0):
  """Smooth random textures in [-1, 1], [n, size, size, 1]."""
  rng = np.random.default_rng(seed)
  x = scipy.ndimage.gaussian_filter(rng.standard_normal((n, size, size, 1)),
                                    (0, smooth, smooth, 0))
  return np.clip(np.tanh(2 * x / x.std()) * 0.8 + offset, -1,
                 1).astype(np.float32)


def _tiny(**overrides):
  cfg = gan_metrics_cfg.get_metrics_config('tiny')
  for k, v in overrides.items():
    target = cfg
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  return cfg


# ---------------------------------------------------------------- formulas


def test_frechet_distance_self_zero_and_mean_shift_by_hand():
  f = np.random.default_rng(0).normal(size=(200, 8))
  assert gan_metrics.frechet_distance(f, f) == pytest.approx(0, abs=1e-6)
  # Same covariance, means apart by delta in every dimension: FD = 8 delta^2.
  values = []
  for delta in (0.25, 0.5, 1.0):
    values.append(gan_metrics.frechet_distance(f, f + delta))
    assert values[-1] == pytest.approx(8 * delta**2, rel=1e-4)
  # Scaled covariance: Tr(S + 4S - 2 * 2S) = Tr(S).
  assert gan_metrics.frechet_distance(f, 2 * (f - f.mean(0)) + f.mean(0)) == (
      pytest.approx(np.trace(np.cov(f, rowvar=False)), rel=1e-4))


def _mmd2_unbiased_by_hand(x, y):
  d = x.shape[1]

  def k(a, b):
    return (np.dot(a, b) / d + 1)**3

  m = len(x)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return (kxx + kyy) / (m * (m - 1)) - 2 * kxy / m**2


def test_kernel_distance_matches_brute_force():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 3)), rng.normal(0.5, 1, size=(6, 3))
  # Subsets of the full size are permutations: the estimate is exact.
  mean, std = gan_metrics.kernel_distance(a, b, num_subsets=3)
  assert mean == pytest.approx(_mmd2_unbiased_by_hand(b, a), rel=1e-9)
  assert std == pytest.approx(0, abs=1e-9)


def test_kernel_distance_grows_with_shift():
  f = np.random.default_rng(2).normal(size=(100, 16))
  g = np.random.default_rng(3).normal(size=(100, 16))
  same, _ = gan_metrics.kernel_distance(f, g, num_subsets=20,
                                        max_subset_size=50)
  shifted = [gan_metrics.kernel_distance(f, g + s, num_subsets=20,
                                         max_subset_size=50)[0]
             for s in (0.3, 0.6, 1.2)]
  assert abs(same) < 0.2 * shifted[0]
  assert shifted[0] < shifted[1] < shifted[2]


def _precision_recall_by_hand(real, fake, k):
  def radius(x, i):
    d = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
    return d[k - 1]
  rr = [radius(real, i) for i in range(len(real))]
  rf = [radius(fake, i) for i in range(len(fake))]
  prec = np.mean([any(np.linalg.norm(f - r) <= rad for r, rad in
                      zip(real, rr)) for f in fake])
  rec = np.mean([any(np.linalg.norm(r - f) <= rad for f, rad in
                     zip(fake, rf)) for r in real])
  return prec, rec


@pytest.mark.parametrize('shift,k', [(0.0, 3), (1.5, 3), (3.0, 1), (1.0, 5)])
def test_precision_recall_gaussians_match_brute_force(shift, k):
  rng = np.random.default_rng(int(shift * 10) + k)
  real = rng.normal(size=(30, 2))
  fake = rng.normal(size=(25, 2)) * 0.5 + shift
  got = gan_metrics.precision_recall(real, fake, k=k)
  assert got == pytest.approx(_precision_recall_by_hand(real, fake, k))


def test_precision_recall_line_by_hand():
  real = np.array([[0.], [1.], [2.], [3.], [4.]])  # k=1 radii: all 1.
  fake = np.array([[0.5], [10.]])  # k=1 radii: 9.5 each.
  # 0.5 is within 1 of 0 and 1; 10 is outside. Every real point is within
  # 9.5 of 0.5 or 10.
  assert gan_metrics.precision_recall(real, fake, k=1) == (0.5, 1.0)
  # Collapsed fakes far away: precision and recall 0.
  assert gan_metrics.precision_recall(real, fake * 0 + 100., k=1) == (0., 0.)


def test_clopper_pearson_known_values():
  lo, hi = gan_classifiers.clopper_pearson(5, 10)
  assert (lo, hi) == pytest.approx((0.187086, 0.812914), abs=1e-5)
  lo, hi = gan_classifiers.clopper_pearson(10, 10)
  assert hi == 1.0 and lo == pytest.approx(0.025**0.1, abs=1e-6)


def test_nearest_rms():
  ref = np.zeros((3, 2, 2, 1)) + np.array([0., 0.5, 1.])[:, None, None, None]
  q = np.full((2, 2, 2, 1), 0.6)
  q[1] = 0.0
  dist, idx = gan_metrics.nearest(q, ref, rms=True)
  np.testing.assert_array_equal(idx, [1, 0])
  np.testing.assert_allclose(dist, [0.1, 0.0], atol=1e-12)


# ---------------------------------------------------------------- networks


def test_features_and_logits_mirror_the_model():
  cfg = _tiny().classifier
  model = gan_classifiers.create_model(cfg, 2, 1, seed=0)
  model.eval()
  x = jnp.asarray(_textures(4, size=32))
  features, logits = gan_classifiers.features_and_logits(model, x)
  np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.head(features), model(x), rtol=1e-5,
                             atol=1e-5)


def test_random_network_features_separate_fd_and_kid_grow_with_shift():
  cfg = _tiny().classifier
  real = _textures(40, seed=1)
  net = gan_classifiers.random_network(real, cfg, seed=0)
  assert not net.trained
  f_real, _ = gan_classifiers.predict(net, real)
  # BatchNorm calibrated on these images: features are not degenerate.
  assert np.all(np.isfinite(f_real)) and f_real.std(0).mean() > 1e-3
  fd, kid = [], []
  for offset in (0.0, 0.1, 0.3, 0.6):
    f, _ = gan_classifiers.predict(net, np.clip(real + offset, -1, 1))
    fd.append(gan_metrics.frechet_distance(f_real, f))
    kid.append(gan_metrics.kernel_distance(f_real, f, num_subsets=5)[0])
  assert fd[0] == pytest.approx(0, abs=1e-6)
  assert abs(kid[0]) < 0.1 * kid[1]
  assert fd[0] < fd[1] < fd[2] < fd[3]
  assert kid[1] < kid[2] < kid[3]


def test_c2st_half_one_set_vs_separable():
  cfg = _tiny(**{'classifier.kimg': 0.3}).classifier
  x = _textures(64, seed=2)
  same = gan_classifiers.c2st(x[:32], x[32:], cfg, seed=0)
  assert same['c2st_n'] == 32
  assert same['c2st_ci_low'] <= 0.5 <= same['c2st_ci_high']
  assert 0.3 <= same['c2st_accuracy'] <= 0.7
  smooth = _textures(32, seed=3, smooth=3.0)
  noise = np.random.default_rng(0).uniform(-1, 1, smooth.shape).astype(
      np.float32)
  sep = gan_classifiers.c2st(smooth, noise, cfg, seed=0)
  assert sep['c2st_accuracy'] >= 0.9
  assert sep['c2st_ci_low'] > 0.5


def test_c2st_too_few_images():
  out = gan_classifiers.c2st(_textures(2), _textures(2), _tiny().classifier)
  assert out['c2st_accuracy'] is None and 'too few' in out['c2st_note']


# -------------------------------------------------------------- evaluate


def _labelled_sets(seed=0):
  """Two classes (smooth vs fine textures), train / held-out / synthetic."""
  def make(n, s):
    x = np.concatenate([_textures(n, seed=s, smooth=3.0),
                        _textures(n, seed=s + 100, smooth=0.7)])
    return x, np.repeat([0, 1], n)
  return make(12, seed), make(8, seed + 1), make(10, seed + 2)


def test_evaluate_identical_sets_and_memorised_copies(tmp_path):
  (tr, tr_y), (he, he_y), _ = _labelled_sets()
  m = gan_metrics.evaluate(tr, tr_y, he, he_y, he, he_y, config=_tiny(),
                           workdir=str(tmp_path))
  json.dumps(m, allow_nan=False)
  assert m['swd'] == pytest.approx(0, abs=1e-9)
  assert m['fd'] == pytest.approx(0, abs=1e-4)
  assert m['precision'] == m['recall'] == 1.0
  assert m['feature_net'] == 'trained'
  assert m['ms_ssim_synthetic'] <= 1.0
  assert m['tstr_accuracy'] is not None and m['trtr_auc'] is not None
  assert m['nn_distance_ratio'] == pytest.approx(1.0)
  assert m['num_exact_copies'] == 0
  # The same images: no frequency has more or less power, and every random
  # split of the pooled sets is at least as extreme.
  assert m['spectral_excess'] == pytest.approx(0, abs=1e-6)
  assert m['spectral_deficit'] == pytest.approx(0, abs=1e-6)
  assert m['spectral_excess_p'] == m['spectral_deficit_p'] == 1.0
  assert (tmp_path / 'nearest_neighbours.png').exists()
  # Synthetic = training images (memorised) plus one new image: all copies
  # but one are flagged, their nearest pairs point at the originals, and
  # the gate fails on memorisation.
  syn = np.concatenate([tr[:7], _textures(1, seed=99)])
  copied = gan_metrics.evaluate(tr, tr_y, he, he_y, syn, None,
                                config=_tiny())
  assert copied['num_exact_copies'] == 7
  assert copied['nn_distance_ratio'] == pytest.approx(0.0, abs=1e-9)
  assert [p['real_train'] for p in copied['nearest_pairs'][:7]] == list(
      range(7))
  gate = gan_metrics.quality_gate(copied, _tiny())
  assert not gate['passed']
  assert any('memorisation' in r for r in gate['reasons'])
  assert any('exact copies' in r for r in gate['reasons'])
  assert copied['tstr_accuracy'] is None
  assert 'unlabelled' in copied['tstr_note']


def test_evaluate_swd_grows_with_blur():
  (tr, tr_y), (he, he_y), _ = _labelled_sets()
  cfg = _tiny(feature_net='random')
  swd, fd, deficit = [], [], []
  for sigma in (0.0, 0.7, 1.5):
    syn = scipy.ndimage.gaussian_filter(he, (0, sigma, sigma, 0)).astype(
        np.float32)
    m = gan_metrics.evaluate(tr, tr_y, he, he_y, syn, he_y, config=cfg)
    swd.append(m['swd'])
    fd.append(m['fd'])
    deficit.append(m['spectral_deficit'])
  assert swd[0] == pytest.approx(0, abs=1e-9) and fd[0] < 1e-4
  assert swd[0] < swd[1] < swd[2]
  assert fd[0] < fd[1] < fd[2]
  # Blur removes power at high frequencies.
  assert deficit[0] == pytest.approx(0, abs=1e-6)
  assert deficit[0] > deficit[1] > deficit[2]
  assert 'spectrum: excess' in gan_metrics.summary(
      {**m, 'gate': gan_metrics.quality_gate(m, cfg)})


def test_evaluate_one_class_uses_random_features():
  x = _textures(30, seed=5)
  y = np.zeros(30, np.int64)
  m = gan_metrics.evaluate(x[:12], y[:12], x[12:20], y[12:20], x[20:],
                           y[20:], config=_tiny())
  assert m['feature_net'] == 'random'
  assert m['trtr_accuracy'] is None and m['tstr_accuracy'] is None
  assert 'no TSTR' in m['tstr_note'] and 'no TRTR' in m['tstr_note']
  assert m['c2st_accuracy'] is not None and m['kid'] is not None


def test_evaluate_tiny_images():
  x = _textures(24, size=8, seed=6, smooth=0.7)
  y = np.repeat([0, 1], 12)
  m = gan_metrics.evaluate(x[::2], y[::2], x[1::2], y[1::2], x[1::2], None,
                           config=_tiny())
  assert set(k for k in m if k.startswith('swd')) == {'swd', 'swd/8'}
  assert m['ms_ssim_synthetic'] is None and '8px' in m['ms_ssim_note']
  assert m['spectral_excess'] is not None   # 8 px is enough for it
  x4 = _textures(24, size=4, seed=6, smooth=0.7)
  m4 = gan_metrics.evaluate(x4[::2], y[::2], x4[1::2], y[1::2], x4[1::2],
                            None, config=_tiny())
  assert m4['spectral_excess'] is None and '4x4 images' in m4['spectral_note']
  assert 'spectrum' not in gan_metrics.summary(m4)
  gate = gan_metrics.quality_gate(m, _tiny())
  assert 'ms_ssim_real' in gate['skipped']


def test_quality_gate_thresholds():
  cfg = _tiny()
  good = {'c2st_accuracy': 0.6, 'nn_distance_ratio': 1.1,
          'num_exact_copies': 0, 'num_synthetic': 100,
          'ms_ssim_synthetic': 0.3, 'ms_ssim_real': 0.28}
  assert gan_metrics.quality_gate(good, cfg) == {
      'passed': True, 'reasons': [], 'skipped': []}
  for key, value, word in [('c2st_accuracy', 0.95, 'C2ST'),
                           ('nn_distance_ratio', 0.5, 'memorisation'),
                           ('num_exact_copies', 11, 'exact copies'),
                           ('ms_ssim_synthetic', 0.39, 'mode collapse')]:
    gate = gan_metrics.quality_gate(dict(good, **{key: value}), cfg)
    assert not gate['passed'] and word in gate['reasons'][0], gate
  # Realism not measured is not a pass.
  gate = gan_metrics.quality_gate(dict(good, c2st_accuracy=None), cfg)
  assert not gate['passed'] and gate['skipped'] == ['c2st_accuracy']
  assert 'not measured' in gate['reasons'][0]


# ------------------------------------------------------------------- CLI


def _write_pngs(folder, images):
  os.makedirs(folder, exist_ok=True)
  for i, x in enumerate(images):
    u8 = np.clip(np.rint((x[..., 0] + 1) * 127.5), 0, 255).astype(np.uint8)
    Image.fromarray(u8).save(os.path.join(folder, f'{i:03d}.png'))


def _write_real(root):
  _write_pngs(os.path.join(root, 'normal'), _textures(8, seed=1, smooth=3.0))
  _write_pngs(os.path.join(root, 'hemorrhage'),
              _textures(8, seed=2, smooth=0.7))
  return str(root)


def test_load_image_folder_errors(tmp_path):
  with pytest.raises(UserInputError, match='config.real_dir'):
    gan_metrics.load_image_folder(str(tmp_path / 'missing'), 32,
                                  key='real_dir')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserInputError, match='no class subfolders'):
    gan_metrics.load_image_folder(str(tmp_path / 'empty'), 32,
                                  key='real_dir')
  root = _write_real(tmp_path / 'real')
  bad = os.path.join(root, 'normal', 'zzz.png')
  with open(bad, 'wb') as f:
    f.write(b'not a png')
  with pytest.raises(UserInputError, match='zzz.png'):
    gan_metrics.load_image_folder(root, 32, key='real_dir')
  # Flat synthetic folder: unlabelled; the manifest is ignored.
  flat = tmp_path / 'flat'
  _write_pngs(str(flat), _textures(3))
  (flat / 'manifest.json').write_text('{}')
  x, y, names, _ = gan_metrics.load_image_folder(str(flat), 32, key='s',
                                                 allow_flat=True)
  assert x.shape == (3, 32, 32, 1) and y is None and names == []
  assert x.min() >= -1 and x.max() <= 1


def test_cli_end_to_end(tmp_path):
  real = _write_real(tmp_path / 'real')
  syn = tmp_path / 'syn'
  # Only one of the real classes, plus the sampler's manifest.
  _write_pngs(str(syn / 'hemorrhage'), _textures(6, seed=3, smooth=0.7))
  (syn / 'manifest.json').write_text('{}')
  work = tmp_path / 'w'
  cmd = [sys.executable, 'main.py', '--config=configs/gan_metrics.py:tiny',
         f'--config.real_dir={real}', f'--config.synthetic_dir={syn}',
         f'--workdir={work}']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = json.loads((work / 'gan_metrics.json').read_text())
  for key in ('swd', 'fd', 'kid', 'precision', 'recall', 'c2st_accuracy',
              'tstr_accuracy', 'trtr_accuracy', 'nn_distance_ratio',
              'ms_ssim_synthetic', 'ms_ssim_real', 'gate'):
    assert key in m, key
  # Against the real hemorrhage images only (half of 8 train, half held
  # out), as the study's per-class metrics.
  assert m['num_real_train'] == m['num_real_heldout'] == 4
  assert m['num_synthetic'] == 6
  assert m['synthetic_classes'] == ['hemorrhage']
  assert m['tstr_accuracy'] is None and 'no TSTR' in m['tstr_note']
  assert m['nearest_pairs'][0]['synthetic_path'].startswith(str(syn))
  assert (work / 'nearest_neighbours.png').exists()
  assert 'gan_metrics:' in proc.stdout and 'gate:' in proc.stdout
  # Bad input: one 'error:' line naming the config key, exit code 2.
  proc = subprocess.run(cmd[:-2] + [f'--config.synthetic_dir={syn}x',
                                    f'--workdir={work}'],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.synthetic_dir'), last


def test_cli_too_few_real_images_of_the_synthetic_class(tmp_path):
  # Enough real images in all, but one training image of the one class
  # the synthetic images hold: a one-line error, not a traceback.
  real = tmp_path / 'real'
  _write_pngs(str(real / 'a'), _textures(2, seed=1))
  _write_pngs(str(real / 'b'), _textures(6, seed=2))
  _write_pngs(str(tmp_path / 'syn' / 'a'), _textures(4, seed=3))
  config = gan_metrics_cfg.get_config('tiny')
  config.real_dir, config.synthetic_dir = str(real), str(tmp_path / 'syn')
  with pytest.raises(UserInputError, match=(
      r"^config\.real_dir: 1 real training image\(s\) of the class\(es\) "
      r"compared \['a'\] after the held-out split; the metrics need >= 2$")):
    gan_metrics.run(config, str(tmp_path / 'w'))


def test_cli_holds_out_the_images_its_gan_did_not_see(tmp_path, caplog):
  # The sampler's manifest lists the GAN's training images (ids relative
  # to the dataset root, here real_dir): those are the real training
  # images, the rest of the class is held out, never a random half.
  real = _write_real(tmp_path / 'real')
  syn = tmp_path / 'syn'
  _write_pngs(str(syn / 'hemorrhage'), _textures(6, seed=3, smooth=0.7))
  seen = [f'hemorrhage/{i:03d}.png' for i in (0, 2, 3, 5, 7)]

  def run(train_ids, work):
    (syn / 'manifest.json').write_text(json.dumps(
        {'gan_training': {'hemorrhage': {'train_ids': train_ids}}}))
    config = gan_metrics_cfg.get_config('tiny')
    config.real_dir, config.synthetic_dir = real, str(syn)
    caplog.clear()
    return gan_metrics.run(config, str(tmp_path / work))

  m = run(seen, 'w1')
  assert m['heldout_split'] == 'gan_manifest'
  assert (m['num_real_train'], m['num_real_heldout']) == (5, 3)
  assert {os.path.relpath(p['real_train_path'], real)
          for p in m['nearest_pairs']} <= set(seen)
  assert 'random' not in caplog.text
  # A manifest that names none of real_dir's images (a GAN trained on
  # another copy or layout of the data): a random split, and a warning.
  m = run(['images/001.png'], 'w2')
  assert m['heldout_split'] == 'random'
  assert (m['num_real_train'], m['num_real_heldout']) == (4, 4)
  assert 'split at random' in caplog.text and 'none of its images' in caplog.text
  # Samples of both classes, a record for one: the other class's held-out
  # images cannot be told from its GAN's training images.
  _write_pngs(str(syn / 'normal'), _textures(6, seed=4, smooth=3.0))
  with pytest.raises(UserInputError, match=(
      r"manifest\.json records the training images of the GAN\(s\) of "
      r"class\(es\) \['hemorrhage'\] among config\.real_dir's images but "
      r"none of class\(es\) \['normal'\]")):
    run(seen, 'w4')
  shutil.rmtree(syn / 'normal')
  # The GAN saw every real image of its class: nothing left to hold out.
  with pytest.raises(UserInputError, match=(
      r"^config\.real_dir: 0 held-out real image\(s\) of the class\(es\) "
      r"compared \['hemorrhage'\] not among the images its GAN trained on")):
    run([f'hemorrhage/{i:03d}.png' for i in range(8)], 'w3')


@pytest.mark.parametrize('key, value, match', [
    ('feature_net', 'inception', r"^config\.metrics\.feature_net='inception'"),
    ('classifier.model', 'vgg', r"^config\.metrics\.classifier\.model='vgg'"),
    ('classifier.dtype', 'int8', r"^config\.metrics\.classifier\.dtype="),
    ('spectral_permutations', 0,
     r"^config\.metrics\.spectral_permutations=0 must be a whole number"),
])
def test_check_config_names_the_key(key, value, match):
  gan_metrics.check_config(_tiny())
  with pytest.raises(UserInputError, match=match):
    gan_metrics.check_config(_tiny(**{key: value}))
