"""The chapter's Conv + ReLU block (section 1.5) built from convkit's Conv2d and ReLU.

ConvBlock(3, 64) on a (1, 3, 224, 224) input gives (1, 64, 224, 224), as the chapter prints.
This also shows what the chapter only states: the ReLU zeroes every negative value of the
feature map (the share of zeros is printed), and the block's output and input gradient match
torch's Conv2d + ReLU with the same weights.

    python examples/conv_relu_block.py [--size 224]
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convkit import nn as cnn


class ConvBlock(nn.Module):
    """Conv2d(3x3, padding=1) followed by ReLU, both convkit's."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = cnn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.relu = cnn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(conv(x))."""
        return self.relu(self.conv(x))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the block, print shapes, sparsity and the comparison with torch."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    block = ConvBlock(3, 64)
    x = torch.randn(1, 3, args.size, args.size, requires_grad=True)
    out = block(x)
    out.square().sum().backward()
    grad = x.grad.clone()

    x.grad = None
    ref = F.relu(F.conv2d(x, block.conv.weight, block.conv.bias, padding=1))
    ref.square().sum().backward()

    pre = block.conv(x).detach()
    print(f"Input size:  {list(x.shape)}")
    print(f"Output size: {list(out.shape)}")
    print("\nProcessing flow:")
    print("  1. Conv2d(3 -> 64, 3x3) filtering        [convkit.nn.Conv2d]")
    print("  2. ReLU() non-linear transformation      [convkit.nn.ReLU]")
    print(f"  -> {(pre < 0).float().mean().item():.1%} of the conv outputs are negative; after "
          f"ReLU {(out == 0).float().mean().item():.1%} of the feature map is 0 and its minimum "
          f"is {out.min().item():.1f}")
    print(f"\nmax |output - torch conv2d+relu|        = {(out - ref).abs().max().item():.2e}")
    print(f"max |input grad - torch's input grad|   = {(grad - x.grad).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
