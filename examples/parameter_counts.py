"""Parameter counts from the chapter, counted on real convkit layers (and SimpleCNN).

Every count is ``count_parameters(layer)`` on a layer that is actually built (huge ones on
torch's "meta" device, which has shapes but no memory). The chapter's per-layer table
(section 1.4), its fully-connected comparison, SimpleCNN (section 1.6) and exercises 2 and 5:

- SimpleCNN has 421,642 parameters: the chapter's own per-layer rows (288 + 32 + 18,432 + 64 +
  401,408 + 128 + 1,280 + 10) sum to that, but its "Total parameters" line prints 421,066.
- The fully-connected vs conv reduction prints as "100.00%" with two decimals; it is 99.9988%.

    python examples/parameter_counts.py
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from torch import nn

from convkit import nn as cnn
from convkit.models import SimpleCNN
from convkit.utils import count_parameters

CHAPTER_SIMPLECNN_TOTAL = 421_066  # the chapter's printed "Total parameters"

# (in, out, kernel, description) from the chapter's comparison table
CONV_TABLE = [
    (3, 32, 3, "Layer 1 (RGB -> 32 channels)"),
    (32, 64, 3, "Layer 2 (32 -> 64 channels)"),
    (64, 128, 3, "Layer 3 (64 -> 128 channels)"),
    (128, 256, 3, "Layer 4 (128 -> 256 channels)"),
    (3, 64, 7, "Large kernel (7x7)"),
    (512, 512, 3, "Deep layer (512 -> 512 channels)"),
]


def conv_params(in_channels: int, out_channels: int, kernel: int) -> int:
    """Parameters of a convkit Conv2d, built on the meta device."""
    return count_parameters(cnn.Conv2d(in_channels, out_channels, kernel, device="meta"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the chapter's parameter tables, counted on real layers."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    print("=== Convolutional Layer Parameter Count Comparison ===\n")
    for cin, cout, k, description in CONV_TABLE:
        n = conv_params(cin, cout, k)
        print(f"{description:<36} {cin}ch -> {cout}ch, {k}x{k}: "
              f"({cin} x {cout} x {k} x {k}) + {cout} = {n:,}")

    print("\n=== Comparison with Fully Connected Layer ===\n")
    fc = count_parameters(nn.Linear(224 * 224 * 3, 1000, device="meta"))
    conv = conv_params(3, 64, 3)
    print(f"Fully connected (224x224x3 -> 1000): {fc:,} (150,528 x 1,000 weights, as section 1.1"
          " counts them, + 1,000 biases)")
    print(f"Conv2d (3ch -> 64ch, 3x3):           {conv:,}")
    print(f"Reduction: {(1 - conv / fc) * 100:.4f}% (the chapter's two decimals round it to "
          "100.00%)")

    print("\n=== SimpleCNN (section 1.6) ===\n")
    model = SimpleCNN(backend="convkit", seed=0)
    for name, p in model.named_parameters():
        print(f"{name:<14} {str(list(p.shape)):<16} {p.numel():>10,}")
    total = count_parameters(model)
    print(f"Total parameters: {total:,}")
    print(f"Trainable parameters: {count_parameters(model, trainable_only=True):,}")
    print(f"  (the chapter's rows sum to {total:,}; its total line prints "
          f"{CHAPTER_SIMPLECNN_TOTAL:,}, {total - CHAPTER_SIMPLECNN_TOTAL} short)")

    print("\n=== Exercise 2: Conv 3->64 7x7, 64->128 3x3, 128->256 3x3 ===\n")
    rows = [conv_params(3, 64, 7), conv_params(64, 128, 3), conv_params(128, 256, 3)]
    print(" + ".join(f"{n:,}" for n in rows) + f" = {sum(rows):,}")

    print("\n=== Exercise 5: 224x224x3 input ===\n")
    fc5 = count_parameters(nn.Linear(224 * 224 * 3, 1000, device="meta"))
    cnn3 = [conv_params(3, 64, 3), conv_params(64, 64, 3), conv_params(64, 64, 3)]
    print(f"Fully connected -> 1000 units: {fc5:,}")
    print("Three 3x3 conv layers (3->64, 64->64, 64->64): "
          + " + ".join(f"{n:,}" for n in cnn3) + f" = {sum(cnn3):,}")
    print(f"Reduction: {(1 - sum(cnn3) / fc5) * 100:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
