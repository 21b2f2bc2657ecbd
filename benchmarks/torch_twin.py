"""Shared set-up of the PyTorch twins (pggan_step_torch.py, resnet_step_torch.py).

`add_args(parser)` adds --device and --dtype; `setup(args)` seeds torch,
turns TF32 on (XLA's default precision for float32 on a GPU), lets cuDNN
pick its algorithms, makes `args.device` the default device and returns
(autocast context: bf16 with float32 parameters when --dtype=bfloat16,
sync: waits for the device before a clock is read).
"""

import torch


def add_args(p) -> None:
  p.add_argument('--device',
                 default='cuda' if torch.cuda.is_available() else 'cpu')
  p.add_argument('--dtype', default='float32',
                 choices=('float32', 'bfloat16'))


def setup(args):
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  torch.set_default_device(args.device)
  autocast = torch.autocast(args.device, torch.bfloat16,
                            enabled=args.dtype == 'bfloat16')
  sync = (torch.cuda.synchronize if args.device.startswith('cuda')
          else lambda: None)
  return autocast, sync
