"""Training loop behind ``convkit train``: SimpleCNN, Adam, cross-entropy, per-epoch metrics.

Runs are deterministic for a seed: the weights come from ``SimpleCNN(seed=...)``, the shuffling
from a generator seeded with the same seed, and dropout from torch's global generator, reseeded
just before the first step. Nothing in between draws random numbers, so the convkit and torch
backends see the same batches, the same dropout masks and the same starting weights, and their
losses differ only by floating-point rounding.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F

from convkit.data import EMBEDDED, Dataset, Split, load_mnist
from convkit.models import SimpleCNN, save_checkpoint
from convkit.utils import count_parameters

EVAL_BATCH = 1000  # the chapter's test batch size; eval holds no graph, so bigger is fine


@dataclass
class TrainConfig:
    """Everything that defines a training run (``convkit train``'s options)."""

    backend: str = "convkit"
    data: str = EMBEDDED
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    algorithm: str = "auto"
    train_size: Optional[int] = None   # first N training images only (smoke runs)
    test_size: Optional[int] = None    # first N test images only
    limit_batches: Optional[int] = None  # at most N training batches per epoch
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        for name in ("epochs", "batch_size", "train_size", "test_size", "limit_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.backend not in ("convkit", "torch"):
            raise ValueError(f"backend must be 'convkit' or 'torch', got {self.backend!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch.cuda.is_available() is "
                             f"False (torch {torch.__version__}); use --device cpu")


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, device: torch.device) -> Dict[str, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``split``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for images, labels in split.batches(EVAL_BATCH):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return {"loss": loss_sum / len(split), "accuracy": 100.0 * correct / len(split)}


def warm_up(model: torch.nn.Module, images: torch.Tensor) -> float:
    """One forward and backward pass in eval mode (no dropout, so no random numbers drawn, and no
    optimiser step), so that Numba's compile or cache load is not billed to the first epoch.
    Returns its seconds; the model's weights are unchanged and its gradients cleared."""
    start = time.perf_counter()
    model.eval()
    model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
    return time.perf_counter() - start


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the "train" extra; without it, one line per epoch
        return None
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=True, dynamic_ncols=True)


def train(config: TrainConfig, dataset: Optional[Dataset] = None,
          out: Optional[Union[str, os.PathLike]] = None,
          log: Callable[[str], None] = print) -> dict:
    """Train SimpleCNN as ``config`` says and return the metrics dict.

    The metrics hold ``test_accuracy`` (percent, after the last epoch), ``epochs`` (per-epoch train
    loss/accuracy, test loss/accuracy, seconds, images per second) and ``step_losses`` (the loss of
    every training step). With ``out``, the directory receives ``model.pt``, ``metrics.json``,
    ``training_curve.png`` and ``filters.png``.
    """
    config.validate()
    device = torch.device(config.device)
    if dataset is None:
        dataset = load_mnist(config.data)
    train_split = dataset.train.subset(config.train_size)
    test_split = dataset.test.subset(config.test_size)

    model = SimpleCNN(config.backend, algorithm=config.algorithm, seed=config.seed).to(device)
    warmup_seconds = warm_up(model, train_split.images[:2].to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks

    n_batches = train_split.num_batches(config.batch_size)
    if config.limit_batches is not None:
        n_batches = min(n_batches, config.limit_batches)
    epochs: List[dict] = []
    step_losses: List[float] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        bar = _progress(min(len(train_split), n_batches * config.batch_size),
                        f"epoch {epoch}/{config.epochs} [{config.backend}]", config.progress)
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for step, (images, labels) in enumerate(train_split.batches(config.batch_size, True,
                                                                    order)):
            if step == n_batches:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.item())
            loss_sum += step_losses[-1] * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            if bar is not None:
                bar.update(len(labels))
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        test = evaluate(model, test_split, device)
        epochs.append({"epoch": epoch, "train_loss": loss_sum / seen,
                       "train_accuracy": 100.0 * correct / seen, "test_loss": test["loss"],
                       "test_accuracy": test["accuracy"], "seconds": seconds,
                       "images_per_second": seen / seconds, "images": seen})
        if bar is None:
            e = epochs[-1]
            log(f"epoch {epoch}/{config.epochs} [{config.backend}] train loss "
                f"{e['train_loss']:.4f} acc {e['train_accuracy']:.2f}% | test loss "
                f"{e['test_loss']:.4f} acc {e['test_accuracy']:.2f}% | {seconds:.1f} s")

    metrics = {
        "test_accuracy": epochs[-1]["test_accuracy"],
        "test_loss": epochs[-1]["test_loss"],
        "train_seconds": sum(e["seconds"] for e in epochs),
        "warmup_seconds": warmup_seconds,
        "epochs": epochs,
        "step_losses": step_losses,
        "config": asdict(config),
        "data": {"source": dataset.source, "train_images": len(train_split),
                 "test_images": len(test_split)},
        "parameters": count_parameters(model),
        "environment": _environment(device),
    }
    if out is not None:
        write_outputs(model, metrics, out)
    return metrics


def _environment(device: torch.device) -> dict:
    """The machine and software of the run, as ``convkit bench`` records them."""
    from convkit.bench.machine import environment
    env = environment(device)
    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without it
        env["load_average_1min_at_end"] = os.getloadavg()[0]
    return env


def write_outputs(model: SimpleCNN, metrics: dict, out: Union[str, os.PathLike]) -> Dict[str, Path]:
    """Write checkpoint, metrics JSON, training-curve and learned-filter PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": out / "model.pt", "metrics": out / "metrics.json",
             "curve": out / "training_curve.png", "filters": out / "filters.png"}
    save_checkpoint(model, paths["checkpoint"], config=metrics["config"],
                    test_accuracy=metrics["test_accuracy"])
    write_json(metrics, paths["metrics"])
    try:
        plot_training_curve(metrics, paths["curve"])
        plot_filters(model.conv1.weight, paths["filters"],
                     f"conv1 filters after {len(metrics['epochs'])} epoch(s) "
                     f"[{metrics['config']['backend']}]")
    except ImportError:  # matplotlib is in the "train" extra
        print("matplotlib is not installed: training_curve.png and filters.png skipped",
              file=sys.stderr)
        del paths["curve"], paths["filters"]
    return paths


def write_json(obj: dict, path: Union[str, os.PathLike]) -> None:
    """Write ``obj`` as indented JSON, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def plot_training_curve(metrics: dict, path: Union[str, os.PathLike]) -> None:
    """Per-step training loss with per-epoch means, and per-epoch train/test accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = metrics["epochs"]
    steps_per_epoch = len(metrics["step_losses"]) / len(epochs)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(range(1, len(metrics["step_losses"]) + 1), metrics["step_losses"], lw=0.6,
                 alpha=0.6, label="step")
    ends = [steps_per_epoch * e["epoch"] for e in epochs]
    ax_loss.plot(ends, [e["train_loss"] for e in epochs], "o-", label="epoch mean (train)")
    ax_loss.plot(ends, [e["test_loss"] for e in epochs], "s--", label="test")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    ax_loss.legend()
    nums = [e["epoch"] for e in epochs]
    ax_acc.plot(nums, [e["train_accuracy"] for e in epochs], "o-", label="train")
    ax_acc.plot(nums, [e["test_accuracy"] for e in epochs], "s--", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", xticks=nums)
    ax_acc.legend()
    cfg = metrics["config"]
    fig.suptitle(f"SimpleCNN on {metrics['data']['source']} [{cfg['backend']}, seed {cfg['seed']}]"
                 f": test accuracy {metrics['test_accuracy']:.2f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grid(planes: torch.Tensor, path: Union[str, os.PathLike], title: str, cols: int = 8,
              numbered: bool = False) -> None:
    """Save a grid of 2-D images ``planes`` (C, H, W), ``cols`` to a row, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = planes.detach().cpu()
    rows = -(-planes.shape[0] // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.5 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < planes.shape[0]:
            ax.imshow(planes[i].numpy(), cmap="viridis")
            if numbered:
                ax.set_title(f"{i + 1}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_filters(weight: torch.Tensor, path: Union[str, os.PathLike], title: str) -> None:
    """Grid of the first input channel of each filter in ``weight`` (K, C, KH, KW)."""
    plot_grid(weight[:, 0], path, title, numbered=True)


__all__ = ["TrainConfig", "train", "evaluate", "write_outputs", "write_json",
           "plot_training_curve", "plot_filters", "plot_grid"]
