"""Tests for resnet_jax.study and configs/study.py.

Two levels: `run_study` with fake GAN/sampler/classifier functions (fast:
plumbing, resumability, leakage), and one end-to-end
`python main.py --config=configs/study.py:tiny` run in a subprocess, shared
by the tests below it (module-scoped fixture), then rerun once.
"""

import csv
import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from configs import study as study_cfg
from input_pipeline import dataset
from input_pipeline import errors
from input_pipeline import images
from input_pipeline import workdir as workdir_lib
from resnet_jax import report
from resnet_jax import study
from resnet_jax import study_outputs
from resnet_jax import study_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ('repeat,fold,seed,arm,accuracy,sensitivity,specificity,'
          'balanced_accuracy,f1,auc')


# ---------------------------------------------------------------- unit tests


def test_config_variants_build():
  for variant in (None, 'tiny', 'cpu32', 'gpu', 'paper'):
    config = study_cfg.get_config(variant)
    assert config.task == 'study'
    assert config.data.storage_size >= config.gan.model.resolution
  with pytest.raises(ValueError):
    study_cfg.get_config('nope')
  # The CPU default's 4.5-kimg GANs are a smoke test, said whether or not
  # its quality step runs; the variants whose GANs can pass the gate say
  # nothing up front.
  default = study_cfg.get_config(None)
  assert default.report.smoke_gan_kimg == default.gan.total_kimg == 4.5
  for variant in ('cpu32', 'gpu', 'paper'):
    assert study_cfg.get_config(variant).report.smoke_gan_kimg == 0


def test_smoke_note_for_short_gans_only_with_gan_arms():
  config = study_cfg.get_config(None)
  note = study_outputs.smoke_note(config, study_cfg.get_config(None).arms)
  assert 'Its GANs train 4.5 kimg each' in note and 'smoke test' in note
  assert not study_outputs.smoke_note(config, ('none', 'classic'))
  config.gan.total_kimg = 54.0  # overridden: no longer called too short
  assert not study_outputs.smoke_note(config, config.arms)
  tiny = study_cfg.get_config('tiny')  # its own note, no GAN warning
  assert study_outputs.smoke_note(tiny, tiny.arms) == tiny.report.smoke_note


def _install_fakes(monkeypatch, calls):
  """Fake pggan train/sample and resnet train that record their calls."""

  def gan_train(config, workdir, *, resume_ignore=()):
    assert 'data.synthetic_dir' in resume_ignore
    calls.append(('gan', workdir, config.data.fold, config.data.class_filter,
                  config.seed, config.model.conditional))
    os.makedirs(workdir, exist_ok=True)
    return {'kimg': 1.0}

  def sample(workdir, num_images, output_dir, *, seed=0, label=None,
             step=None):
    del step
    calls.append(('sample', workdir, output_dir, seed, label))
    # As pggan_jax.sample: a one-class GAN (gan/<class>) or a conditional
    # one asked for one label writes output_dir/<class>/ and merges its
    # training record into output_dir/manifest.json.
    name = (('normal', 'hemorrhage')[label] if label is not None
            else os.path.basename(workdir))
    for i in range(num_images):
      images.save_png(np.full((8, 8, 1), i, np.uint8),
                      os.path.join(output_dir, name, f'{i:05d}.png'))
    path = os.path.join(output_dir, 'manifest.json')
    m = json.load(open(path)) if os.path.exists(path) else {
        'gan_training': {}}
    m['gan_training'][name] = {'workdir': workdir}
    with open(path, 'w') as f:
      json.dump(m, f)
    return m

  def evaluate(*args, config, seed, workdir):
    del args, config
    calls.append(('quality', workdir, seed))
    return {'swd': 1.0, 'c2st_accuracy': 0.99, 'nn_distance_ratio': 1.2}

  def quality_gate(metrics, config):
    del config
    return {'passed': metrics['c2st_accuracy'] < 0.95,
            'reasons': ['c2st_accuracy 0.99 >= 0.95']}

  def resnet_train(config, workdir, *, resume_ignore=()):
    assert 'data.synthetic_dir' in resume_ignore
    calls.append(('resnet', workdir, config.arm, config.data.fold,
                  config.data.synthetic_dir, config.seed))
    os.makedirs(workdir, exist_ok=True)
    # Numbers of the cell and arm alone, as a real run's (not of the
    # call order): sharded and merged studies can be compared row by row.
    rng = np.random.default_rng(
        [config.data.fold, config.seed, report.ARMS.index(config.arm)])
    with open(os.path.join(workdir, 'test_predictions.csv'), 'w') as f:
      f.write('id,label,prob\n')
      for i in range(10):
        f.write(f'{i},{i % 2},{rng.uniform():.4f}\n')
    metrics = {m: float(rng.uniform(0.5, 1.0)) for m in report.METRICS}
    return {'val': dict(metrics, threshold=0.4),
            'test': dict(metrics, threshold=0.4)}

  # The studies' up-front config checks stay the real ones.
  real_checks = {name: importlib.import_module(name).check_config
                 for name in ('pggan_jax.train', 'resnet_jax.train',
                              'resnet_jax.gan_metrics')}
  fakes = {'pggan_jax.train': {'train_and_evaluate': gan_train},
           'pggan_jax.sample': {'sample': sample},
           'resnet_jax.gan_metrics': {'evaluate': evaluate,
                                      'quality_gate': quality_gate},
           'resnet_jax.train': {'train_and_evaluate': resnet_train}}
  for name, check in real_checks.items():
    fakes[name]['check_config'] = check
  for name in ('pggan_jax.train', 'resnet_jax.train'):
    fakes[name]['LEGACY_ABSENT'] = importlib.import_module(name).LEGACY_ABSENT
  for name, attrs in fakes.items():
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    package, attr = name.split('.')
    monkeypatch.setattr(importlib.import_module(package), attr, module,
                        raising=False)


