r"""PGGAN (WGAN-GP, progressive growing) on head CT slices.

  python main.py --config=configs/pggan.py --workdir=runs/pggan
    Embedded synthetic phantoms (200 images), 4x4 -> 64x64, 27 kimg, small
    feature maps (fmap 256/64). Measured: 14 min 58 s wall on the 2-core CPU
    (under `nice -n 5`, while a study run shared the cores), including the
    compilation of each stage. The last grid of G_ema,
    runs/pggan/samples/fakes_000027008.png, shows recognisable head phantoms
    (skull ring, grey parenchyma, dark ventricles).
  python main.py --config=configs/pggan.py:tiny --workdir=/tmp/pggan_tiny
    Smoke run: 32 synthetic images, 4x4 -> 16x16; 77 s measured on the
    loaded 2-core CPU. Running it again resumes ("Resuming from ...") and
    returns at once.
  python main.py --config=configs/pggan.py:paper --workdir=W \
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    The paper's settings at 256x256: latent 512, fmap 8192/512, 800 kimg per
    stabilise and per fade-in phase, official 1-GPU minibatches; needs GPUs.
  python main.py --config=configs/pggan.py:headct --workdir=W \
      --config.data.dir=/path/to/head_ct
    Real Kaggle head CT at 128x128 with small feature maps.

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
  config.model.fmap_base = 256
  config.model.fmap_max = 64
  # Minibatch stddev group size (<= 1 disables the layer).
  config.model.mbstd_group_size = 4
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
  # Generator EMA decay per G step (paper 0.999; shorter runs need less).
  config.ema_decay = 0.99
  # DiffAugment policy on reals and fakes ('' = off, paper setting), e.g.
  # 'color,translation,cutout'.
  config.diffaug = ''
  # Compute dtype (float32 | bfloat16); parameters stay float32.
  config.dtype = 'float32'
  # Checkpoint every checkpoint_kimg (and at the end); keep the last few.
  config.checkpoint_kimg = 5.0
  config.keep_checkpoints = 3
  # Read metrics back to the host every log_every_steps G steps.
  config.log_every_steps = 20
  # Images in each progress grid (fixed latents, from G_ema).
  config.grid_size = 16

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
    config.ema_decay = 0.9
    config.checkpoint_kimg = 0.5
    config.log_every_steps = 10
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
    config.ema_decay = 0.999
    config.checkpoint_kimg = 200.0
    config.log_every_steps = 100
  elif arg == 'headct':
    config.data.name = 'head_ct'
    config.data.storage_size = 128
    config.model.resolution = 128
    config.model.fmap_base = 2048
    config.model.fmap_max = 256
    config.sched = _sched(
        lod_training_kimg=100.0, lod_transition_kimg=100.0, minibatch_base=16,
        minibatch_dict='4:64,8:64,16:64,32:32,64:32,128:16', tick_kimg=10.0)
    # 5 fade-ins to 128x128 (5 x 200 kimg) + 200 kimg at 128x128.
    config.total_kimg = 1200.0
    config.ema_decay = 0.999
    config.checkpoint_kimg = 50.0
    config.log_every_steps = 100
  elif arg:
    raise ValueError(f'unknown pggan config variant {arg!r}')
  return config
