"""Classic 3x3 kernels (identity, Sobel-x, Sobel-y, blur, sharpen) on a real MNIST digit.

The chapter (section 1.2, "Examples of Representative Kernels") filters a test pattern with
scipy.signal.correlate2d(mode='same', boundary='symm'). convkit's Conv2d does the same with
padding=1 and padding_mode="symmetric" (the edge pixel is repeated when mirroring, which torch's
"reflect" does not do), so each result here is compared with scipy's, element by element. The
chapter's snippet also uses ``np`` without importing numpy, so as printed it stops with a
NameError before drawing anything.

    python examples/filters.py --out filters_out     # writes filters_out/filters.png
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from convkit import nn as cnn
from convkit.data import EMBEDDED_DIR, read_idx

KERNELS: Dict[str, np.ndarray] = {
    "Identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=float),
    "Sobel x (vertical edges)": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float),
    "Sobel y (horizontal edges)": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=float),
    "Blur (3x3 mean)": np.ones((3, 3)) / 9,
    "Sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=float),
}
# The chapter's 6x7 test pattern (a hollow square)
TEST_PATTERN = np.array([[0, 0, 0, 0, 0, 0, 0],
                         [0, 255, 255, 255, 255, 0, 0],
                         [0, 255, 0, 0, 255, 0, 0],
                         [0, 255, 0, 0, 255, 0, 0],
                         [0, 255, 255, 255, 255, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0]], dtype=float)


def load_digit(index: int = 0) -> np.ndarray:
    """Test image ``index`` of the embedded mnist-5k sample, raw 0-255 values as float64."""
    images = read_idx(EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz", ndim=3)
    return images[index].astype(np.float64)


def apply_kernels(image: np.ndarray) -> Dict[str, np.ndarray]:
    """Each kernel run by one convkit Conv2d (5 output channels, symmetric padding, float64)."""
    conv = cnn.Conv2d(1, len(KERNELS), 3, padding=1, padding_mode="symmetric", bias=False,
                      dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.stack(list(KERNELS.values())))[:, None])
        out = conv(torch.from_numpy(image)[None, None])[0].numpy()
    return dict(zip(KERNELS, out))


def scipy_reference(image: np.ndarray) -> Optional[Dict[str, np.ndarray]]:
    """scipy's correlate2d(mode='same', boundary='symm') per kernel, or None without scipy."""
    try:
        from scipy import signal
    except ImportError:
        return None
    return {name: signal.correlate2d(image, k, mode="same", boundary="symm")
            for name, k in KERNELS.items()}


def plot(rows: Dict[str, Dict[str, np.ndarray]], originals: Dict[str, np.ndarray],
         path: Path) -> None:
    """One row per image: the original, then each filtered result."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(KERNELS) + 1, figsize=(2.3 * (len(KERNELS) + 1),
                                                                   2.5 * len(rows)), squeeze=False)
    for ax_row, (label, results) in zip(axes, rows.items()):
        ax_row[0].imshow(originals[label], cmap="gray")
        ax_row[0].set_title(f"{label}", fontsize=9)
        for ax, (name, img) in zip(ax_row[1:], results.items()):
            ax.imshow(img, cmap="gray")
            ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle('convkit Conv2d(padding=1, padding_mode="symmetric")')
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Filter the digit and the chapter's pattern, compare with scipy, save the PNG grid."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for filters.png")
    parser.add_argument("--digit", type=int, default=0, help="index into mnist-5k's test set")
    args = parser.parse_args(argv)
    originals = {f"digit (mnist-5k test #{args.digit})": load_digit(args.digit),
                 "chapter's test pattern": TEST_PATTERN}
    rows = {}
    for label, image in originals.items():
        rows[label] = results = apply_kernels(image)
        reference = scipy_reference(image)
        print(f"=== {label}, {image.shape[0]}x{image.shape[1]} ===")
        for name, out in results.items():
            line = f"  {name:<28} range [{out.min():8.2f}, {out.max():8.2f}]"
            if reference is not None:
                gap = np.abs(out - reference[name]).max()
                line += f"  max |convkit - scipy correlate2d symm| = {gap:.2e}"
            print(line)
    if scipy_reference(TEST_PATTERN) is None:
        print("scipy is not installed: comparison with correlate2d skipped")
    path = args.out / "filters.png"
    plot(rows, originals, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
