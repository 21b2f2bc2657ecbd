r"""The augmentation study: repeated k-fold x {none, classic, gan, classic+gan}.

  python main.py --config=configs/study.py:tiny --workdir=/tmp/study_tiny
    Embedded synthetic phantoms at 32x32 (GANs to 32x32), tiny PGGANs and
    ResNets, 2 folds x 1 repeat x 4 arms, quality metrics included (the
    tests run it). Running it again skips every finished step and only
    rewrites the report.
  python main.py --config=configs/study.py --workdir=runs/study
    Default: synthetic phantoms, CPU-sized PGGANs to 64x64 (4.5 kimg each)
    and the CPU ResNet at 64x64, 5 folds x 3 repeats. Measured on the real
    head_ct data (the command below): 63 min wall on the shared 2-core CPU
    (GANs 30 min, quality 9 min, classifiers 24 min). Its GANs fail the
    quality gate (pooled C2ST 0.98, mode collapse) and report.md says in
    its first lines that
    the 'gan' arms do not test GAN augmentation: on a CPU they are a smoke
    test of the machinery. Use :gpu for GANs that can pass the gate.
  python main.py --config=configs/study.py --workdir=runs/study_headct \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
  python main.py --config=configs/study.py --workdir=W \
      --config.data.name=image_folder --config.data.dir=DIR \
      --config.data.positive_class=NAME
    The same study on real data; nothing else needs changing.
  python main.py --config=configs/study.py:cpu32 --workdir=W \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    A CPU, GANs that can pass the quality gate: 5 folds x 1 repeat x 4
    arms at 32x32, per-class GANs of 54 kimg (fmap 1024/64); about 2 h 45
    min on 2 cores with XLA_FLAGS=--xla_force_host_platform_device_count=2;
    see _cpu32().
  python main.py --config=configs/study.py:gpu --workdir=W \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    One GPU: 5 folds x 3 repeats x 4 arms at 64x64 with larger GANs (fmap
    4096/256, 96 kimg each, ADA) and ResNet-50; see _gpu(). One cell took
    5 min 51 s on an H100 (most of it compiling); not yet run whole.
  python main.py --config=configs/study.py:paper --workdir=W \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    Paper scale for a GPU: PGGAN to 256x256, ResNet-50 at 224x224.

Outputs in the workdir: results.csv (repeat, fold, seed, arm, metrics),
report.md (the quality gate's verdict first; mean ± sd and corrected 95% CI
per arm; corrected resampled t-tests, Holm-adjusted, of classic+gan vs
classic and gan vs none; descriptive per-fold tables; synthetic-image
quality per cell), roc.png, arms.png, samples.png, summary.json; see
resnet_jax/study.py.

`data` is the one data block of the study: before each sub-run it is copied
into `gan.data` / `classifier.data` (all keys but the consumer's resolution,
augment and synthetic_ratio), and the study sets data.fold,
data.class_filter, data.synthetic_dir, seed and arm per cell. So override
data options here (`--config.data.X`), not in `gan.data` or
`classifier.data`.
"""

import ml_collections

from configs import gan_metrics as gan_metrics_cfg
from configs import pggan as pggan_cfg
from configs import resnet as resnet_cfg
from input_pipeline import config as data_config


