"""ResNet classifier on one fold (hemorrhage vs normal).

  python main.py --config=configs/resnet.py --workdir=/tmp/resnet \\
      --config.data.name=head_ct --config.data.dir=../shared/data/head_ct \\
      --config.arm=classic
    Narrow ResNet-18 (num_filters 16) at 64x64, fold 0, 30 epochs of the
    ~136 training images (127 steps of 32 on fold 0), SGD-Nesterov +
    warmup/cosine. Measured on the shared 2-core CPU, fold 0,
    arm=classic, seed 0: 28 s wall (16 s training, batches drawn on the
    device; 2026-11-27). Test figures are not quoted here: defaults are
    chosen without looking at test data (see `PROVENANCE`).
  python main.py --config=configs/resnet.py:tiny --workdir=/tmp/resnet_tiny
    Smoke run on 16 + 16 synthetic phantoms at 32x32, _ResNet1, 4 steps;
    seconds on a CPU (the tests use it).
  python main.py --config=configs/resnet.py:paper --workdir=W \\
      --config.data.name=head_ct --config.data.dir=/path/to/head_ct
    ResNet-50 at 224x224, width 64, bfloat16 compute; for GPUs.

Writes W/config.json (this config, for configs/predict.py and
configs/compare.py), W/results.json (val / test metrics at threshold 0.5
and at the threshold chosen on val; training seconds and img/s after the
first dispatch; for the 'gan' arms the synthetic folder, its GANs, the
ratio and each class's share), W/test_predictions.csv (id,label,prob),
W/tensorboard/ and W/checkpoints/ (resumed if present; a finished run
returns its results.json without training).
"""

import ml_collections

from input_pipeline import config as data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: None (default, CPU) | 'tiny' (tests) | 'paper' (GPU)."""
  config = ml_collections.ConfigDict()
  config.task = 'resnet'
  # One seed for init and data order (splits use data.split_seed).
  config.seed = 0
  # none | classic (classic augmentation) | gan (+ data.synthetic_dir) |
  # classic+gan. The arm switches data.augment.enabled itself.
  config.arm = 'classic'

  config.data = data_config.get_data_config()
  config.data.resolution = 64
  # Used only by the 'gan' arms: fraction of each batch that is synthetic.
  config.data.synthetic_ratio = 0.5
  # 'add' (default): the 'gan' arms see the same real images as the others
  # plus synthetic ones (1 / (1 - synthetic_ratio) times the steps), the
  # design of the GAN-augmentation papers; 'equal_compute': the same steps,
  # so synthetic images replace that fraction of the real exposures.
  config.synthetic_mode = 'add'

  # resnet18 | resnet34 | resnet50 (| _resnet1, tests only).
  config.model = 'resnet18'
  # Width of the first stage (64 in the paper); 16 keeps a CPU fold at ~1-2
  # minutes and is plenty for 200 images.
  config.num_filters = 16
  # Compute dtype (params stay float32). float32 is faster on this CPU.
  config.dtype = 'float32'

  # sgd (Nesterov momentum) | adamw.
  config.optimizer = 'sgd'
  config.learning_rate = 0.05
  config.momentum = 0.9
  # Decoupled for adamw, L2-style (added to the gradient) for sgd; kernels
  # only.
  config.weight_decay = 5e-4
  # Linear warmup over this fraction of the steps, then cosine decay to 0.
  config.warmup_fraction = 0.1
  config.label_smoothing = 0.1

  # Global batch size (a multiple of the device count).
  config.batch_size = 32
  config.eval_batch_size = 64
  # Training length: kimg (thousands of images shown) if > 0, else epochs of
  # the fold's training split. Steps are derived from it.
  config.kimg = 0.0
  config.num_epochs = 30.0
  # Training batches drawn on the device from images loaded once ('auto' |
  # 'yes' | 'no'; auto = one process and the fold's training images, uint8
  # and padded to a power of two, fit in data_device_max_mb), or streamed
  # by grain ('no'). The two draw different (equally valid) batch streams
  # from one seed; see resnet_jax/train_data.py.
  config.data_on_device = 'auto'
  config.data_device_max_mb = 1024
  # Training steps per device dispatch when batches are drawn on the device
  # (dispatches also end at eval and checkpoint steps); 0 = auto: 16,
  # but 1 on the CPU, where XLA runs convolutions inside a loop body many
  # times slower (jax-ml/jax#12868).
  config.steps_per_dispatch = 0
  config.log_every_steps = 10
  # Validation metrics logged every N steps (0 = only at the end). The final
  # model is evaluated (no best-val checkpoint selection).
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 100

  if arg == 'tiny':
    config.data.synthetic_per_class = 16
    config.data.synthetic_size = 32
    config.data.storage_size = 32
    config.data.resolution = 32
    config.data.num_folds = 2
    config.data.val_fraction = 0.25
    config.model = '_resnet1'
    config.num_filters = 4
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 0.0
    config.kimg = 0.032  # 4 steps
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
  elif arg == 'paper':
    config.data.storage_size = 256
    config.data.resolution = 224
    config.model = 'resnet50'
    config.num_filters = 64
    config.dtype = 'bfloat16'
    config.learning_rate = 0.1
    config.weight_decay = 1e-4
    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 90.0
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 200
  elif arg:
    raise ValueError(
        f'Unknown variant {arg!r}; use configs/resnet.py[:tiny|:paper]')
  return config
