r"""PGGAN (WGAN-GP, progressive growing) on head CT slices.

  python main.py --config=configs/pggan.py --workdir=runs/pggan
    Embedded synthetic phantoms (200 images), 4x4 -> 64x64, 27 kimg, the
    paper's feature-map ratio at CPU size (fmap 1024/64), mirroring, G_ema
    half-life a tenth of a phase. benchmarks/pggan_loop.py (float32, batch
    16, the loaded 2-core CPU) measured 137 / 24 / 8.5 img/s at 16 / 32 /
    64 px (with fmap 256/64 the 64 px loop ran at 33 img/s). Measured end
    to end while a study and the test suite shared the 2 cores: 19 kimg (to
    32x32) in 19 min, then stopped; the SWD of G_ema against the phantoms
    fell from 237 at 4x4 to 37 at 32x32 (W/metrics.jsonl). Its 15 kimg
    checkpoint (32x32, fade-in just begun) against 200 new phantoms
    (configs/gan_metrics.py at 32 px): C2ST 0.995, recall 0.33, MS-SSIM
    0.35 vs 0.20 real: fails the quality gate. A GPU run is what passes it.
  python main.py --config=configs/pggan.py:tiny --workdir=/tmp/pggan_tiny
    Smoke run: 32 synthetic images, 4x4 -> 16x16; 30 s measured on the
    2-core CPU shared with other jobs (44 s for the previous loop, same
    machine, run just before). Running it again finds the run complete
    ("Training is complete ...") and returns at once; after an interrupt
    it resumes ("Resuming from ...").
  python main.py --config=configs/pggan.py:paper --workdir=W \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    The paper's settings at 256x256: latent 512, fmap 8192/512, 800 kimg per
    stabilise and per fade-in phase, official 1-GPU minibatches; needs GPUs.
  python main.py --config=configs/pggan.py:headct --workdir=W \
      --config.data.dir=/path/to/head_ct
    Real Kaggle head CT at 128x128, fmap 4096/256 (ratio 16), 100 kimg per
    phase; for a GPU.

Every tick writes a G_ema grid (W/samples) and one line of W/metrics.jsonl:
kimg, img/s, resolution, alpha, losses, the SWD of G_ema samples against
training images and, from 16x16 on, the mean pairwise MS-SSIM of those
samples beside that of the training images (diversity) and the spectral
test's excess power of those samples (upsampling artifacts; config.metrics);
TensorBoard gets the same.

One GAN per class: --config.data.class_filter=0 (or 1). One conditional GAN
for all classes: --config.model.conditional=True.
"""

import ml_collections

from input_pipeline import config as data_config