PROVENANCE = (
    'No default was chosen by looking at classifier test results. '
    'Classifier: '
    'ResNet v1.5 with SGD-Nesterov, linear warm-up and cosine decay and '
    'label smoothing 0.1 follow the literature (He et al. 2016; Goyal et '
    'al. 2017; Szegedy et al. 2016); width 16, 64x64 inputs and 30 epochs '
    'were set once, for a CPU time budget of about a minute per fold, and '
    'not changed after seeing any result. Caveat: an earlier version of '
    '`configs/resnet.py` quoted the default\'s fold-0 test score (split seed '
    '0), so fold-0 test data of repeat 0 had been looked at during '
    'development, though no setting was compared on it. GAN: the '
    'architecture, losses and Adam settings are those of the PGGAN paper '
    '(Karras et al. 2018); capacity, schedule length and augmentation are '
    'scaled for the compute budget and judged by the synthetic-image '
    'metrics (SWD, C2ST, ...) against real images, never by classifier '
    'test scores. Caveat: those comparisons (README, "Choosing GAN settings '
    'on curves") measured against the held-out test images of repeat 0, '
    'fold 0 (split seed 0), the images that fold-0 cells of a study with '
    'the default split report on, so that cell\'s GAN quality figures are '
    'not independent of the choice; most comparisons kept the paper\'s '
    'setting. Tune any further setting on the validation split '
    '(results.json: val), not on test.')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: None (default, CPU at 64x64) | 'tiny' | 'cpu32' | 'gpu' | 'paper'."""
  if arg not in (None, '', 'tiny', 'cpu32', 'gpu', 'paper'):
    raise ValueError(f'unknown study config variant {arg!r}; use '
                     'configs/study.py[:tiny|:cpu32|:gpu|:paper]')
  variant = arg or None
  built_on_default = {'cpu32': _cpu32, 'gpu': _gpu}.get(variant)
  if built_on_default:
    variant = None
  config = ml_collections.ConfigDict()
  config.task = 'study'
  # Repeated k-fold: repeat r splits with data.split_seed + r and seeds its
  # GANs, sampling and arms with seed + r (the arms of a cell share init and
  # data order, so the comparison is paired).
  config.seed = 0
  config.num_repeats = 3
  # Folds to run (a tuple of fold indices); () = all data.num_folds folds.
  config.folds = ()
  # 'per_class': one unconditional PGGAN per class (data.class_filter);
  # 'conditional': one class-conditional PGGAN (gan.model.conditional).
  config.gan_mode = 'per_class'
  # Classifier arms; 'gan' arms mix the cell's synthetic images in (see
  # classifier.synthetic_mode: 'add' by default).
  config.arms = ('none', 'classic', 'gan', 'classic+gan')
  # Synthetic images per cell: num_synthetic_per_class x number of classes,
  # split between classes by synthetic_class_balance: 'prevalence' (as in
  # the real training split, so the class prior is unchanged) or 'equal'.
  config.num_synthetic_per_class = 200
  config.synthetic_class_balance = 'prevalence'
  # A rerun whose configuration differs from a finished step's: 'error'
  # (stop, naming the step) or 'recompute' (redo the changed steps).
  config.on_config_change = 'error'
  # Many machines, one study: 'i/N' runs only every N-th (repeat, fold)
  # cell, starting at i (e.g. SLURM: --config.shard=$SLURM_ARRAY_TASK_ID/N);
  # the last shard to finish writes the report. merge=True trains nothing:
  # it checks that every step is finished (with this configuration) and
  # writes results.csv and the report, or names what is missing.
  config.shard = ''
  config.merge = False

  # The shared data block (see the module docstring).
  config.data = data_config.get_data_config()
  # Images are stored once at this size; every model reads from it.
  config.data.storage_size = 64
  config.data.synthetic_size = 64
  # Keep near-duplicates in one split (a group never straddles train/test).
  config.data.duplicates = 'group'

  config.gan = pggan_cfg.get_config(variant)
  if variant is None:
    # 30 GANs (5 folds x 3 repeats x 2 classes) on a CPU: a CPU-sized
    # architecture (fmap 256/64: 64, 64, 32, 16, 8 maps at 4 ... 64; the
    # paper's ratio, 1024/64, runs 4x slower at 64x64 on this CPU) on a
    # schedule far too short for PGGAN, 0.5 kimg per stabilise and per
    # fade-in phase (4.5 kimg in all). These GANs fail the quality gate and
    # the report says so: on a CPU the 'gan' arms are a smoke test of the
    # machinery. Use :gpu for GANs that can pass it.
    config.gan.model.fmap_base = 256
    config.gan.model.fmap_max = 64
    config.gan.sched.lod_training_kimg = 0.5
    config.gan.sched.lod_transition_kimg = 0.5
    config.gan.sched.tick_kimg = 0.5
    config.gan.total_kimg = 4.5
    config.gan.checkpoint_kimg = 1.5
  config.classifier = resnet_cfg.get_config(variant)

  # Synthetic-image quality of every cell's GANs against that fold's
  # held-out real images (resnet_jax/gan_metrics.py), a table in the report
  # and a quality gate: when the GANs fail it, the report says in its first
  # lines that the 'gan' arms do not test GAN augmentation.
  config.quality = ml_collections.ConfigDict()
  config.quality.enabled = True
  config.quality.metrics = gan_metrics_cfg.get_metrics_config(
      'tiny' if variant == 'tiny' else None)

  config.report = ml_collections.ConfigDict()
  # Metric whose paired t-test is the primary result.
  config.report.primary_metric = 'auc'
  # Coverage of all intervals.
  config.report.confidence = 0.95
  # Synthetic images per class in samples.png (first fold/seed).
  config.report.samples_per_class = 8
  config.report.title = 'PGGAN augmentation study'
  # Shown in the report's first lines (set by :tiny).
  config.report.smoke_note = ''
  # How the defaults were chosen (the report's section of that name).
  config.report.provenance = PROVENANCE

  # Persistent XLA compilation cache ('' = ~/.cache/pggan_jax/jax_cache):
  # compiled steps are reused across cells and reruns. Only compilations
  # slower than the threshold (seconds) are stored.
  config.jax_cache_dir = ''
  config.jax_cache_min_compile_secs = 0.5

  # GANs of at most this many kimg (config.gan.total_kimg) are far too
  # short to test GAN augmentation: with 'gan' arms, the report says so in
  # its first lines whether or not the quality step runs (0: never). The
  # CPU default's 4.5 kimg GANs failed the gate on Head CT.
  config.report.smoke_gan_kimg = 4.5 if variant is None else 0.0
  # The quality gate (study_outputs.pooled_gate) judges each class pooled
  # over the cells, and fails where more than this fraction of the
  # per-class measurements (cell x class) fail on their own.
  config.report.gate_max_failed_fraction = 0.25
  if variant == 'tiny':
    config.num_repeats = 1
    config.report.smoke_note = (
        'Smoke run (`configs/study.py:tiny`): tiny '
        'models and schedules. Its numbers test the machinery, not whether '
        'GAN augmentation helps.')
    config.data.num_folds = 2
    config.data.val_fraction = 0.25
    config.data.synthetic_per_class = 20
    config.data.synthetic_size = 32
    config.data.storage_size = 32
    config.num_synthetic_per_class = 16
    config.report.samples_per_class = 6
    # pggan.py:tiny's models grown one stage further, to the classifier's
    # 32x32, on a short schedule: 0.125 kimg at 4x4, then 3 fade-ins of
    # 0.125 kimg each followed by 0.125 kimg of stabilising.
    config.gan.model.resolution = 32
    config.gan.sched.lod_training_kimg = 0.125
    config.gan.sched.lod_transition_kimg = 0.125
    config.gan.sched.tick_kimg = 0.25
    config.gan.total_kimg = 0.875
    config.gan.checkpoint_kimg = 0.25
  elif variant == 'paper':
    config.data.storage_size = 256
    config.data.synthetic_size = 256
    config.num_synthetic_per_class = 1000
  if built_on_default:
    built_on_default(config)
  return config


def _cpu32(config: ml_collections.ConfigDict) -> None:
  """A CPU: GANs that can pass the quality gate, at 32x32, one repeat.

  Per-class GANs at 32x32 with the paper's feature-map ratio at CPU size
  (fmap 1024/64: 64 maps at every resolution), 3 kimg per stabilise and per
  fade-in phase up to 32x32 (18 kimg), then 36 kimg at 32x32 (54 kimg in
  all), mirroring; the CPU ResNet at the GANs' 32x32. One repeat of 5
  folds: 10 GANs. The schedule is the one whose diversity curves and gate
  the README gives ("Diversity needs a long last phase"): on Head CT fold 0
  both classes' GANs passed the gate with two seeds.

  Measured on real Head CT (README, "What :cpu32 found"), shared 2-core
  CPU, XLA_FLAGS=--xla_force_host_platform_device_count=2 (one device per
  core: 1.7x the GAN loop's speed at 32x32): 14.9-16.0 min per undisturbed
  GAN, so about 2 h 45 min for the study; on one device, about 1.7x that.
  """
  config.num_repeats = 1
  config.data.storage_size = 32
  config.data.synthetic_size = 32
  config.classifier.data.resolution = 32
  gan = config.gan
  gan.model.resolution = 32
  gan.model.fmap_base = 1024
  gan.model.fmap_max = 64
  gan.sched.lod_training_kimg = 3.0
  gan.sched.lod_transition_kimg = 3.0
  gan.sched.tick_kimg = 3.0
  gan.total_kimg = 54.0
  gan.checkpoint_kimg = 9.0
  config.report.title = 'PGGAN augmentation study (CPU, 32x32)'
  config.report.smoke_gan_kimg = 0.0  # these GANs can pass the gate


def _gpu(config: ml_collections.ConfigDict) -> None:
  """One GPU: GANs that can pass the quality gate, ResNet-50 at 64x64.

  GANs: the paper's feature-map ratio of 16 at 64x64 (fmap 4096/256: 256,
  256, 256, 128, 64 maps at 4 ... 64), the official 1-GPU minibatches, 8
  kimg per stabilise and per fade-in phase up to 64x64 (64 kimg), then 32
  kimg (1,000 steps of 32) at 64x64 (96 kimg in all), ADA tuned from r_t
  with p able to cross [0, 1] in a tenth of the run, mirroring, G_ema
  half-life a tenth of a phase. Classifier: ResNet-50 (the seed paper's),
  full width, bfloat16 compute, at the GANs' 64x64.

  The long last phase is read off the CPU's diversity curves (README,
  "Diversity needs a long last phase"): on Head CT per-class GANs at 32x32
  (batch 16), G_ema's MS-SSIM was 0.2-0.4 above the real images' when the
  last phase began, fell most over its first 560-1,125 steps and kept
  falling slowly up to 2,250 (where both seeds' GANs passed the gate);
  SWD levelled off after about 560-750. 8 kimg at batch 32 is 250 steps;
  1,000 is a compromise with the 10-minute budget, to be checked on the
  GPU's own curves (metrics.jsonl's ms_ssim). ADA's speed stays a tenth
  of the run, so p now moves a quarter slower in the growing phases too
  (those CPU runs used mirroring only). Measured on an H100 earlier, the
  loop at 64x64 ran at 1,463 img/s in float32, so the extra 24 kimg cost
  about 16 s a GAN (8 min over the study's 30 GANs) at that speed; these
  GANs compute in bfloat16, whose loop ran at 2,486 img/s there later.

  Measured on one H100 (benchmarks/device_check.sh, HEAD_CT=... SECTIONS=
  study, 2026-11-27; the README's "GPU, TPU and clusters" has the table):
  repeat 0 fold 0 ran whole in 5 min 51 s of steps (364 s for the
  process) with a fresh compilation cache.
  Its first GAN took 226 s, nearly all of it compiling the five stages one
  after another (compiling them ahead in 8 threads stalled training: XLA's
  autotuning locks the device, so config.gan.compile_ahead is off there).
  Each class's training images are padded on the device to a power of two
  (Head CT's 67-68 a class and fold: 128), so the second GAN reused the
  first one's programs from the persistent compilation cache and took
  25.4 s for its 96 kimg (2,500-2,700 img/s at 64x64 in bfloat16). Both
  GANs passed the quality gate against the fold's held-out images (C2ST
  0.75 each, MS-SSIM 0.39 / 0.26 against 0.34 / 0.19 real), SWD still
  falling slowly at 96 kimg. The other 14 cells, estimated from that cell
  at about 2 min each, make about 35 minutes: the 10-minute budget is not
  met. Since then the classifier arms (about 40 s of that cell after its
  first) draw their batches on the device, 16 steps per dispatch, and
  share two compiled steps for the whole study; on an H200 they trained
  at 10,127 img/s (benchmarks/classifier_feed.py).

  At these settings the GANs alone exceed 10 minutes on one GPU: 6.1
  PFLOP a GAN (80 % of it at 64x64), 183 PFLOP for 30, 10.4 min at the
  293 TFLOP/s the loop reaches at batch 32 on an H200. Batch 128 at 64x64
  (7.1 min) would give the last phase a quarter of its steps: on the CPU,
  4 times the minibatch at the same kimg gave GANs about as good as a
  quarter of the steps at the smaller batch, and their 'hemorrhage' GANs
  failed the gate on diversity (README, "A bigger minibatch at the same
  kimg"). Several GPUs run the study as a job array (config.shard).
  """
  gan = config.gan
  gan.model.fmap_base = 4096
  gan.model.fmap_max = 256
  gan.sched.minibatch_dict = '4:64,8:64,16:64,32:32,64:32'
  gan.sched.lod_training_kimg = 8.0
  gan.sched.lod_transition_kimg = 8.0
  gan.sched.tick_kimg = 8.0
  gan.total_kimg = 96.0
  gan.checkpoint_kimg = 24.0
  gan.augment.mode = 'ada'
  gan.augment.speed_kimg = 9.6
  gan.dtype = 'bfloat16'
  clf = config.classifier
  clf.model = 'resnet50'
  clf.num_filters = 64
  clf.dtype = 'bfloat16'
  clf.batch_size = 64
  clf.eval_batch_size = 128
  config.report.title = 'PGGAN augmentation study (GPU)'
  config.report.smoke_gan_kimg = 0.0  # these GANs can pass the gate
