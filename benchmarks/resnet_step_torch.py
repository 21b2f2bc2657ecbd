"""PyTorch reference for benchmarks/resnet_step.py (same model shape).

  pip install torch   # not a project dependency
  python benchmarks/resnet_step_torch.py --resolution=128,224 --batch_size=16
      [--device=cuda|cpu] [--dtype=float32,bfloat16] [--channels_last]

The model below is torchvision's ResNet-50 layout (v1.5: stride on the 3x3
conv), written out so that only torch is needed; parameter count with 3
channels / 1000 classes is 25,557,032 as resnet_jax.models.ResNet50.
One step = forward, cross-entropy, backward, SGD-momentum update with
weight decay, BN in training mode. Prints images/s (median over timed steps)
for each resolution and dtype, one process for all (one CUDA start-up).
On CUDA, float32 uses TF32 (as XLA's default GPU precision); bfloat16 is
autocast with float32 parameters (as resnet_jax's dtype='bfloat16').
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

import torch_twin  # benchmarks/torch_twin.py


class Bottleneck(nn.Module):

  def __init__(self, cin, filters, stride):
    super().__init__()
    out = 4 * filters
    self.body = nn.Sequential(
        nn.Conv2d(cin, filters, 1, bias=False), nn.BatchNorm2d(filters),
        nn.ReLU(inplace=True),
        nn.Conv2d(filters, filters, 3, stride, 1, bias=False),
        nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
        nn.Conv2d(filters, out, 1, bias=False), nn.BatchNorm2d(out))
    self.proj = None
    if stride != 1 or cin != out:
      self.proj = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                nn.BatchNorm2d(out))

  def forward(self, x):
    r = x if self.proj is None else self.proj(x)
    return torch.relu(self.body(x) + r)


def resnet50(channels, num_classes, width=64, stages=(3, 4, 6, 3)):
  layers = [nn.Conv2d(channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
  cin = width
  for i, n in enumerate(stages):
    for j in range(n):
      layers.append(Bottleneck(cin, width * 2**i, 2 if i and not j else 1))
      cin = 4 * width * 2**i
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin,
                                                              num_classes)]
  return nn.Sequential(*layers)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--resolution', default='128,224')
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--channels', type=int, default=1)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--channels_last', action='store_true',
                 help='NHWC memory format (often faster with oneDNN).')
  torch_twin.add_args(p, several_dtypes=True)
  args = p.parse_args()
  for dtype in args.dtype:
    autocast, _ = torch_twin.setup(args, dtype)
    print(f'torch {torch.__version__} threads={torch.get_num_threads()} '
          f'resnet50 batch={args.batch_size} channels={args.channels} '
          f'channels_last={args.channels_last} device={args.device} '
          f'dtype={dtype}', flush=True)
    for res in map(int, args.resolution.split(',')):
      _time(args, res, autocast)


def _time(args, res: int, autocast) -> None:
  model = resnet50(args.channels, 2)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=1e-4)
  x = torch.rand(args.batch_size, args.channels, res, res) * 2 - 1
  y = torch.randint(0, 2, (args.batch_size,))
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
  model.train()

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  times = np.array(times)
  print(f'{res}x{res}: {args.batch_size / np.median(times):.2f} img/s '
        f'(median of {len(times)} steps; min-step '
        f'{args.batch_size / times.min():.2f} img/s; loss {loss:.3f})',
        flush=True)


if __name__ == '__main__':
  main()
