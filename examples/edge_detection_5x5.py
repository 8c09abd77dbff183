"""The chapter's 3x3 edge-detection kernel on its 5x5 image, computed by convkit's conv2d.

The chapter (section 1.2, "Concrete Example") slides the kernel [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]
over a 5x5 image and prints a 3x3 result. Its own code computes

    [[  0,  18, -18],
     [ 27,  41, -17],
     [-21, -13,  -5]]

but the chapter prints [[-13,-15,-12],[-8,-9,-6],[-5,-6,0]], and for the top-left window it prints
element-wise products that sum to 0 followed by "Sum: -13". This script computes the result with
convkit (a valid, stride-1 convolution: the deep-learning "convolution" is a cross-correlation,
exactly the chapter's formula) and with the chapter's plain loop, and says where the print differs.

    python examples/edge_detection_5x5.py
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np
import torch

from convkit import functional as CF

IMAGE = [[1, 2, 3, 0, 1],
         [4, 5, 6, 1, 2],
         [7, 8, 9, 2, 3],
         [1, 2, 3, 4, 5],
         [2, 3, 4, 5, 6]]
EDGE_KERNEL = [[-1, -1, -1],
               [-1, 8, -1],
               [-1, -1, -1]]
CHAPTER_PRINTED = [[-13, -15, -12], [-8, -9, -6], [-5, -6, 0]]
CHAPTER_PRINTED_SUM = -13


def loop_correlation(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(I * K)(i, j) = sum_m sum_n I(i+m, j+n) K(m, n), the chapter's formula, as plain loops."""
    KH, KW = kernel.shape
    OH, OW = image.shape[0] - KH + 1, image.shape[1] - KW + 1
    out = np.zeros((OH, OW), dtype=image.dtype)
    for i in range(OH):
        for j in range(OW):
            out[i, j] = (image[i:i + KH, j:j + KW] * kernel).sum()
    return out


def edge_response() -> np.ndarray:
    """The 3x3 output of convkit's conv2d for the chapter's image and kernel."""
    x = torch.tensor(IMAGE, dtype=torch.float32)[None, None]   # (N=1, C=1, H=5, W=5)
    w = torch.tensor(EDGE_KERNEL, dtype=torch.float32)[None, None]  # (K=1, C=1, 3, 3)
    return CF.conv2d(x, w)[0, 0].numpy()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print input, kernel, convkit's output, the top-left window's arithmetic and the slips."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    image, kernel = np.array(IMAGE), np.array(EDGE_KERNEL)
    result = edge_response()
    print("Input image (5x5):\n", image, sep="")
    print("\nKernel (3x3, edge detection):\n", kernel, sep="")
    print("\nOutput (3x3), convkit.functional.conv2d:\n", result.astype(int), sep="")
    reference = loop_correlation(image, kernel)
    print("\nSame as the chapter's manual loop:", bool(np.array_equal(result, reference)))

    region = image[0:3, 0:3]
    products = region * kernel
    print("\n=== Top-left window (position [0, 0]) ===")
    print("Element-wise product:\n", products, sep="")
    print(f"Sum: {products.sum()}")

    print("\nWhere the chapter's printed text differs from what its code computes:")
    print(f"  printed output {CHAPTER_PRINTED}")
    print(f"  computed output {result.astype(int).tolist()}")
    print(f"  printed 'Sum: {CHAPTER_PRINTED_SUM}' under products that sum to {products.sum()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
