r"""Write PNGs from a trained PGGAN's G_ema (an image_folder for the study).

  python main.py --config=configs/sample.py --config.workdir=runs/pggan \
      --config.num_images=100 --config.output_dir=runs/pggan_samples
    Restores the latest checkpoint (or --config.step=NIMG), writes 100 PNGs
    (in O/<class_name>/ for a conditional model, or for a GAN trained on one
    class with data.class_filter) and O/manifest.json in a few seconds on
    CPU. Same seed, same images. `--workdir=runs/pggan` works as well as
    --config.workdir.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'configs/sample.py has no variants, not {arg!r}')
  config = ml_collections.ConfigDict()
  config.task = 'sample'
  # A PGGAN training workdir (with config.json and checkpoints/); empty =
  # the --workdir flag.
  config.workdir = ''
  # Images to write (per class for a conditional model).
  config.num_images = 16
  # Output folder.
  config.output_dir = ''
  # Latent seed.
  config.seed = 0
  # Conditional models: class index or name ('' = every class).
  config.label = ''
  # Checkpoint step (images shown); -1 = latest.
  config.step = -1
  return config
