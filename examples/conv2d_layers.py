"""convkit's Conv2d as the chapter uses torch's: shapes, weights and parameter counts.

Section 1.3 runs Conv2d(3, 16, 3, padding=1) on a (1, 3, 28, 28) image (448 parameters) and
section 1.4 runs Conv2d(3, 64, 3, padding=1) on a batch of eight 224x224 RGB images (1,792
parameters). Here both layers are ``convkit.nn.Conv2d``; each output is also checked against
torch's conv2d with the same weights. All of the chapter's printed values are right.

    python examples/conv2d_layers.py [--batch 8]
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from convkit import nn as cnn
from convkit.utils import count_parameters


def describe(conv: cnn.Conv2d, x: torch.Tensor) -> int:
    """Run ``conv`` on ``x``, print shapes and parameter count; return the count."""
    with torch.no_grad():
        y = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    K, C, KH, KW = conv.weight.shape
    n = count_parameters(conv)
    print(f"{type(conv).__module__}.{conv}")
    print(f"  Input size:  {list(x.shape)}  [Batch, Channel, Height, Width]")
    print(f"  Output size: {list(y.shape)}")
    print(f"  Weight size: {list(conv.weight.shape)}  [Output ch, Input ch, Height, Width]")
    print(f"  Bias size:   {list(conv.bias.shape)}")
    print(f"  Parameters:  ({C} x {K} x {KH} x {KW}) + {K} = {n:,}")
    print(f"  max |convkit - torch.nn.functional.conv2d| = {(y - ref).abs().max().item():.2e}\n")
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build both layers, run them, print what they do."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="batch of 224x224 images (default 8,"
                        " as the chapter)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("=== Multi-channel convolution (section 1.3) ===\n")
    describe(cnn.Conv2d(in_channels=3, out_channels=16, kernel_size=3, padding=1),
             torch.randn(1, 3, 28, 28))
    print("=== Conv2d operation verification (section 1.4) ===\n")
    describe(cnn.Conv2d(in_channels=3, out_channels=64, kernel_size=3, stride=1, padding=1,
                        bias=True), torch.randn(args.batch, 3, 224, 224))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
