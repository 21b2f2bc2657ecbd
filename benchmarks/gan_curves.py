r"""Compares GAN settings on curves: study or PGGAN workdirs in, curves out.

  python benchmarks/gan_curves.py W_off W_ada W_diffaug

Each W is a study workdir (configs/study.py) run with one setting, or a
PGGAN workdir (configs/pggan.py: its curve only). For every finished cell
(repeat, fold) and GAN it prints the curves against kimg from
W/repeat*/fold*/gan/<class>/metrics.jsonl: SWD against training images,
ADA's p where ADA ran, and from 16x16 on the mean pairwise MS-SSIM of
G_ema's samples beside that of the training images (diversity), and from
8x8 on the spectral test's excess power of those samples over the training
images (log10; upsampling artifacts). Then a
markdown table of the cell's quality metrics against that fold's held-out
test images (quality/<class>/gan_metrics.json): SWD, KID, C2ST with its
95% interval, precision / recall, mean pairwise MS-SSIM of synthetic vs
real images (mode collapse), the spectral excess at high frequencies with
its p-value (pggan_jax.quality.spectral_test), and the quality gate.

Runs that differ in one setting, on the same folds and with two or more
seeds (--config.seed), show whether a difference exceeds seed-to-seed
spread. With several study workdirs, a last table groups them by setting
(the keys of their config.json that differ, the seed and report.* aside) and gives, per
setting and class, the mean and range over its runs and cells of SWD, KID,
C2ST, recall and synthetic MS-SSIM, and how many passed the gate. Measured with it (2-core CPU, 2026-11-26): the CPU-sized
comparison in the README, "Choosing GAN settings on curves", e.g.

  python main.py --config=configs/study.py --workdir=W_off \
    --config.data.name=head_ct --config.data.dir=DIR --config.num_repeats=1 \
    --config.folds='(0,)' --config.arms="('gan',)" \
    --config.data.storage_size=32 --config.data.synthetic_size=32 \
    --config.classifier.data.resolution=32 --config.gan.model.resolution=32 \
    --config.gan.model.fmap_base=1024 --config.gan.model.fmap_max=64 \
    --config.gan.sched.lod_training_kimg=3 \
    --config.gan.sched.lod_transition_kimg=3 --config.gan.sched.tick_kimg=1.5 \
    --config.gan.total_kimg=21 --config.gan.checkpoint_kimg=7
  (W_ada: add --config.gan.augment.mode=ada --config.gan.augment.speed_kimg=2.1;
   W_diffaug: --config.gan.diffaug=translation,cutout; a second seed:
   --config.seed=1.)
"""

import argparse
import glob
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import workdir  # pylint: disable=g-import-not-at-top


def _curve(path: str) -> str:
  rows = [json.loads(line) for line in open(path) if line.strip()]
  # '*': a tick during a fade-in, where G_ema still blends in the previous
  # resolution's (upsampled, smoother) output.
  fade = lambda r: '*' if r.get('alpha', 1.0) < 1.0 else ''
  swd = ' '.join(f"{r['kimg']:.1f}:{r.get('swd', math.nan):.0f}{fade(r)}"
                 for r in rows)
  if any('aug/p' in r for r in rows):
    swd += '   ADA p: ' + ' '.join(f"{r.get('aug/p', 0.0):.2f}" for r in rows)
  if any('ms_ssim' in r for r in rows):
    swd += '   MS-SSIM G_ema/real: ' + ' '.join(
        f"{r['kimg']:.1f}:{r['ms_ssim']:.2f}/{r['ms_ssim_real']:.2f}{fade(r)}"
        for r in rows if 'ms_ssim' in r)
  if any('spectral_excess' in r for r in rows):
    swd += '   spectral excess: ' + ' '.join(
        f"{r['kimg']:.1f}:{r['spectral_excess']:.2f}{fade(r)}"
        for r in rows if 'spectral_excess' in r)
  return swd


def _f(x, fmt: str = '.2f') -> str:
  """A metric, or '—' where gan_metrics left it undefined (None)."""
  return '—' if x is None else format(x, fmt)


def _row(name: str, cell: str, cls: str, m: dict) -> str:
  gate = m.get('gate') or {}
  verdict = ('pass' if gate.get('passed') else
             'fail: ' + '; '.join(r.split(':')[0] for r in gate.get('reasons',
                                                                     [])))
  c2st = m.get('c2st_accuracy')
  c2st = (f"{c2st:.2f} [{m['c2st_ci_low']:.2f}, {m['c2st_ci_high']:.2f}]"
          if c2st is not None else '—')
  g = lambda k, fmt='.2f': _f(m.get(k), fmt)
  return (f"| {name} | {cell} | {cls} | {g('swd', '.1f')} | "
          f"{g('kid', '.3f')} ± {g('kid_std', '.3f')} | {c2st} | "
          f"{g('precision')} / {g('recall')} | "
          f"{g('ms_ssim_synthetic')} / {g('ms_ssim_real')} | "
          f"{g('spectral_excess')} ({g('spectral_excess_null95')}, "
          f"{g('spectral_excess_p', '.3f')}) | "
          f"{verdict} |")