def _fake_config(tmp_path):
  config = study_cfg.get_config('tiny')
  config.data.tfds_dir = str(tmp_path / 'tfds')
  config.jax_cache_dir = str(tmp_path / 'jax_cache')
  return config


def test_run_study_with_fakes_plumbing_and_resume(tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.num_repeats = 2
  workdir = str(tmp_path / 'study')
  study.run_study(config, workdir)

  gans = [c for c in calls if c[0] == 'gan']
  arms = [c for c in calls if c[0] == 'resnet']
  # 2 repeats x 2 folds x 2 classes GANs, 2 x 2 x 4 classifiers.
  assert len(gans) == 8 and len(arms) == 16
  assert {(c[2], c[3], c[4]) for c in gans} == {
      (f, label, s) for f in (0, 1) for label in (0, 1) for s in (0, 1)}
  # Quality per cell: per class and for both classes together.
  assert len([c for c in calls if c[0] == 'quality']) == 4 * 3
  for _, workdir_, arm, fold, synthetic_dir, seed in arms:
    repeat = seed - config.seed
    if 'gan' in arm:
      assert synthetic_dir == os.path.join(workdir, f'repeat{repeat}',
                                           f'fold{fold}', 'samples')
      assert sorted(os.listdir(synthetic_dir)) == [
          'hemorrhage', 'manifest.json', 'normal']
    else:
      assert synthetic_dir == ''

  # Each repeat has its own split seed, hence its own folds; the GAN ids in
  # each manifest are what class_filter + fold select in that split.
  prepared = dataset.prepare(config.data, None)
  tests = []
  for repeat in (0, 1):
    p = prepared.with_split_seed(config.data.split_seed + repeat)
    m = json.load(open(os.path.join(workdir, f'repeat{repeat}', 'fold1',
                                    'manifest.json')))
    assert m['split_seed'] == config.data.split_seed + repeat
    train = p.indices(1, 'train')
    for label, name in enumerate(p.class_names):
      expect = [p.ids[i] for i in train if p.labels[i] == label]
      assert m['gan_train_ids'][name] == expect
    assert set(m['test']) == {p.ids[i] for i in p.indices(1, 'test')}
    tests.append(set(m['test']))
  assert tests[0] != tests[1]

  # Synthetic images per class follow the training prevalence.
  samples = os.path.join(workdir, 'repeat0', 'fold0', 'samples')
  sm = json.load(open(os.path.join(samples, 'manifest.json')))
  total = config.num_synthetic_per_class * 2
  assert sum(sm['per_class'].values()) == total
  for name, n in sm['per_class'].items():
    assert len(os.listdir(os.path.join(samples, name))) == n
  assert set(sm['gan_training']) == {'normal', 'hemorrhage'}

  with open(os.path.join(workdir, 'results.csv')) as f:
    lines = f.read().splitlines()
  assert lines[0].startswith(HEADER + ',')
  assert len(lines) == 1 + 2 * 2 * 4
  md = open(os.path.join(workdir, 'report.md')).read()
  assert '### classic+gan vs classic' in md and '### gan vs none' in md
  # The fake GANs fail the quality gate: the report says so up front.
  head = md[:md.index('## ')]
  assert 'quality gate' in head.lower() and 'smoke' in head.lower()

  # Rerun: nothing is recomputed, the report is rebuilt.
  n = len(calls)
  study.run_study(config, workdir)
  assert len(calls) == n

  # A crash after one arm: only the missing arm runs again.
  os.remove(os.path.join(workdir, 'repeat1', 'fold0', 'done',
                         'arm_gan.json'))
  study.run_study(config, workdir)
  assert [c[2] for c in calls[n:]] == ['gan']

  # A copied (or moved) workdir resumes too: nothing runs again.
  moved = str(tmp_path / 'elsewhere' / 'study')
  shutil.copytree(workdir, moved)
  n = len(calls)
  study.run_study(config, moved)
  assert len(calls) == n


@pytest.mark.parametrize('block, module, keep, refuse, step', [
    # Arms streamed their batches by grain: data_on_device='no'.
    ('classifier', 'resnet_jax.train', {'data_on_device': 'no'},
     {'data_on_device': 'auto'}, 'arm none'),
    # GANs took the penalty on the whole batch: the default.
    ('gan', 'pggan_jax.train', {}, {'gp_batch_shrink': 2}, r'GAN \w+')])
def test_steps_of_older_studies_resume(tmp_path, monkeypatch, block, module,
                                       keep, refuse, step):
  """A study whose steps finished before the keys of `module`.LEGACY_ABSENT
  existed: with the values that compute what they did, every finished step
  is kept; with others the step is refused, named."""
  legacy_keys = list(importlib.import_module(module).LEGACY_ABSENT)
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.folds = (0,)
  old = config.copy_and_resolve_references()
  with old[block].unlocked():
    for key in legacy_keys:
      del old[block][key]
  workdir = str(tmp_path / 'study')
  study.run_study(old, workdir)
  n = len(calls)
  config[block].update(keep)
  study.run_study(config, workdir)
  assert len(calls) == n
  config[block].update(refuse)
  with pytest.raises(errors.UserInputError,
                     match=step + ' was run with another configuration'):
    study.run_study(config, workdir)
  assert len(calls) == n


def test_changed_config_is_refused_or_recomputed(tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.folds = (0,)
  workdir = str(tmp_path / 'study')
  study.run_study(config, workdir)
  n = len(calls)

  # A classifier setting changed: refused, naming the step; nothing runs.
  config.classifier.learning_rate *= 2
  with pytest.raises(errors.UserInputError,
                     match=r'arm none was run with another configuration'):
    study.run_study(config, workdir)
  assert len(calls) == n
  # Asked to recompute: every arm again, GANs and sampling kept.
  config.on_config_change = 'recompute'
  study.run_study(config, workdir)
  assert sorted(c[0] for c in calls[n:]) == ['resnet'] * 4
  n = len(calls)

  # A GAN setting changed: the GANs, sampling, quality and gan arms rerun;
  # the arms without synthetic images are kept.
  config.gan.sched.lod_training_kimg *= 2
  study.run_study(config, workdir)
  redone = [c for c in calls[n:]]
  assert sorted(c[0] for c in redone if c[0] != 'sample') == [
      'gan', 'gan', 'quality', 'quality', 'quality', 'resnet', 'resnet']
  assert sorted(c[2] for c in redone if c[0] == 'resnet') == [
      'classic+gan', 'gan']
  n = len(calls)

  # The GANs' tick metrics (config.gan.metrics.*) are only logged: every
  # finished step is kept.
  config.on_config_change = 'error'
  config.gan.metrics.swd_images += 1
  study.run_study(config, workdir)
  assert len(calls) == n
  # A quality-metrics setting changed (config.quality.metrics.*, whose keys
  # the GANs' tick metrics must not shadow): only the quality step reruns.
  config.quality.metrics.spectral_permutations += 1
  with pytest.raises(errors.UserInputError, match=(
      r'synthetic-image quality was run with another configuration')):
    study.run_study(config, workdir)
  assert len(calls) == n
  config.on_config_change = 'recompute'
  study.run_study(config, workdir)
  assert sorted(c[0] for c in calls[n:]) == ['quality'] * 3


def test_partial_step_dir_of_another_config_is_refused(tmp_path,
                                                       monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.folds = (0,)
  config.arms = ('none',)
  workdir = str(tmp_path / 'study')
  # A killed run of another configuration left an arm directory behind.
  arm_dir = os.path.join(workdir, 'repeat0', 'fold0', 'arms', 'none')
  os.makedirs(arm_dir)
  with open(os.path.join(arm_dir, study_steps.HASH_FILE), 'w') as f:
    f.write('0123456789abcdef')
  with open(os.path.join(arm_dir, 'checkpoint'), 'w') as f:
    f.write('partial')
  with pytest.raises(errors.UserInputError, match='another configuration'):
    study.run_study(config, workdir)
  assert not [c for c in calls if c[0] == 'resnet']


def test_run_study_conditional_gan(tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.gan_mode = 'conditional'
  config.folds = (1,)
  config.arms = ('gan',)
  workdir = str(tmp_path / 'study')
  study.run_study(config, workdir)
  gans = [c for c in calls if c[0] == 'gan']
  # One conditional GAN on all classes of fold 1's training split.
  assert [c[2:] for c in gans] == [(1, -1, 0, True)]
  assert not config.gan.model.conditional  # the study config is untouched
  samples = os.path.join(workdir, 'repeat0', 'fold1', 'samples')
  manifest = json.load(open(os.path.join(samples, 'manifest.json')))
  assert manifest['gan_mode'] == 'conditional'
  assert sorted(c[4] for c in calls if c[0] == 'sample') == [0, 1]
  assert len(os.listdir(os.path.join(samples, 'hemorrhage'))) == (
      manifest['per_class']['hemorrhage'])
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert len(f.read().splitlines()) == 2


def test_run_study_rejects_bad_config(tmp_path):
  config = study_cfg.get_config('tiny')
  config.arms = ('none', 'magic')
  with pytest.raises(errors.UserInputError, match='config.arms'):
    study.run_study(config, str(tmp_path))
  config = study_cfg.get_config('tiny')
  config.report.gate_max_failed_fraction = 25  # a percentage
  with pytest.raises(errors.UserInputError, match=(
      r'^config\.report\.gate_max_failed_fraction=25(\.0)? must be a fraction')):
    study.run_study(config, str(tmp_path))


@pytest.mark.parametrize('key, value, match', [
    ('gan.dtype', 'float16', r"^config\.gan\.dtype='float16' is not"),
    ('gan.model.resolution', 48, r'^config\.gan\.model\.resolution: '),
    ('gan.augment.mode', 'always', r'^config\.gan\.augment\.mode='),
    ('classifier.model', 'resnet7', r"^config\.classifier\.model='resnet7'"),
    ('classifier.dtype', 'float16', r'^config\.classifier\.dtype='),
    ('classifier.data.synthetic_ratio', 1.5,
     r'^config\.classifier\.data\.synthetic_ratio=1\.5 must be in'),
    ('quality.metrics.feature_net', 'inception',
     r"^config\.quality\.metrics\.feature_net='inception'"),
    ('quality.metrics.classifier.model', 'vgg',
     r"^config\.quality\.metrics\.classifier\.model='vgg'"),
])
def test_bad_sub_config_stops_the_study_before_anything_runs(
    key, value, match, tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  block, *rest = key.split('.')
  node = config[block]
  for k in rest[:-1]:
    node = node[k]
  node[rest[-1]] = value
  workdir = tmp_path / 'study'
  with pytest.raises(errors.UserInputError, match=match):
    study.run_study(config, str(workdir))
  assert not calls
  assert not os.path.exists(workdir / 'splits.json')


def test_sub_run_error_names_the_studys_key(tmp_path, monkeypatch):
  """A GAN error raised only when the GAN runs still names config.gan.*."""
  calls = []
  _install_fakes(monkeypatch, calls)

  def gan_train(config, workdir, **kwargs):
    del workdir, kwargs
    raise errors.UserInputError(
        f'config.compile_ahead={config.get("compile_ahead")!r} must be -1')

  sys.modules['pggan_jax.train'].train_and_evaluate = gan_train
  config = _fake_config(tmp_path)
  config.folds = (0,)
  with pytest.raises(errors.UserInputError,
                     match=r'^config\.gan\.compile_ahead='):
    study.run_study(config, str(tmp_path / 'study'))


# ------------------------------------------------------- end to end (tiny)


def _run_tiny(workdir):
  t = time.time()
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/study.py:tiny',
       f'--workdir={workdir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc, time.time() - t


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('study') / 'tiny')
  proc, seconds = _run_tiny(workdir)
  return workdir, proc, seconds


def _cells(workdir):
  return [os.path.join(workdir, 'repeat0', f'fold{f}') for f in (0, 1)]


def test_tiny_results_csv(tiny_study):
  workdir, _, seconds = tiny_study
  print(f'tiny study took {seconds:.0f} s')
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert f.readline().strip().split(',')[:10] == HEADER.split(',')
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 1 * 4
  assert {(r['repeat'], r['fold'], r['seed'], r['arm']) for r in rows} == {
      ('0', str(f), '0', a) for f in (0, 1) for a in report.ARMS}
  for r in rows:
    for m in report.METRICS:
      v = float(r[m])
      assert np.isnan(v) or 0.0 <= v <= 1.0, (m, v)


def test_tiny_report_and_plots(tiny_study):
  workdir, proc, _ = tiny_study
  assert proc.stdout.strip().splitlines()[-1] == (
      f"study report: {os.path.join(workdir, 'report.md')}")
  md = open(os.path.join(workdir, 'report.md')).read()
  for arm in report.ARMS:
    # mean ± sd and an interval for every arm and metric.
    for m in report.METRICS:
      assert f'| {arm} | {m} | 2 | ' in md, (arm, m)
  assert '95% CI' in md and 'Wilcoxon' in md and 'primary' in md
  assert '### classic+gan vs classic' in md and '### gan vs none' in md
  assert '## Time' in md and '## Configuration' in md and '## Data' in md
  for name in ('roc.png', 'arms.png', 'samples.png'):
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 1000, name
  for cell in _cells(workdir):
    samples = os.path.join(cell, 'samples')
    for name in ('normal', 'hemorrhage'):
      pngs = [f for f in os.listdir(os.path.join(samples, name))
              if f.endswith('.png')]
      assert len(pngs) == 16


def test_tiny_no_leakage(tiny_study):
  workdir, _, _ = tiny_study
  splits = json.load(open(os.path.join(workdir, 'splits.json')))
  for cell in _cells(workdir):
    m = json.load(open(os.path.join(cell, 'manifest.json')))
    train, test = set(m['train']), set(m['test'])
    assert train and test and not train & test
    assert set(m['val']).isdisjoint(test)
    assert set(m['gan_train_ids']) == {'normal', 'hemorrhage'}
    for ids in m['gan_train_ids'].values():
      assert ids and set(ids) <= train and not set(ids) & test
    for group in splits['duplicate_groups']:
      assert not (set(group) & train and set(group) & test), group
    # The fold's test ids are exactly the split manifest's.
    assert test == set(splits['folds'][m['fold']]['test'])


def test_gan_curves_benchmark_reads_the_study(tiny_study):
  workdir, _, _ = tiny_study
  proc = subprocess.run(
      [sys.executable, 'benchmarks/gan_curves.py', workdir], cwd=ROOT,
      capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  rows = [l for l in proc.stdout.splitlines() if l.startswith('| tiny |')]
  # 2 cells x (2 classes + all), each from its gan_metrics.json.
  assert len(rows) == 6, proc.stdout
  m = json.load(open(os.path.join(workdir, 'repeat0', 'fold1', 'quality',
                                  'normal', 'gan_metrics.json')))
  assert any(f"| tiny | repeat0/fold1 | normal | {m['swd']:.1f} |" in r
             for r in rows), proc.stdout
  curves = [l for l in proc.stdout.splitlines() if l.startswith('tiny ')]
  assert len(curves) == 4, curves
  # One kimg:SWD pair per tick of the GAN's metrics.jsonl, its last SWD.
  ticks = [json.loads(l) for l in open(os.path.join(
      workdir, 'repeat0', 'fold0', 'gan', 'normal', 'metrics.jsonl'))]
  curve = next(c for c in curves if c.startswith('tiny repeat0/fold0 normal:'))
  pairs = re.findall(r' (\d+\.\d):(\d+)', curve.split(' MS-SSIM ')[0])
  assert len(pairs) == len(ticks) >= 2, (pairs, ticks)
  assert int(pairs[-1][1]) == round(ticks[-1]['swd']), (pairs, ticks[-1])
  # Diversity per tick from 16x16 on: G_ema's and the training images' mean
  # pairwise MS-SSIM, the latter one value per resolution (fixed reals).
  div = [t for t in ticks if 'ms_ssim' in t]
  assert div and all(t['resolution'] >= 16 for t in div), ticks
  assert all(t['resolution'] < 16 for t in ticks if t not in div), ticks
  for t in div:
    assert 0.0 < t['ms_ssim'] < 1.0 and 0.0 < t['ms_ssim_real'] < 1.0, t
  for res in {t['resolution'] for t in div}:
    assert len({t['ms_ssim_real'] for t in div if t['resolution'] == res}
              ) == 1, div
  assert any(t['ms_ssim'] != t['ms_ssim_real'] for t in div), div
  assert f"{div[-1]['kimg']:.1f}:{div[-1]['ms_ssim']:.2f}/" in curve
  # The spectral test per tick from 8x8 on (config.metrics.
  # spectral_permutations), its excess the curve's last section.
  spec = [t for t in ticks if 'spectral_excess' in t]
  assert spec and all(t['resolution'] >= 8 for t in spec), ticks
  assert all(t['resolution'] < 8 for t in ticks if t not in spec), ticks
  for t in spec:
    assert 0.0 < t['spectral_excess_p'] <= 1.0, t
    assert t['spectral_deficit'] <= t['spectral_excess'], t
  assert curve.endswith(f"{spec[-1]['kimg']:.1f}:"
                        f"{spec[-1]['spectral_excess']:.2f}"), curve
  # A PGGAN workdir alone: its curves, the same line.
  gan_dir = os.path.join(workdir, 'repeat0', 'fold0', 'gan', 'normal')
  proc = subprocess.run(
      [sys.executable, 'benchmarks/gan_curves.py', gan_dir], cwd=ROOT,
      capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert 'normal: ' + curve.split(' normal: ')[1] in proc.stdout.splitlines()


def test_gan_curves_groups_runs_by_setting(tiny_study, tmp_path):
  """Four runs of the tiny study's quality metrics: seeds 0 and 1 of two
  settings of gp_batch_shrink; the settings table gives each setting's
  mean and range over its runs and cells."""
  workdir, _, _ = tiny_study
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  runs = []
  for shrink in (1, 2):
    for seed in (0, 1):
      run = tmp_path / f's{shrink}_seed{seed}'
      for path in glob.glob(os.path.join(workdir, 'repeat*', 'fold*',
                                         'quality', '*', 'gan_metrics.json')):
        with open(path) as f:
          m = json.load(f)
        m['swd'] = 10.0 * shrink + seed   # known values to summarise
        out = run / os.path.relpath(path, workdir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(m))
      config['seed'] = seed
      config['gan']['gp_batch_shrink'] = shrink
      # The report's keys change no GAN: not a setting.
      config['report']['title'] = f'run {shrink}.{seed}'
      (run / 'config.json').write_text(json.dumps(config))
      runs.append(str(run))
  proc = subprocess.run(
      [sys.executable, 'benchmarks/gan_curves.py', *runs], cwd=ROOT,
      capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  rows = [l for l in proc.stdout.splitlines()
          if l.startswith('| gan.gp_batch_shrink=')]
  # 2 settings x (2 classes + all); 2 runs x 2 cells each.
  assert len(rows) == 6, proc.stdout
  assert '| gan.gp_batch_shrink=1 | all | 4 | 10.5 (10.0–11.0) |' in rows[0]
  assert any(r.startswith('| gan.gp_batch_shrink=2 | normal | 4 | '
                          '20.5 (20.0–21.0) |') for r in rows), rows


def test_tiny_rerun_is_noop(tiny_study):
  workdir, _, first = tiny_study
  watched = []
  for cell in _cells(workdir):
    for root, _, files in os.walk(cell):
      watched += [os.path.join(root, f) for f in files
                  if f in ('results.json', 'test_predictions.csv')
                  or root.endswith('done') or f.endswith('.png')]
  assert len(watched) > 2 * (4 + 3 + 32)
  before = {p: os.stat(p).st_mtime_ns for p in watched}
  proc, seconds = _run_tiny(workdir)
  assert {p: os.stat(p).st_mtime_ns for p in watched} == before
  # Per cell: 2 GANs, sampling, quality, 4 arms.
  assert proc.stderr.count('skipping finished cell') == 2 * (2 + 1 + 1 + 4)
  print(f'rerun took {seconds:.0f} s (first run {first:.0f} s)')


def test_tiny_moved_workdir_resumes_an_unfinished_gan_arm(tiny_study,
                                                          tmp_path):
  """A partial 'gan' arm records the samples' old absolute path; after the
  workdir moved, the study resumes it instead of refusing it."""
  moved = str(tmp_path / 'moved')
  shutil.copytree(tiny_study[0], moved)
  cell = os.path.join(moved, 'repeat0', 'fold0')
  os.remove(os.path.join(cell, 'done', 'arm_gan.json'))
  os.remove(os.path.join(cell, 'arms', 'gan', 'results.json'))
  recorded = json.load(open(os.path.join(cell, 'arms', 'gan',
                                         'config.json')))
  assert not recorded['data']['synthetic_dir'].startswith(moved)
  proc, _ = _run_tiny(moved)
  assert 'running repeat 0 fold 0 arm gan' in proc.stderr
  assert proc.stderr.count('skipping finished cell') == 2 * (2 + 1 + 1 + 4) - 1
  assert os.path.exists(os.path.join(cell, 'arms', 'gan', 'results.json'))


def test_shards_then_merge_match_one_process(tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  config.num_repeats = 2
  one = str(tmp_path / 'one')
  study.run_study(config, one)

  sharded = str(tmp_path / 'sharded')
  config.shard = '0/3'
  n = len(calls)
  assert study.run_study(config, sharded) == {}  # others not finished
  assert not os.path.exists(os.path.join(sharded, 'results.csv'))
  shard0 = {c[1] for c in calls[n:] if c[0] == 'gan'}
  merge = config.copy_and_resolve_references()
  merge.shard, merge.merge = '', True
  with pytest.raises(errors.UserInputError, match=r'config.merge=True: \d+ '
                     r'step\(s\) .* not finished'):
    study.run_study(merge, sharded)
  config.shard = '2/3'
  study.run_study(config, sharded)
  config.shard = '1/3'  # the last shard to finish writes the report
  n2 = len(calls)
  study.run_study(config, sharded)
  assert not shard0 & {c[1] for c in calls[n2:] if c[0] == 'gan'}
  # 4 cells over 3 shards: every GAN trained exactly once.
  gan_dirs = [c[1] for c in calls[n:] if c[0] == 'gan']
  assert len(gan_dirs) == len(set(gan_dirs)) == 4 * 2

  def rows(w):
    with open(os.path.join(w, 'results.csv')) as f:
      return list(csv.reader(f))
  assert len(rows(one)) == 1 + 4 * 4 and rows(sharded) == rows(one)
  study.run_study(merge, sharded)  # merge alone rebuilds the same report
  assert rows(sharded) == rows(one)
  def summary(w):
    with open(os.path.join(w, 'summary.json')) as f:
      return json.load(f)
  for key in ('arms', 'comparisons', 'gate'):
    assert summary(sharded)[key] == summary(one)[key]


def test_merge_on_another_backend(tmp_path, monkeypatch):
  # Shards on GPUs, the merge on a CPU login node: the merge accepts steps
  # finished on another backend; training there still refuses them.
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  workdir = str(tmp_path / 'study')
  with monkeypatch.context() as m:
    m.setattr(study_steps, 'this_backend', lambda: 'gpu')
    for i in range(2):
      config.shard = f'{i}/2'
      study.run_study(config, workdir)
  with open(os.path.join(workdir, 'results.csv')) as f:
    gpu_rows = f.read()
  os.remove(os.path.join(workdir, 'results.csv'))
  n = len(calls)
  merge = config.copy_and_resolve_references()
  merge.shard, merge.merge = '', True
  study.run_study(merge, workdir)
  assert len(calls) == n  # nothing trained
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert f.read() == gpu_rows
  config.shard = ''
  with pytest.raises(errors.UserInputError,
                     match='another configuration'):
    study.run_study(config, workdir)
  # A step missing is named as the backend closest to finished sees it.
  os.remove(os.path.join(workdir, 'repeat0', 'fold0', 'done',
                         'arm_classic.json'))
  with pytest.raises(errors.UserInputError,
                     match=r'1 step\(s\) .* repeat 0 fold 0 arm classic\)'):
    study.run_study(merge, workdir)


def test_last_shard_leaves_report_while_other_cells_are_stale(
    tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  workdir = str(tmp_path / 'study')
  study.run_study(config, workdir)
  # A changed setting, recomputed shard by shard: the first shard to end
  # sees the other shard's cells finished with the old configuration.
  config.classifier.learning_rate *= 2
  config.on_config_change = 'recompute'
  config.shard = '0/2'
  assert study.run_study(config, workdir) == {}
  config.shard = '1/2'
  assert 'report.md' in study.run_study(config, workdir)


def test_last_shard_refuses_shards_run_with_different_settings(
    tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  workdir = str(tmp_path / 'study')
  config.shard = '0/2'
  assert study.run_study(config, workdir) == {}
  config.classifier.learning_rate *= 2  # not a recompute: a mistake
  config.shard = '1/2'
  with pytest.raises(errors.UserInputError, match='another configuration'):
    study.run_study(config, workdir)


def test_pooled_gate_interval_only_where_judgements_are_independent():
  metrics = study_cfg.get_config('tiny').quality.metrics
  row = lambda r, f: {
      'repeat': r, 'fold': f, 'class': 'all', 'c2st_accuracy': 0.7,
      'c2st_n': 40, 'nn_distance_ratio': 1.0, 'num_exact_copies': 0,
      'num_synthetic': 40, 'ms_ssim_synthetic': 0.3, 'ms_ssim_real': 0.3}
  one = study_outputs.pooled_gate([row(0, 0), row(0, 1)], metrics)['pooled']
  assert one['c2st_n'] == 80
  assert one['c2st_ci_low'] < 0.7 < one['c2st_ci_high']
  # Repeats test the same real images again: no exact interval.
  two = study_outputs.pooled_gate([row(0, 0), row(1, 0)], metrics)['pooled']
  assert two['c2st_n'] == 80 and 'c2st_ci_low' not in two


def test_bad_shard_is_one_line_error(tmp_path):
  config = _fake_config(tmp_path)
  config.shard = '3/3'
  with pytest.raises(errors.UserInputError, match='config.shard'):
    study.run_study(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # refused before writing


def test_workdir_lock_whole_study_and_shards(tmp_path, monkeypatch):
  calls = []
  _install_fakes(monkeypatch, calls)
  config = _fake_config(tmp_path)
  workdir = str(tmp_path / 'study')
  busy = workdir_lib.WorkdirBusyError
  # Another whole-study run holds W: a whole run and a shard refuse.
  with workdir_lib.lock(workdir, 'study'):
    with pytest.raises(busy, match=f'{workdir} is in use by this process'):
      study.run_study(config, workdir)
    config.shard = '1/2'
    with pytest.raises(busy):
      study.run_study(config, workdir)
  assert not calls
  # Shard 0/2 is running: shard 1/2 runs beside it; a second shard 0/2 and
  # a whole-study run refuse.
  with workdir_lib.lock(workdir, 'study shard 0/2', shared=True), \
      workdir_lib.lock(workdir, 'study shard 0/2', name='.lock-shard-0-of-2'):
    config.shard = '0/2'
    with pytest.raises(busy, match='study shard 0/2'):
      study.run_study(config, workdir)
    config.shard = ''
    with pytest.raises(busy):
      study.run_study(config, workdir)
    config.shard = '1/2'
    assert study.run_study(config, workdir) == {}  # shard 0's cell is open
  assert {c[2] for c in calls if c[0] == 'gan'} == {1}  # fold 1 only
  assert not os.path.exists(os.path.join(workdir, '.lock-shard-1-of-2'))
