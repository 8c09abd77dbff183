"""The chapter's training run (section 1.6) with every conv, ReLU and pool on convkit's kernels.

SimpleCNN, Adam (lr 1e-3), cross-entropy, batch 64, 3 epochs, inputs normalised with
(0.1307, 0.3081), as in the chapter. The default data is the embedded mnist-5k sample (4,000
training / 1,000 test digits), so no download is needed; the chapter's expected output (98.67%
test accuracy after 3 epochs) is for full MNIST (60,000 / 10,000): pass ``--data DIR`` with
MNIST's four IDX files to reproduce that setting. The same run is ``convkit train``.

    python examples/train_mnist.py [--epochs 3] [--data DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from convkit.data import EMBEDDED
from convkit.train import TrainConfig, train

CHAPTER_FULL_MNIST_TEST_ACCURACY = 98.67


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train and print the chapter-style per-epoch report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=EMBEDDED, help="mnist-5k or a directory of IDX files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", choices=("convkit", "torch"), default="convkit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-batches", type=int, help="at most N batches per epoch")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images")
    parser.add_argument("--out", type=Path, help="write checkpoint, metrics and PNGs here")
    args = parser.parse_args(argv)
    config = TrainConfig(backend=args.backend, data=args.data, epochs=args.epochs,
                         seed=args.seed, limit_batches=args.limit_batches,
                         test_size=args.test_size, progress=False)
    print(f"=== Training Started ({args.backend} backend, {args.data}) ===\n")
    metrics = train(config, out=args.out, log=lambda line: None)
    for e in metrics["epochs"]:
        print(f"Epoch {e['epoch']}/{args.epochs}")
        print(f"  Train Loss: {e['train_loss']:.4f}, Train Acc: {e['train_accuracy']:.2f}%")
        print(f"  Test Loss:  {e['test_loss']:.4f}, Test Acc:  {e['test_accuracy']:.2f}%  "
              f"({e['seconds']:.1f} s)\n")
    print("Training complete!")
    data = metrics["data"]
    print(f"{data['train_images']:,} training / {data['test_images']:,} test images; the chapter's "
          f"{CHAPTER_FULL_MNIST_TEST_ACCURACY}% is for full MNIST (60,000 / 10,000).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
