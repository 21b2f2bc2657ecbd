r"""Apply a trained classifier to new images (one CSV row per image).

  python main.py --config=configs/predict.py --config.workdir=W \
      --config.input=DIR_OR_FILE --config.output=P.csv
    W is a finished classifier run (configs/resnet.py). Reads every PNG/JPEG
    under DIR (recursive; hidden files skipped) or the one FILE, applies the
    training preprocessing and writes P.csv with columns path, prob
    (P(positive class)), label (the class predicted at the threshold chosen
    on validation) and error (why a file could not be read; a bad file does
    not stop the run). A :tiny classifier on 3 images: 7 s wall on the
    shared 2-core CPU, nearly all of it start-up and restore.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'configs/predict.py has no variants, not {arg!r}')
  config = ml_collections.ConfigDict()
  config.task = 'predict'
  # The classifier's workdir (config.json, results.json, checkpoints/);
  # --workdir=W is accepted too.
  config.workdir = ''
  # An image file, or a directory searched recursively for PNG/JPEG.
  config.input = ''
  # The CSV to write.
  config.output = ''
  # Images per forward pass (0 = the run's eval_batch_size).
  config.batch_size = 0
  return config
