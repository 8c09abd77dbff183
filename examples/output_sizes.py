"""Output size of a convolution, from the formula and from convkit's conv2d itself.

The chapter's table (section 1.2, "Stride and Padding") and exercise 1, each row checked by
running convkit's conv2d on a tensor of that size: floor((L + 2p - k) / s) + 1 must be the
length of what the kernel really produces. All of the chapter's printed values are right.

    python examples/output_sizes.py
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from convkit import functional as CF
from convkit.utils import conv_output_size

# (input size, kernel, stride, padding, description), as in the chapter
CONFIGURATIONS = [
    (28, 3, 1, 0, "Valid (no padding)"),
    (28, 3, 1, 1, "Same (maintain size)"),
    (28, 5, 2, 2, "Stride 2, Padding 2"),
    (32, 3, 1, 1, "32x32 image, 3x3 kernel"),
    (64, 5, 2, 2, "Exercise 1: 64x64x3 input, 128 filters"),
]


def measured_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size of convkit's conv2d output for a (1, 1, size, size) input."""
    x = torch.zeros(1, 1, size, size)
    w = torch.zeros(1, 1, kernel, kernel)
    return CF.conv2d(x, w, stride=stride, padding=padding).shape[-1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print each configuration's output size by formula and by running conv2d."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    print("=== Output Size Calculation Examples ===\n")
    for size, kernel, stride, padding, description in CONFIGURATIONS:
        formula = conv_output_size(size, kernel, stride, padding)
        measured = measured_size(size, kernel, stride, padding)
        print(description)
        print(f"  Input: {size}x{size}")
        print(f"  Kernel: {kernel}x{kernel}, Stride: {stride}, Padding: {padding}")
        print(f"  -> Output: {formula}x{formula} (convkit conv2d produced {measured}x{measured})\n")
        if formula != measured:
            raise SystemExit(f"formula {formula} != measured {measured} for {description}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
