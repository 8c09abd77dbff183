"""ReLU (convkit's kernel, forward and backward) next to sigmoid, tanh and leaky ReLU.

Section 1.5 of the chapter plots four activation functions and runs ReLU on [-2, -1, 0, 1, 2],
printing [0, 0, 0, 1, 2]; here ReLU and its gradient come from ``convkit.functional.relu``
(the other three are torch's: convkit only implements ReLU). The chapter's printed values are
right. The gradient at exactly 0 is 0, as in torch.

    python examples/activations.py --out act_out    # writes act_out/activations.png
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from convkit import functional as CF


def relu_with_grad(x: torch.Tensor):
    """convkit's ReLU of ``x`` and d relu / dx at each point (its backward kernel)."""
    x = x.detach().clone().requires_grad_(True)
    y = CF.relu(x)
    y.sum().backward()
    return y.detach(), x.grad


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print ReLU on the chapter's five points and plot the four activations."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for activations.png")
    args = parser.parse_args(argv)

    points = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    y, grad = relu_with_grad(points)
    print("=== ReLU with convkit's kernels ===\n")
    print(f"Input:        {points.numpy()}")
    print(f"ReLU:         {y.numpy()}")
    print(f"d ReLU / dx:  {grad.numpy()}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.linspace(-3, 3, 101)
    relu, relu_grad = relu_with_grad(x)
    curves = [("ReLU: max(0, x)  [convkit]", relu, "b"),
              ("Sigmoid: 1/(1+exp(-x))", torch.sigmoid(x), "r"),
              ("Tanh: tanh(x)", torch.tanh(x), "g"),
              ("Leaky ReLU: max(0.1x, x)", F.leaky_relu(x, 0.1), "m")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for ax, (title, values, color) in zip(axes.flat, curves):
        ax.plot(x, values, color=color, lw=2)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
    axes[0, 0].plot(x, relu_grad, "b--", lw=1, label="gradient [convkit backward]")
    axes[0, 0].legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "activations.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
