"""Filters and feature maps of SimpleCNN: random, then trained with convkit's kernels.

Section 1.4 of the chapter shows randomly initialised 3x3 filters; section 1.6 shows conv1's 32
filters after training (its comment says "Display first 16 filters" but the code shows all 32).
This script trains SimpleCNN on the embedded mnist-5k sample (or loads a checkpoint written by
``convkit train --out``), then draws, for one test digit, what each stage computes: conv1's
filters, the conv1 -> ReLU feature maps, and the conv2 -> ReLU -> pool maps (first 32 of 64).

    python examples/feature_maps.py --out maps_out [--epochs 1 | --checkpoint runs/x/model.pt]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch

from convkit.data import load_mnist
from convkit.models import SimpleCNN, load_checkpoint
from convkit.train import TrainConfig, plot_filters, plot_grid, train


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train or load the model, then write filter and feature-map PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNGs")
    parser.add_argument("--checkpoint", type=Path, help="model.pt from 'convkit train --out'")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (no checkpoint)")
    parser.add_argument("--limit-batches", type=int, help="at most N batches per epoch")
    parser.add_argument("--digit", type=int, default=0, help="index into the test set")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    plot_filters(SimpleCNN("convkit", seed=0).conv1.weight[:8], args.out / "filters_random.png",
                 "conv1 filters at initialisation (first 8)")
    data = load_mnist()
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, backend="convkit")
        print(f"loaded {args.checkpoint}")
    else:
        run = args.out / "run"
        config = TrainConfig(epochs=args.epochs, limit_batches=args.limit_batches,
                             test_size=args.test_size, progress=False)
        metrics = train(config, data, out=run, log=lambda line: None)
        print(f"trained {len(metrics['epochs'])} epoch(s) with convkit's kernels: test accuracy "
              f"{metrics['test_accuracy']:.2f}%")
        model = load_checkpoint(run / "model.pt", backend="convkit")
    model.eval()
    image, label = data.test.images[args.digit:args.digit + 1], int(data.test.labels[args.digit])
    with torch.no_grad():
        maps = model.features(image)
        predicted = int(model(image).argmax())
    print(f"test digit #{args.digit}: label {label}, predicted {predicted}")
    plot_filters(model.conv1.weight, args.out / "filters_trained.png",
                 "Trained convolutional filters (layer 1, 32 of 32)")
    plot_grid(maps["relu1"][0], args.out / "feature_maps_conv1.png",
              f"conv1 -> ReLU feature maps (digit {label}), 32 x 28x28")
    plot_grid(maps["pool2"][0, :32], args.out / "feature_maps_conv2.png",
              f"conv2 -> ReLU -> pool feature maps (digit {label}), first 32 of 64, 7x7")
    for name, t in maps.items():
        print(f"  {name:<6} {list(t.shape)}  {float((t[0] > 0).float().mean()):.0%} positive")
    print(f"wrote filters_random.png, filters_trained.png, feature_maps_conv1.png, "
          f"feature_maps_conv2.png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
