"""Why convolutions suit images: a one-pixel shift, seen by a flat vector and by a convolution.

Section 1.1 of the chapter flattens a 5x5 "cat" (two ears and a nose) and its copy shifted one
pixel right: as vectors they are sqrt(6) = 2.45 apart (the chapter's printed values are right),
which is all a fully connected layer sees. A convolution shares its kernel across positions, so
its response to the shifted image is the shifted response (translation equivariance); this
script checks that with convkit's conv2d.

    python examples/translation.py
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np
import torch

from convkit import functional as CF


def cat_images():
    """The chapter's 5x5 image and its one-pixel right shift."""
    original = np.zeros((5, 5))
    original[0, 1] = original[0, 3] = original[2, 2] = 1   # ears and nose
    shifted = np.zeros((5, 5))
    shifted[0, 2] = shifted[0, 4] = shifted[2, 3] = 1
    return original, shifted


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the flattened images, their distance and the convolution's equivariance."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    original, shifted = cat_images()
    print("Original image flattened:", original.flatten())
    print("Shifted image flattened: ", shifted.flatten())
    print(f"Euclidean distance: {np.linalg.norm(original.flatten() - shifted.flatten()):.2f}")

    torch.manual_seed(0)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    response = [CF.conv2d(torch.from_numpy(img)[None, None], w, padding=1)[0, 0]
                for img in (original, shifted)]
    # columns 1.. of the shifted response equal columns ..-1 of the original's (away from the edge)
    gap = (response[1][:, 1:] - response[0][:, :-1]).abs().max().item()
    print("\nconvkit conv2d (random 3x3 kernel, padding 1):")
    print(f"  max |conv(shifted)[:, 1:] - conv(original)[:, :-1]| = {gap:.1e}")
    print("  -> the feature map moves with the object; the same kernel detects it anywhere")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
