"""Receptive fields: the chapter's formula, the one with strides, and a measurement with convkit.

The chapter (section 1.3) grows the receptive field by (k - 1) per layer, R_l = R_{l-1} + (k_l - 1),
which is right only while every stride is 1. Its own VGG-style list conv3-conv3-pool2-conv3-conv3-
pool2 has two stride-2 pools, and it prints "Final receptive field: 11x11"; the field is 16x16,
because after a stride-2 layer each further step of a kernel moves 2 input pixels
(``convkit.utils.receptive_field`` multiplies by that "jump"). Exercise 3 (four stride-1 3x3
convs -> 9x9) and the diagram's three convs -> 7x7 are right.

The measurement: stack convkit conv2d layers with all-ones weights on a 64x64 input (a pool
window covers the same pixels as a ones-kernel with its size and stride), back-propagate from
one output pixel, and count the input rows and columns that receive gradient.

    python examples/receptive_field.py
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence, Tuple

import torch

from convkit import functional as CF
from convkit.utils import receptive_field, receptive_field_sizes

VGG_LAYERS = [(3, 1), (3, 1), (2, 2), (3, 1), (3, 1), (2, 2)]
VGG_NAMES = ["Conv1 (3x3)", "Conv2 (3x3)", "MaxPool (2x2)", "Conv3 (3x3)", "Conv4 (3x3)",
             "MaxPool (2x2)"]
CHAPTER_PRINTED_VGG = 11


def simplified_sizes(layers: Sequence[Tuple[int, int]]) -> List[int]:
    """The chapter's R_l = R_{l-1} + (k_l - 1), which ignores strides."""
    sizes = [1]
    for kernel, _ in layers:
        sizes.append(sizes[-1] + kernel - 1)
    return sizes


def measured_receptive_field(layers: Sequence[Tuple[int, int]], size: int = 64) -> int:
    """Input extent one output pixel of the stacked layers depends on (convkit's backward)."""
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = x
    for kernel, stride in layers:
        y = CF.conv2d(y, torch.ones(1, 1, kernel, kernel, dtype=torch.float64), stride=stride)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    return int(rows.max() - rows.min() + 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the layer-by-layer table, both formulas and the measurement."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    right, simple = receptive_field_sizes(VGG_LAYERS), simplified_sizes(VGG_LAYERS)
    print("=== Receptive Field Expansion (VGG-style list) ===\n")
    print(f"{'Layer':<16}{'with strides':>14}{'chapter formula':>17}")
    print(f"{'Input layer':<16}{'1x1':>14}{'1x1':>17}")
    for name, r, s in zip(VGG_NAMES, right[1:], simple[1:]):
        print(f"{name:<16}{f'{r}x{r}':>14}{f'{s}x{s}':>17}")
    measured = measured_receptive_field(VGG_LAYERS)
    print(f"\nFinal receptive field: {right[-1]}x{right[-1]} pixels "
          f"(measured with convkit's conv2d backward: {measured}x{measured})")
    print(f"The chapter prints {CHAPTER_PRINTED_VGG}x{CHAPTER_PRINTED_VGG}: its formula adds "
          "(k - 1) per layer and misses the stride-2 pools' jump.")

    print("\n=== Stacked 3x3 stride-1 convolutions ===\n")
    for depth in (3, 4):
        layers = [(3, 1)] * depth
        r, m = receptive_field(layers), measured_receptive_field(layers)
        print(f"{depth} layers: {r}x{r} (measured {m}x{m})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
