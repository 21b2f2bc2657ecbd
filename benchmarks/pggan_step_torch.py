r"""PyTorch reference for benchmarks/pggan_step.py (same PGGAN shape).

  pip install torch   # not a project dependency
  python benchmarks/pggan_step_torch.py [--fmap_base=8192 --fmap_max=512]
      [--max_res=256] [--min_res=4] [--batch=16] [--iters=5]
      [--device=cuda|cpu]
      [--dtype=float32|bfloat16]

On CUDA, float32 runs with TF32 matmuls and convolutions (as XLA's default
precision on a GPU); bfloat16 is autocast (parameters and Adam in float32,
as pggan_jax's dtype='bfloat16'). The gradient penalty's second backward
pass runs under the same autocast.

Mirrors pggan_jax.networks (official G_paper / D_paper, one channel):
equalized-LR conv / dense (N(0, 1) weights times the He constant at run
time), pixel norm, minibatch stddev (group 4), nearest 2x upsampling, 2x2
average-pool downsampling, LeakyReLU 0.2, feature maps nf(r) =
min(fmap_base / 2**(r - 1), fmap_max) at resolution 2**r, latent size
min(fmap_base, fmap_max). Both nets are built at max_res and run up to the
stage, with the fade-in path at alpha = 0.5, as the JAX benchmark.

One step = critic step (WGAN-GP: gradient penalty through
torch.autograd.grad(create_graph=True), lambda 10, drift 0.001, reals faded
as steps.fade_reals) + generator step (-E[D(G(z))]) + generator EMA, with
Adam(b1=0, b2=0.99, eps=1e-8). As optax does over the whole pytree, Adam
also updates the parameters of blocks not used at the current stage (with
zero gradients). Layout is NCHW (torch's native); the 4x4 <-> dense
flattening order is thus (C, H, W) instead of (H, W, C), a fixed
permutation of the dense weights (same FLOPs). Prints, per resolution
min_res..max_res: ms per (critic + generator + EMA) step and img/s.
"""

import argparse
import copy
import math
import time

import torch
from torch import nn
import torch.nn.functional as F

import torch_twin  # benchmarks/torch_twin.py

SQRT2 = math.sqrt(2.0)


def leaky_relu(x):
  return F.leaky_relu(x, 0.2)


def upsample2x(x):
  return F.interpolate(x, scale_factor=2, mode='nearest')


def downsample2x(x):
  return F.avg_pool2d(x, 2)