def _sched(**overrides) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  # Resolution of the first phase.
  s.initial_resolution = 4
  # kimg to stabilise each resolution, then kimg to fade in the next one.
  s.lod_training_kimg = 600.0
  s.lod_transition_kimg = 600.0
  # Minibatch per resolution as 'res:batch,...'; minibatch_base elsewhere.
  s.minibatch_base = 16
  s.minibatch_dict = ''
  # Cap per device per resolution ('res:batch,...'), official fp32 caps.
  s.max_minibatch_per_gpu = ''
  # Adam learning rate (G and D), per-resolution overrides 'res:lr,...'.
  s.lr = 0.001
  s.lr_dict = ''
  # Progress tick (grid, log line) every tick_kimg, per-resolution overrides.
  s.tick_kimg = 1.0
  s.tick_kimg_dict = ''
  s.update(overrides)
  return s


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: None (default) | 'tiny' | 'paper' | 'headct'."""
  config = ml_collections.ConfigDict()
  config.task = 'pggan'
  # One seed for init, latents, data order and grid latents.
  config.seed = 0

  config.data = data_config.get_data_config()
  # Standalone GAN training sees all images (no test split).
  config.data.fold = -1
  config.data.storage_size = 64
  config.data.synthetic_size = 64

  config.model = ml_collections.ConfigDict()
  # Final resolution (power of two, <= data.storage_size).
  config.model.resolution = 64
  # Latent size; 0 = min(fmap_base, fmap_max) as in the official code.
  config.model.latent_size = 0
  # Feature maps at resolution 2**r: min(fmap_base / 2**(r-1), fmap_max).
  # The paper's base/max ratio of 16 (8192/512): 1024/64 gives 64, 64, 64,
  # 64, 32 maps at 4 ... 64 (256/64 gave 64, 64, 32, 16, 8).
  config.model.fmap_base = 1024
  config.model.fmap_max = 64
  # Minibatch stddev group size (<= 1 disables the layer).
  config.model.mbstd_group_size = 4
  # How G's blocks upsample their features: 'nearest' (the paper's) or
  # 'bilinear' (a low-pass filter; nearest leaves upsampling stripes that
  # quality.spectral_test measures: README, "Upsampling artifacts").
  config.model.upsample = 'nearest'
  # One class-conditional G and D for all classes (label embedding in G,
  # projection critic). False = unconditional (use data.class_filter).
  config.model.conditional = False

  config.sched = _sched(lod_training_kimg=3.0, lod_transition_kimg=3.0,
                        minibatch_base=16, tick_kimg=1.0)
  # Total length: 4 phases to 64x64 (4 x 6 kimg) + 3 kimg at 64x64.
  config.total_kimg = 27.0
  # Critic steps per generator step (official D_repeats).
  config.d_repeats = 1
  # Adam (official: b1 = 0, b2 = 0.99, eps = 1e-8); moments are reset
  # whenever a fade-in starts or ends (official reset_opt_for_new_lod).
  config.adam_b1 = 0.0
  config.adam_b2 = 0.99
  config.adam_eps = 1e-8
  config.reset_opt_for_new_lod = True
  # WGAN-GP: penalty weight and target norm, drift epsilon.
  config.gp_lambda = 10.0
  config.gp_target = 1.0
  config.drift = 0.001
  # The penalty on every gp_batch_shrink-th (real, fake) pair of a critic
  # batch only (StyleGAN2's pl_batch_shrink); 1 = all pairs (the paper).
  # At 1 the penalty is a third of an iteration's FLOPs.
  config.gp_batch_shrink = 1
  # Generator EMA (G_ema, what is sampled) as a half-life in images
  # (StyleGAN2-ADA's ema_kimg): an image's weight in G_ema halves every
  # ema_kimg kimg. 0 = ema_phase_fraction of a stabilisation phase
  # (sched.lod_training_kimg), so G_ema forgets the previous phase at any
  # schedule length (after a phase, 0.5 ** (1 / fraction) of its weight is
  # older than the phase: 0.001 at 0.1). Ramp-up: the half-life is at most
  # ema_rampup x the kimg so far (0 = off), so the random init fades fast.
  config.ema_kimg = 0.0
  config.ema_phase_fraction = 0.1
  config.ema_rampup = 0.05
  # Random horizontal flips of the reals (official mirror_augment; heads are
  # nearly left-right symmetric).
  config.mirror = True
  # DiffAugment policy on reals and fakes ('' = off, paper setting), e.g.
  # 'color,translation,cutout'.
  config.diffaug = ''
  # ADA (Karras et al. 2020, pggan_jax/augment.py) on everything the critic
  # sees: 'off' | 'fixed' (constant p) | 'ada' (p tuned from r_t). Not
  # together with diffaug.
  config.augment = ml_collections.ConfigDict()
  config.augment.mode = 'off'
  # Operations: presets/operation names of augment.py ('bgc' = ADA's).
  config.augment.policy = 'bgc'
  # Fixed p, or ADA's initial p.
  config.augment.p = 0.0
  # ADA: target r_t, kimg for p to cross [0, 1] (ADA 500; for short runs
  # about a tenth of total_kimg), and G steps between adjustments (ADA 4).
  config.augment.target = 0.6
  config.augment.speed_kimg = 500.0
  config.augment.interval = 4
  # Compute dtype (float32 | bfloat16); parameters and Adam stay float32.
  config.dtype = 'float32'
  # Training iterations (d_repeats critic steps + G step + EMA) per device
  # dispatch, K; dispatches also end at log/tick/checkpoint/schedule
  # changes. 0 = auto: 16, but 1 on the CPU, where XLA runs convolutions
  # inside a loop body ~15x slower (jax-ml/jax#12868).
  config.iters_per_dispatch = 0
  # Keep the training split on the device ('auto' | 'yes' | 'no'; auto =
  # when float32 at the final resolution fits in data_device_max_mb and no
  # grain-only option, classic augmentation or synthetic mixing, is on).
  config.data_on_device = 'auto'
  config.data_device_max_mb = 512
  # Compile every stage of the run ahead, in this many background threads,
  # beside each other and beside training (0 = compile each stage when it
  # starts). -1 = auto: half the CPU cores, at most one per stage, but 0
  # on a GPU, because XLA's autotuning while compiling locks the device
  # and stalls training: measured on an H100 with configs/study.py:gpu's
  # GAN, 8 threads left it at 1 kimg after 5.5 minutes, where compiling
  # each stage when it starts took 43-61 s per stage.
  config.compile_ahead = -1
  # Persistent XLA compilation cache ('' = leave JAX's setting alone, e.g.
  # the study's); only compilations slower than the threshold are stored.
  config.jax_cache_dir = ''
  config.jax_cache_min_compile_secs = 1.0
  # Checkpoint every checkpoint_kimg (and at the end); keep the last few.
  config.checkpoint_kimg = 5.0
  config.keep_checkpoints = 3
  # Read metrics back to the host every log_every_steps G steps.
  config.log_every_steps = 32
  # Images in each progress grid (fixed latents, from G_ema).
  config.grid_size = 16
  # Per-tick quality: SWD (pggan_jax/quality.py) of swd_images G_ema
  # samples (fixed latents) against as many fixed training images at the
  # current resolution (0 = off), in W/metrics.jsonl and TensorBoard.
  config.metrics = ml_collections.ConfigDict()
  config.metrics.swd_images = 256
  config.metrics.swd_patches_per_image = 64
  config.metrics.swd_directions = 512
  # Diversity per tick: mean MS-SSIM over this many random pairs of those
  # G_ema samples ('ms_ssim'), beside the same for the real images
  # ('ms_ssim_real'); from 16x16 on, 0 = off. Mode collapse shows as
  # ms_ssim well above ms_ssim_real. In the tick thread; measured on the
  # shared 2-core CPU: 0.04 / 0.6 / 4.5 s at 32 / 128 / 256 px.
  config.metrics.ms_ssim_pairs = 100
  # Upsampling artifacts per tick, from 8x8 on (0 = off): the spectral test
  # of pggan_jax/quality.py on those samples against those training images
  # ('spectral_excess', its p-value over this many random splits,
  # 'spectral_deficit'). On the shared 2-core CPU, 256 samples and 256
  # reals: 0.7 s at 128 px, 2.9 s at 256 px.
  config.metrics.spectral_permutations = 100

  if arg == 'tiny':
    config.data.synthetic_per_class = 16
    config.data.synthetic_size = 32
    config.data.storage_size = 32
    config.model.resolution = 16
    config.model.fmap_base = 128
    config.model.fmap_max = 32
    config.sched = _sched(lod_training_kimg=0.25, lod_transition_kimg=0.25,
                          minibatch_base=8, tick_kimg=0.5)
    # 2 fade-ins to 16x16 (2 x 0.5 kimg) + 0.5 kimg at 16x16.
    config.total_kimg = 1.5
    config.checkpoint_kimg = 0.5
    config.log_every_steps = 8
    config.metrics.swd_images = 32
    config.metrics.swd_directions = 128
  elif arg == 'paper':
    config.data.storage_size = 256
    config.model.resolution = 256
    config.model.fmap_base = 8192
    config.model.fmap_max = 512
    # Official 'preset-v2-1gpu' minibatches and fp32 per-GPU caps.
    config.sched = _sched(
        lod_training_kimg=800.0, lod_transition_kimg=800.0, minibatch_base=4,
        minibatch_dict='4:128,8:128,16:128,32:64,64:32,128:16,256:8,512:4',
        max_minibatch_per_gpu='256:16,512:8,1024:4',
        tick_kimg=160.0,
        tick_kimg_dict='4:160,8:140,16:120,32:100,64:80,128:60,256:40')
    # 6 fade-ins to 256x256 (6 x 1600 kimg) + 2400 kimg at 256x256,
    # the official 12000 kimg total.
    config.total_kimg = 12000.0
    # StyleGAN2-ADA's half-life (10 kimg at batch 32); the official PGGAN's
    # 0.999 per G step is 88 kimg at batch 128 down to 5.5 kimg at 8.
    config.ema_kimg = 10.0
    config.checkpoint_kimg = 200.0
    config.log_every_steps = 128
  elif arg == 'headct':
    config.data.name = 'head_ct'
    config.data.storage_size = 128
    config.model.resolution = 128
    # The paper's base/max ratio of 16: 256, 256, 256, 256, 128, 64 maps
    # at 4 ... 128.
    config.model.fmap_base = 4096
    config.model.fmap_max = 256
    config.sched = _sched(
        lod_training_kimg=100.0, lod_transition_kimg=100.0, minibatch_base=16,
        minibatch_dict='4:64,8:64,16:64,32:32,64:32,128:16', tick_kimg=10.0)
    # 5 fade-ins to 128x128 (5 x 200 kimg) + 200 kimg at 128x128.
    config.total_kimg = 1200.0
    # G_ema half-life: ema_phase_fraction (0.1) of a phase, 10 kimg.
    config.checkpoint_kimg = 50.0
    config.log_every_steps = 128
  elif arg:
    raise ValueError(f'unknown pggan config variant {arg!r}')
  return config