# The settings table's metrics (gan_metrics.json keys) and formats.
_SUMMARY = (('SWD', 'swd', '.1f'), ('KID', 'kid', '.3f'),
            ('C2ST', 'c2st_accuracy', '.2f'), ('recall', 'recall', '.2f'),
            ('MS-SSIM synthetic', 'ms_ssim_synthetic', '.2f'),
            ('spectral excess', 'spectral_excess', '.2f'))


def _settings(workdirs: list[str]) -> dict[str, str]:
  """Study workdir -> its setting: `key=value` for each key, the seed and
  the report's keys aside (they change no GAN), whose value differs between
  the workdirs' config.json files."""
  configs = {}
  for w in workdirs:
    path = os.path.join(w, 'config.json')
    if os.path.isfile(path) and not os.path.isfile(
        os.path.join(w, 'metrics.jsonl')):
      with open(path) as f:
        configs[w] = workdir.flatten(json.load(f))
  keys = sorted({k for c in configs.values() for k in c
                 if k != 'seed' and not k.startswith('report.')})
  varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True)
                                     for c in configs.values()}) > 1]
  return {w: ' '.join(f'{k}={json.dumps(c.get(k))}' for k in varying)
          or 'all runs' for w, c in configs.items()}


def _summary(groups: dict) -> list[str]:
  """{(setting, class): [gan_metrics dicts]} -> markdown table lines."""
  lines = ['| setting | class | n | ' + ' | '.join(
      n for n, _, _ in _SUMMARY) + ' | gate passed |',
           '|---|---|---|' + '---|' * len(_SUMMARY) + '---|']
  for (setting, cls), ms in groups.items():
    cols = []
    for _, key, fmt in _SUMMARY:
      v = [m[key] for m in ms if m.get(key) is not None]
      cols.append(f'{format(sum(v) / len(v), fmt)} ({format(min(v), fmt)}–'
                  f'{format(max(v), fmt)})' if v else '—')
    passed = sum(bool((m.get('gate') or {}).get('passed')) for m in ms)
    lines.append(f'| {setting} | {cls} | {len(ms)} | ' + ' | '.join(cols)
                 + f' | {passed} of {len(ms)} |')
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('workdirs', nargs='+')
  a = p.parse_args()
  table = ['| run | cell | class | SWD | KID | C2ST [95% CI] | '
           'precision / recall | MS-SSIM synthetic / real | '
           'spectral excess (null 95%, p) | gate |',
           '|---|---|---|---|---|---|---|---|---|---|']
  curves = []
  settings = _settings(a.workdirs)
  groups = {}   # (setting, class) -> gan_metrics of every run and cell
  for w in a.workdirs:
    name = os.path.basename(os.path.normpath(w))
    if os.path.isfile(os.path.join(w, 'metrics.jsonl')):  # one PGGAN run
      curves.append(f'{name}: SWD {_curve(os.path.join(w, "metrics.jsonl"))}')
      continue
    cells = sorted(glob.glob(os.path.join(w, 'repeat*', 'fold*')))
    if not cells:
      raise SystemExit(f'{w}: neither a PGGAN workdir (metrics.jsonl) nor a '
                       'study workdir (repeat*/fold* cells)')
    for cell_dir in cells:
      cell = os.path.relpath(cell_dir, w)
      for path in sorted(glob.glob(os.path.join(cell_dir, 'gan', '*',
                                                'metrics.jsonl'))):
        gan = os.path.basename(os.path.dirname(path))
        curves.append(f'{name} {cell} {gan}: SWD {_curve(path)}')
      for path in sorted(glob.glob(os.path.join(cell_dir, 'quality', '*',
                                                'gan_metrics.json'))):
        with open(path) as f:
          m = json.load(f)
        cls = os.path.basename(os.path.dirname(path))
        table.append(_row(name, cell, cls, m))
        if w in settings:
          groups.setdefault((settings[w], cls), []).append(m)
  if len(table) > 2:  # study cells with quality metrics
    print('\n'.join(table) + '\n')
  print('Curves of G_ema against training images at each tick: kimg:SWD; '
        'from 16x16, kimg:MS-SSIM of G_ema / of the real images; '
        '* = during a fade-in')
  print('\n'.join(curves))
  if len(settings) > 1 and groups:
    print('\nPer setting (mean and range over its runs and cells):\n')
    print('\n'.join(_summary(groups)))


if __name__ == '__main__':
  main()
