"""The chapter's SimpleCNN built on convkit's layers: architecture and the shape at every stage.

SimpleCNN's convolutions use padding=1, so the spatial size goes 28 -> 28 -> 14 -> 14 -> 7 and
the flattened vector has 64 x 7 x 7 = 3136 entries, as the chapter's code says. The chapter's
overview diagram (section 1.1) shows 26x26, 13x13, 11x11, 5x5 and 1600 instead: those are the
sizes of the same network without padding, not of the model it builds.

    python examples/simple_cnn.py
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from convkit.models import SimpleCNN

CHAPTER_DIAGRAM = {"conv1": 26, "pool1": 13, "conv2": 11, "pool2": 5, "flatten": 1600}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the model and the activation shapes for one 28x28 digit."""
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    model = SimpleCNN(backend="convkit", seed=0).eval()
    print("=== SimpleCNN Architecture (convkit backend) ===\n")
    print(model)
    x = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        maps = model.features(x)
        logits = model(x)
    print("\n=== Shapes for one 28x28 image ===\n")
    print(f"{'input':<8} {list(x.shape)}")
    for name, t in maps.items():
        note = f"  (chapter diagram: {CHAPTER_DIAGRAM[name]}x{CHAPTER_DIAGRAM[name]})" \
            if name in CHAPTER_DIAGRAM else ""
        print(f"{name:<8} {list(t.shape)}{note}")
    flat = maps["pool2"].flatten(1).shape[1]
    print(f"{'flatten':<8} [1, {flat}]  (chapter diagram: {CHAPTER_DIAGRAM['flatten']})")
    print(f"{'logits':<8} {list(logits.shape)}")
    print("\nThe diagram's sizes are those of unpadded 3x3 convolutions; the code pads by 1.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