def pixel_norm(x, eps=1e-8):
  return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x, group_size=4):
  """pggan_jax.layers.minibatch_stddev in NCHW: one extra feature map."""
  n, c, h, w = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(f'batch {n} is not divisible by mbstd group size {g}')
  y = x.reshape(g, n // g, c, h, w)
  y = y - y.mean(dim=0, keepdim=True)
  y = torch.sqrt(y.square().mean(dim=0) + 1e-8)          # [M, C, H, W]
  y = y.mean(dim=(1, 2, 3)).repeat(g)                     # [N]
  y = y.reshape(n, 1, 1, 1).expand(n, 1, h, w)
  return torch.cat([x, y], dim=1)


class EqualizedDense(nn.Module):

  def __init__(self, cin, cout, gain=SQRT2):
    super().__init__()
    self.scale = gain / math.sqrt(cin)
    self.weight = nn.Parameter(torch.randn(cout, cin))
    self.bias = nn.Parameter(torch.zeros(cout))

  def forward(self, x):
    return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv(nn.Module):
  """'SAME' stride-1 conv with equalized learning rate."""

  def __init__(self, cin, cout, k, gain=SQRT2):
    super().__init__()
    self.scale = gain / math.sqrt(cin * k * k)
    self.pad = k // 2
    self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
    self.bias = nn.Parameter(torch.zeros(cout))

  def forward(self, x):
    return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


def num_features(res_log2, fmap_base, fmap_max):
  return min(int(fmap_base / 2.0 ** (res_log2 - 1)), fmap_max)


def num_stages(resolution):
  return int(math.log2(resolution)) - 1


class Generator(nn.Module):

  def __init__(self, resolution, channels, fmap_base, fmap_max):
    super().__init__()
    nf = lambda r: num_features(r, fmap_base, fmap_max)
    self.latent_size = min(fmap_base, fmap_max)
    self.nf2 = nf(2)
    self.dense = EqualizedDense(self.latent_size, nf(2) * 16, gain=SQRT2 / 4)
    self.conv4 = EqualizedConv(nf(2), nf(2), 3)
    blocks, to_rgb = [], [EqualizedConv(nf(2), channels, 1, gain=1.0)]
    for r in range(3, num_stages(resolution) + 2):
      blocks.append(nn.ModuleList([EqualizedConv(nf(r - 1), nf(r), 3),
                                   EqualizedConv(nf(r), nf(r), 3)]))
      to_rgb.append(EqualizedConv(nf(r), channels, 1, gain=1.0))
    self.blocks = nn.ModuleList(blocks)
    self.to_rgb = nn.ModuleList(to_rgb)

  def forward(self, z, alpha, stage):
    act = lambda y: pixel_norm(leaky_relu(y))
    x = act(self.dense(pixel_norm(z)).reshape(-1, self.nf2, 4, 4))
    x = act(self.conv4(x))
    prev = None
    for conv0, conv1 in self.blocks[:stage]:
      prev = x
      x = act(conv0(upsample2x(x)))
      x = act(conv1(x))
    img = self.to_rgb[stage](x)
    if stage > 0:
      low = upsample2x(self.to_rgb[stage - 1](prev))
      img = low + (img - low) * alpha
    return img


class Discriminator(nn.Module):

  def __init__(self, resolution, channels, fmap_base, fmap_max,
               mbstd_group_size=4):
    super().__init__()
    nf = lambda r: num_features(r, fmap_base, fmap_max)
    self.mbstd_group_size = mbstd_group_size
    from_rgb, blocks = [EqualizedConv(channels, nf(2), 1)], []
    for r in range(3, num_stages(resolution) + 2):
      from_rgb.append(EqualizedConv(channels, nf(r), 1))
      blocks.append(nn.ModuleList([EqualizedConv(nf(r), nf(r), 3),
                                   EqualizedConv(nf(r), nf(r - 1), 3)]))
    self.from_rgb = nn.ModuleList(from_rgb)
    self.blocks = nn.ModuleList(blocks)
    self.conv4 = EqualizedConv(nf(2) + 1, nf(2), 3)
    self.dense0 = EqualizedDense(nf(2) * 16, nf(1))
    self.dense1 = EqualizedDense(nf(1), 1, gain=1.0)

  def _block(self, i, h):
    conv0, conv1 = self.blocks[i]
    return downsample2x(leaky_relu(conv1(leaky_relu(conv0(h)))))

  def forward(self, x, alpha, stage):
    h = leaky_relu(self.from_rgb[stage](x))
    if stage > 0:
      h = self._block(stage - 1, h)
      low = leaky_relu(self.from_rgb[stage - 1](downsample2x(x)))
      h = low + (h - low) * alpha
      for i in reversed(range(stage - 1)):
        h = self._block(i, h)
    h = minibatch_stddev(h, self.mbstd_group_size)
    h = leaky_relu(self.conv4(h))
    h = leaky_relu(self.dense0(h.flatten(1)))
    return self.dense1(h)[:, 0]


def fade_reals(reals, alpha):
  low = upsample2x(downsample2x(reals))
  return low + (reals - low) * alpha


def adam_step(opt, params):
  """Adam over all params; unused ones get zero grads (as optax does)."""
  for p in params:
    if p.grad is None:
      p.grad = torch.zeros_like(p)
  opt.step()
  opt.zero_grad(set_to_none=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--fmap_base', type=int, default=8192)
  p.add_argument('--fmap_max', type=int, default=512)
  p.add_argument('--max_res', type=int, default=256)
  p.add_argument('--min_res', type=int, default=4,
                 help='first resolution timed (the nets are built at max_res)')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--iters', type=int, default=5)
  torch_twin.add_args(p)
  a = p.parse_args()
  autocast, sync = torch_twin.setup(a)
  kw = dict(resolution=a.max_res, channels=1, fmap_base=a.fmap_base,
            fmap_max=a.fmap_max)
  g, d = Generator(**kw), Discriminator(**kw)
  g_ema = copy.deepcopy(g).requires_grad_(False)
  g_params, d_params = list(g.parameters()), list(d.parameters())
  ema_params = list(g_ema.parameters())
  adam = dict(lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
  g_opt = torch.optim.Adam(g_params, **adam)
  d_opt = torch.optim.Adam(d_params, **adam)
  gp_lambda, drift, decay = 10.0, 0.001, 0.999
  print(f'torch {torch.__version__} threads={torch.get_num_threads()} '
        f'device={a.device} batch={a.batch} fmap={a.fmap_base}/{a.fmap_max} '
        f'dtype={a.dtype}')
  print(f'{"res":>5} {"ms/step":>9} {"img/s":>8} {"warm-up s":>9}')
  alpha, n = 0.5, a.batch
  first = num_stages(a.min_res) - 1
  if a.min_res & (a.min_res - 1) or not 0 <= first < num_stages(a.max_res):
    p.error(f'--min_res={a.min_res} must be a power of two in 4..max_res')
  for stage in range(first, num_stages(a.max_res)):
    r = 4 * 2 ** stage
    gen = torch.Generator('cpu').manual_seed(stage)
    reals = (torch.rand(n, 1, r, r, generator=gen, device='cpu') * 2
             - 1).to(a.device)

    def one():
      with autocast:
        critic_and_generator()
      # EMA: ema <- p + (ema - p) * decay.
      with torch.no_grad():
        torch._foreach_lerp_(ema_params, g_params, 1.0 - decay)

    def critic_and_generator():
      # Critic step.
      with torch.no_grad():
        fakes = g(torch.randn(n, g.latent_size), alpha, stage)
      x = fade_reals(reals, alpha)
      real_scores, fake_scores = d(x, alpha, stage), d(fakes, alpha, stage)
      u = torch.rand(n, 1, 1, 1)
      mixed = (x + (fakes - x) * u).requires_grad_(True)
      grads, = torch.autograd.grad(d(mixed, alpha, stage).sum(), mixed,
                                   create_graph=True)
      penalty = (grads.square().sum(dim=(1, 2, 3)).sqrt() - 1.0).square()
      wdist = real_scores.mean() - fake_scores.mean()
      loss = (-wdist + gp_lambda * penalty.mean()
              + drift * real_scores.square().mean())
      loss.backward()
      adam_step(d_opt, d_params)
      # Generator step (no grads for D's weights, as jax.grad w.r.t. G).
      d.requires_grad_(False)
      fakes = g(torch.randn(n, g.latent_size), alpha, stage)
      (-d(fakes, alpha, stage).mean()).backward()
      d.requires_grad_(True)
      adam_step(g_opt, g_params)

    t0 = time.time()
    one()   # warm-up
    sync()
    warm = time.time() - t0
    t0 = time.time()
    for _ in range(a.iters):
      one()
    sync()
    dt = (time.time() - t0) / a.iters
    print(f'{r:>5} {dt * 1e3:>9.1f} {n / dt:>8.1f} {warm:>9.1f}', flush=True)


if __name__ == '__main__':
  main()
