"""Training loop behind ``convkit train``: SimpleCNN, Adam, cross-entropy, per-epoch metrics, on
one process or on several ranks of ``torch.distributed`` (see :mod:`convkit.distributed`).

Runs repeat exactly for a seed: the weights come from ``SimpleCNN(seed=...)``; each epoch's data
order from a ``DistributedSampler`` seeded with the seed (the permutation depends only on seed and
epoch, and rank r of W takes every W-th image of it, so the W per-rank batches of a step together
hold exactly the images of one process's batch of the same global size); dropout from torch's
global generator, seeded with seed + rank just before the first step. Nothing else draws random
numbers, so the convkit and torch backends see the same batches, dropout masks and starting
weights, and their losses differ only by floating-point rounding.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from convkit import checkpoint, distributed
from convkit.checkpoint import atomic_write
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
    batch_size: int = 64               # global: split evenly across the ranks
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    algorithm: str = "auto"
    train_size: Optional[int] = None   # first N training images only (smoke runs)
    test_size: Optional[int] = None    # first N test images only
    limit_batches: Optional[int] = None  # at most N training batches per epoch
    progress: bool = True
    dropout: float = 0.25              # the chapter's; 0 makes runs on any rank count comparable
    threads: Optional[int] = None      # torch threads per rank (None: see distributed.set_threads)
    deterministic: bool = False        # torch.use_deterministic_algorithms(True) for the run

    def validate(self, world_size: int = 1) -> None:
        """Raise ValueError naming the first option that is out of range (``world_size``: the
        number of ranks the global batch is split across)."""
        for name in ("epochs", "batch_size", "train_size", "test_size", "limit_batches",
                     "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.batch_size % world_size:
            raise ValueError(f"--batch-size {self.batch_size} does not split evenly across "
                             f"{world_size} ranks; use a multiple of {world_size}")
        if self.backend not in ("convkit", "torch"):
            raise ValueError(f"backend must be 'convkit' or 'torch', got {self.backend!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch.cuda.is_available() is "
                             f"False (torch {torch.__version__}); use --device cpu")


def _eval_sums(model: torch.nn.Module, split: Split, device: torch.device) -> Tuple[float, int]:
    loss_sum, correct = 0.0, 0
    for images, labels in split.batches(EVAL_BATCH):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return loss_sum, correct


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, device: torch.device) -> Dict[str, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``split``. Under a process
    group each rank scores a contiguous share of ``split`` and the sums are added up."""
    model.eval()
    rank, world, n = dist_rank(), dist_world(), len(split)
    lo, hi = n * rank // world, n * (rank + 1) // world
    share = split if world == 1 else Split(split.images[lo:hi], split.labels[lo:hi])
    loss_sum, correct = distributed.reduce_sum(
        torch.tensor(_eval_sums(model, share, device), dtype=torch.float64)).tolist()
    return {"loss": loss_sum / n, "accuracy": 100.0 * int(correct) / n}


def dist_rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return torch.distributed.get_rank() if distributed.active() else 0


def dist_world() -> int:
    """Ranks in the process group (1 without one)."""
    return torch.distributed.get_world_size() if distributed.active() else 1


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


