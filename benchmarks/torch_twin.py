"""Shared set-up of the PyTorch twins (pggan_step_torch.py, resnet_step_torch.py).

`add_args(parser)` adds --device and --dtype (`several_dtypes=True`: a
comma-separated list, each timed in turn); `setup(args, dtype)` seeds torch,
turns TF32 on (XLA's default precision for float32 on a GPU), lets cuDNN
pick its algorithms, makes `args.device` the default device and returns
(autocast context: bf16 with float32 parameters when --dtype=bfloat16,
sync: waits for the device before a clock is read).
"""

import argparse

import torch


_DTYPES = ('float32', 'bfloat16')


def _dtype_list(value: str) -> list[str]:
  dtypes = value.split(',')
  bad = [d for d in dtypes if d not in _DTYPES]
  if bad:
    raise argparse.ArgumentTypeError(
        f'{",".join(bad)}: each dtype one of {", ".join(_DTYPES)}')
  return dtypes


def add_args(p, several_dtypes: bool = False) -> None:
  p.add_argument('--device',
                 default='cuda' if torch.cuda.is_available() else 'cpu')
  if several_dtypes:
    p.add_argument('--dtype', default=['float32'], type=_dtype_list,
                   help=f'comma-separated, of {", ".join(_DTYPES)}')
  else:
    p.add_argument('--dtype', default='float32', choices=_DTYPES)


def setup(args, dtype: str | None = None):
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  torch.set_default_device(args.device)
  dtype = dtype or args.dtype
  autocast = torch.autocast(args.device, torch.bfloat16,
                            enabled=dtype == 'bfloat16')
  sync = (torch.cuda.synchronize if args.device.startswith('cuda')
          else lambda: None)
  return autocast, sync
