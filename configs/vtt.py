r"""Visual Turing test: make a blinded browser test, then score the answers.

  python main.py --config=configs/vtt.py --config.real_dir=R \
      --config.synthetic_dir=S --config.num_images=N --workdir=W
    Draws N/2 real and N/2 synthetic images (seeded; R and S are
    DIR/<class>/*.png or flat DIR/*.png, so the sample CLI's output works as
    S), makes them look alike (grayscale, padded square, one display size,
    bare PNG, opaque ids, shuffled) and writes W/vtt/index.html — one
    self-contained file for the readers, opened straight from disk — and
    W/vtt/key.json, the answers, to keep away from them. 100 images at
    64x64: about 1 s on the shared 2-core CPU (plus JAX start-up).

  python main.py --config=configs/vtt.py:score \
      --config.answers=A.csv[,B.csv...] --workdir=W
    Reads the readers' downloaded CSVs against W/vtt/key.json and writes
    W/vtt_report.md (accuracy with a 95 % Clopper-Pearson interval,
    sensitivity, specificity, accuracy by confidence, Fleiss' kappa) and
    W/vtt_fooled.png (the synthetic images most often taken for real).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg None = make the test; 'score' = score readers' answers."""
  config = ml_collections.ConfigDict()
  if arg == 'score':
    config.task = 'vtt_score'
    # Readers' CSVs as the page downloads them, comma-separated; one file
    # may hold several readers, one reader may not answer an image twice.
    config.answers = ''
    # At most this many synthetic images in W/vtt_fooled.png.
    config.grid_size = 16
    return config
  if arg not in (None, '', 'make'):
    raise ValueError(f'configs/vtt.py: unknown variant {arg!r} '
                     "(none or 'score')")
  config.task = 'vtt'
  # Real images: DIR/<class>/*.{png,jpg,jpeg} or DIR/*.{png,jpg,jpeg}.
  config.real_dir = ''
  # Synthetic images, same layouts (configs/sample.py's output folder; its
  # manifest.json is ignored). With class folders on both sides the real
  # draw matches the synthetic draw's class counts.
  config.synthetic_dir = ''
  # Images in the test, half real and half synthetic (even).
  config.num_images = 100
  # Seeds the draw, the order and the image ids: same seed, same test.
  config.seed = 0
  # Side of the square every image is shown at, in pixels; 0 = the smallest
  # native size among the drawn images (at most 512), so none is upsampled
  # and made blurrier than the others. The browser scales it to the screen.
  config.display_size = 0
  # Also ask each image's class (optional for the reader) when the folders
  # have class subfolders.
  config.ask_class = True
  return config