def _seed_all(seed: int) -> None:
    """torch (CPU and every GPU: the dropout masks), numpy and Python's generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _RunSettings:
    """Torch threads for this rank, deterministic cuDNN (convkit's own kernels always are) and,
    when asked, ``torch.use_deterministic_algorithms(True)``, for the run; the previous settings
    come back afterwards."""

    def __init__(self, config: TrainConfig, ranks: distributed.Ranks,
                 device: torch.device) -> None:
        self.config, self.ranks, self.device = config, ranks, device
        self.strict = config.deterministic

    def __enter__(self):
        cudnn = torch.backends.cudnn
        self.saved = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark,
                      cudnn.deterministic, torch.get_num_threads())
        distributed.set_threads(self.config.threads, self.ranks)
        if self.device.type == "cuda":
            cudnn.benchmark, cudnn.deterministic = False, True
        if self.strict:
            if self.device.type == "cuda":  # cuBLAS needs it for repeatable GEMMs
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc) -> None:
        torch.use_deterministic_algorithms(self.saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = self.saved[1:3]
        if torch.get_num_threads() != self.saved[3]:
            torch.set_num_threads(self.saved[3])


def train(config: TrainConfig, dataset: Optional[Dataset] = None,
          out: Optional[Union[str, os.PathLike]] = None,
          log: Callable[[str], None] = print,
          resume: Optional[Union[str, os.PathLike]] = None) -> dict:
    """Train SimpleCNN as ``config`` says and return the metrics dict.

    The metrics hold ``test_accuracy`` (percent, after the last epoch), ``epochs`` (per-epoch train
    loss/accuracy, test loss/accuracy, seconds, images per second) and ``step_losses`` (the loss of
    every training step, averaged over the ranks). With ``out``, the directory receives
    ``checkpoint.pt`` after every epoch and ``model.pt``, ``metrics.json``, ``training_curve.png``
    and ``filters.png`` at the end. ``resume`` (a directory or checkpoint file written with
    ``out``) continues that run; the result equals the uninterrupted run's.

    Started by torch's launcher (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) it joins the process
    group and trains with ``DistributedDataParallel``; every rank returns the same metrics, and
    only rank 0 prints, draws progress bars and writes files.
    """
    device = torch.device(config.device)
    ranks = distributed.setup(device)
    config.validate(ranks.world_size)
    if device.type == "cuda" and distributed.active():  # one GPU per rank on each machine
        device = torch.device("cuda", ranks.local_rank)
    with _RunSettings(config, ranks, device):
        return _train(config, ranks, device, dataset, out, log, resume)


def _train(config: TrainConfig, ranks: distributed.Ranks, device: torch.device,
           dataset: Optional[Dataset], out, log, resume) -> dict:
    from torch.utils.data.distributed import DistributedSampler

    world, main = ranks.world_size, ranks.is_main
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if not main:
        log = _quiet
    if dataset is None:
        dataset = load_mnist(config.data)
    train_split = dataset.train.subset(config.train_size)
    test_split = dataset.test.subset(config.test_size)

    model = SimpleCNN(config.backend, algorithm=config.algorithm, seed=config.seed).to(device)
    model.dropout.p = config.dropout
    state = None
    if resume is not None:  # checked before anything is computed or written
        state = checkpoint.load(resume, model, asdict(config), world)
        if out is None:
            out = checkpoint.checkpoint_path(resume).parent
    warmup_seconds = warm_up(model, train_split.images[:2].to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    _seed_all(config.seed + ranks.rank)  # dropout masks: a stream of their own on every rank
    epochs: List[dict] = []
    step_losses: List[float] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"][ranks.rank], device)
        epochs, step_losses = state["history"]["epochs"], state["history"]["step_losses"]
        log(f"resumed {checkpoint.checkpoint_path(resume)} after epoch {state['epoch']} "
            f"(step {state['step']})")
    net = model
    if distributed.active():
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # drop_last: every rank gets the same number of images (up to world - 1 left out per epoch)
    sampler = DistributedSampler(train_split, num_replicas=world, rank=ranks.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    local_batch = config.batch_size // world
    n_batches = -(-len(sampler) // local_batch)
    if config.limit_batches is not None:
        n_batches = min(n_batches, config.limit_batches)
    for epoch in range(len(epochs) + 1, config.epochs + 1):
        sampler.set_epoch(epoch - 1)
        order = torch.tensor(list(sampler), dtype=torch.long)
        bar = _progress(min(len(order), n_batches * local_batch) * world,
                        f"epoch {epoch}/{config.epochs} [{config.backend}]",
                        config.progress and main)
        losses, loss_sum, correct, seen, seconds = _train_epoch(
            net, optimizer, train_split, order, n_batches, local_batch, device, bar, world)
        # global numbers: every step's loss averaged over the ranks, sums over the ranks
        step_losses += (distributed.reduce_sum(torch.tensor(losses, dtype=torch.float64))
                        / world).tolist()
        loss_sum, correct, seen = distributed.reduce_sum(
            torch.tensor([loss_sum, correct, seen], dtype=torch.float64)).tolist()
        test = evaluate(model, test_split, device)
        epochs.append({"epoch": epoch, "train_loss": loss_sum / seen,
                       "train_accuracy": 100.0 * correct / seen, "test_loss": test["loss"],
                       "test_accuracy": test["accuracy"], "seconds": seconds,
                       "images_per_second": seen / seconds, "images": int(seen)})
        if bar is None:  # no progress bar: one line per epoch
            e = epochs[-1]
            log(f"epoch {epoch}/{config.epochs} [{config.backend}] train loss "
                f"{e['train_loss']:.4f} acc {e['train_accuracy']:.2f}% | test loss "
                f"{e['test_loss']:.4f} acc {e['test_accuracy']:.2f}% | {seconds:.1f} s")
        if out is not None:
            rng = distributed.gather(checkpoint.rng_state(device))
            if main:
                checkpoint.save(Path(out) / checkpoint.CHECKPOINT, model=model,
                                optimizer=optimizer, epoch=epoch, step=len(step_losses),
                                world_size=world, rng=rng, config=asdict(config),
                                history={"epochs": epochs, "step_losses": step_losses})

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
        "distributed": {"world_size": world, "backend": distributed.backend_for(device)
                        if distributed.active() else None, "batch_per_rank": local_batch,
                        "threads_per_rank": torch.get_num_threads()},
    }
    if load_at_start is not None:  # with the one at the end: how shared the machine was
        metrics["environment"]["load_average_1min_at_start"] = load_at_start
    if state is not None:
        metrics["resumed_after_epoch"] = state["epoch"]
    if out is not None and main:
        write_outputs(model, metrics, out)
    return metrics


def _train_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, split: Split,
                 order: torch.Tensor, n_batches: int, batch: int, device: torch.device,
                 bar, world: int) -> Tuple[List[float], float, int, int, float]:
    """One epoch on this rank: ``n_batches`` steps over ``split[order]``, ``batch`` images each.
    Returns this rank's step losses, loss sum, correct count, images seen and seconds."""
    net.train()
    losses: List[float] = []
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for step in range(n_batches):
        idx = order[step * batch:(step + 1) * batch]
        images, labels = split.images[idx].to(device), split.labels[idx].to(device)
        optimizer.zero_grad()
        logits = net(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()  # under DDP: gradients averaged over the ranks here
        optimizer.step()
        losses.append(loss.item())
        loss_sum += losses[-1] * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if bar is not None:
            bar.update(len(labels) * world)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return losses, loss_sum, correct, seen, seconds


def _quiet(line: str) -> None:
    """``log`` of every rank but 0."""


def _environment(device: torch.device) -> dict:
    """The machine and software of the run, as ``convkit bench`` records them."""
    from convkit.bench.machine import environment
    env = environment(device)
    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without it
        env["load_average_1min_at_end"] = os.getloadavg()[0]
    return env


def write_outputs(model: SimpleCNN, metrics: dict, out: Union[str, os.PathLike]) -> Dict[str, Path]:
    """Write weights, metrics JSON, training-curve and learned-filter PNGs into ``out`` (each
    to a temporary name first, then renamed)."""
    out = Path(out)
    paths = {"checkpoint": out / "model.pt", "metrics": out / "metrics.json",
             "curve": out / "training_curve.png", "filters": out / "filters.png"}
    atomic_write(paths["checkpoint"], lambda tmp: save_checkpoint(
        model, tmp, config=metrics["config"], test_accuracy=metrics["test_accuracy"]))
    write_json(metrics, paths["metrics"])
    try:
        atomic_write(paths["curve"], lambda tmp: plot_training_curve(metrics, tmp))
        atomic_write(paths["filters"], lambda tmp: plot_filters(
            model.conv1.weight, tmp, f"conv1 filters after {len(metrics['epochs'])} epoch(s) "
            f"[{metrics['config']['backend']}]"))
    except ImportError:  # matplotlib is in the "train" extra
        print("matplotlib is not installed: training_curve.png and filters.png skipped",
              file=sys.stderr)
        del paths["curve"], paths["filters"]
    return paths


def write_json(obj: dict, path: Union[str, os.PathLike]) -> None:
    """Write ``obj`` as indented JSON (temporary name, then renamed), creating the parent
    directory."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


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
