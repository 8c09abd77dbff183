"""The ``convkit`` command: ``convkit train`` (SimpleCNN on MNIST-format data), ``convkit bench``.

    convkit train                            # 3 epochs on the embedded mnist-5k, convkit kernels
    convkit train --backend torch --epochs 1
    convkit train --data /usr/share/datasets/fashion-mnist --out runs/fashion --json fashion.json
    convkit train --compare                  # convkit and torch from the same seed, side by side
    convkit bench --quick                    # kernel benchmarks (see convkit.bench)
    convkit gpu-report --arch sm_90 --out DIR  # CUDA kernels' machine code, no GPU needed
    convkit warm-cache                       # compile every CPU kernel into Numba's cache
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

from convkit import gpu_report, precompile
from convkit.bench import cli as bench_cli
from convkit.data import EMBEDDED

COMPARE_STEPS = 20  # steps whose losses --compare checks for agreement


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``convkit`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="convkit", description="convkit: train the tutorial's SimpleCNN on convkit's "
        "kernels, or benchmark the kernels against torch.")
    sub = parser.add_subparsers(dest="command", metavar="{train,bench,gpu-report,warm-cache}")
    sub.required = True
    t = sub.add_parser("train", help="train the tutorial's SimpleCNN on MNIST-format data",
                       description="Train SimpleCNN (conv-relu-pool x2, fc-relu-dropout-fc) with "
                       "Adam and cross-entropy; prints per-epoch progress and a summary table.")
    t.add_argument("--backend", choices=("convkit", "torch"), default="convkit",
                   help="which kernels run conv, ReLU and max-pool (default: convkit)")
    t.add_argument("--algorithm", choices=("auto", "direct", "im2col"), default="auto",
                   help="convkit's convolution algorithm (default: auto)")
    t.add_argument("--data", default=EMBEDDED, metavar="mnist-5k|DIR",
                   help="'mnist-5k' (embedded, 4,000 train / 1,000 test digits) or a directory "
                   "with the four MNIST-format IDX files, e.g. /usr/share/datasets/fashion-mnist")
    t.add_argument("--epochs", type=_positive_int, default=3, help="default: 3")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="default: 64")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate "
                   "(default: 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="weights, data order and dropout "
                   "(default: 0)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    t.add_argument("--out", type=Path, metavar="DIR", help="write model.pt, metrics.json, "
                   "training_curve.png and filters.png here (with --compare: DIR/<backend>/)")
    t.add_argument("--json", type=Path, metavar="FILE", help="write the metrics JSON here")
    t.add_argument("--compare", action="store_true", help="train with both backends from the "
                   "same seed and print them side by side")
    t.add_argument("--train-size", type=_positive_int, metavar="N",
                   help="use only the first N training images")
    t.add_argument("--test-size", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images only")
    t.add_argument("--limit-batches", type=_positive_int, metavar="N",
                   help="at most N training batches per epoch (smoke runs)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars; one line per "
                   "epoch instead")
    t.add_argument("--nproc-per-node", type=_positive_int, metavar="N",
                   help="train on N ranks on this machine, started by torch's launcher (gloo on "
                   "the CPU, NCCL on CUDA); --batch-size stays the global batch. Several "
                   "machines: torchrun --nnodes ... -m convkit train ...")
    t.add_argument("--threads", type=_positive_int, metavar="N", help="torch threads per rank "
                   "(default: OMP_NUM_THREADS if set, else the cores divided among the ranks on "
                   "this machine)")
    t.add_argument("--dropout", type=_fraction, default=0.25, metavar="P",
                   help="dropout probability after fc1 (default: 0.25; 0 turns it off)")
    t.add_argument("--deterministic", action="store_true", help="also turn on "
                   "torch.use_deterministic_algorithms(True): any op without a deterministic "
                   "implementation raises (runs repeat without it too, see README)")
    t.add_argument("--resume", type=Path, metavar="DIR", help="continue the run whose --out DIR "
                   "holds checkpoint.pt (written after every epoch); repeat its options, --epochs "
                   "may grow. Writes into DIR unless --out is given")
    bench_cli.add_arguments(sub.add_parser(
        "bench", help="benchmark convkit's kernels against torch (see 'convkit bench --help')",
        description=bench_cli.DESCRIPTION))
    gpu_report.add_arguments(sub.add_parser(
        "gpu-report", help="compile every CUDA kernel for sm_90/sm_80 and judge its machine "
        "code, no GPU needed (see 'convkit gpu-report --help')",
        description=gpu_report.DESCRIPTION))
    precompile.add_arguments(sub.add_parser(
        "warm-cache", help="compile every CPU kernel signature ahead of time into Numba's cache "
        "(see 'convkit warm-cache --help')", description=precompile.DESCRIPTION))
    return parser


def _config(args: argparse.Namespace, backend: str):
    from convkit.train import TrainConfig
    return TrainConfig(backend=backend, data=args.data, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       algorithm=args.algorithm, train_size=args.train_size,
                       test_size=args.test_size, limit_batches=args.limit_batches,
                       progress=not args.no_progress, dropout=args.dropout,
                       threads=args.threads, deterministic=args.deterministic)


def format_summary(metrics: dict) -> str:
    """The per-epoch table printed after training."""
    cfg, data = metrics["config"], metrics["data"]
    world = metrics.get("distributed", {}).get("world_size", 1)
    ranks = f" ({world} ranks x {cfg['batch_size'] // world})" if world > 1 else ""
    lines = [f"SimpleCNN [{cfg['backend']}] on {data['source']} ({data['train_images']} train / "
             f"{data['test_images']} test images), {metrics['parameters']:,} parameters, "
             f"batch {cfg['batch_size']}{ranks}, Adam lr {cfg['lr']:g}, seed {cfg['seed']}, "
             f"{cfg['device']}",
             f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} "
             f"{'seconds':>8} {'img/s':>8}"]
    for e in metrics["epochs"]:
        lines.append(f"{e['epoch']:>5} {e['train_loss']:>10.4f} {e['train_accuracy']:>8.2f}% "
                     f"{e['test_loss']:>9.4f} {e['test_accuracy']:>7.2f}% {e['seconds']:>8.2f} "
                     f"{e['images_per_second']:>8.0f}")
    lines.append(f"test accuracy {metrics['test_accuracy']:.2f}% after {len(metrics['epochs'])} "
                 f"epoch(s); {metrics['train_seconds']:.1f} s training "
                 f"(+ {metrics['warmup_seconds']:.1f} s first-call warm-up)")
    return "\n".join(lines)


def compare_metrics(a: dict, b: dict, steps: int = COMPARE_STEPS) -> dict:
    """Differences between two runs: final accuracy, and the largest loss gap over the first
    ``steps`` training steps (the runs share seed, data order and dropout masks)."""
    n = min(steps, len(a["step_losses"]), len(b["step_losses"]))
    gaps = [abs(x - y) for x, y in zip(a["step_losses"][:n], b["step_losses"][:n])]
    return {"test_accuracy_difference": a["test_accuracy"] - b["test_accuracy"],
            "compared_steps": n, "max_step_loss_difference": max(gaps, default=0.0),
            "time_per_epoch_ratio": a["train_seconds"] / b["train_seconds"]}


def _throughput(metrics: dict) -> float:
    return sum(e["images"] for e in metrics["epochs"]) / metrics["train_seconds"]


def format_comparison(runs: dict, diff: dict) -> str:
    """Side-by-side table of two runs (``runs`` maps backend name to metrics)."""
    (na, a), (nb, b) = runs.items()
    per_epoch = {k: m["train_seconds"] / len(m["epochs"]) for k, m in runs.items()}
    rows = [("test accuracy (%)", a["test_accuracy"], b["test_accuracy"], "{:.2f}"),
            ("test loss", a["test_loss"], b["test_loss"], "{:.4f}"),
            ("final train loss", a["epochs"][-1]["train_loss"], b["epochs"][-1]["train_loss"],
             "{:.4f}"),
            ("time / epoch (s)", per_epoch[na], per_epoch[nb], "{:.2f}"),
            ("images / s", _throughput(a), _throughput(b), "{:.0f}"),
            ("warm-up (s)", a["warmup_seconds"], b["warmup_seconds"], "{:.2f}")]
    lines = [f"{'':<20}{na:>12}{nb:>12}{na + '/' + nb:>16}"]
    for label, x, y, fmt in rows:
        ratio = f"{x / y:.2f}x" if y else "-"
        lines.append(f"{label:<20}{fmt.format(x):>12}{fmt.format(y):>12}{ratio:>16}")
    lines.append(f"largest |loss difference| over the first {diff['compared_steps']} steps: "
                 f"{diff['max_step_loss_difference']:.2e}; test accuracy difference "
                 f"{diff['test_accuracy_difference']:+.2f} points")
    return "\n".join(lines)


def _backend_dir(path: Optional[Path], backend: str, compare: bool) -> Optional[Path]:
    return path / backend if path is not None and compare else path


def _check_before_launch(args: argparse.Namespace, nproc: int) -> None:
    """What every rank would refuse, refused once here before any rank starts (ValueError)."""
    import torch

    from convkit import checkpoint
    from convkit.models import SimpleCNN

    for backend in ("convkit", "torch") if args.compare else (args.backend,):
        config = _config(args, backend)
        config.validate(nproc)
        if config.device != "cpu" and torch.cuda.device_count() < nproc:
            raise ValueError(f"--nproc-per-node {nproc}: one GPU per rank, but this machine has "
                             f"{torch.cuda.device_count()}")
        resume = _backend_dir(args.resume, backend, args.compare)
        if resume is not None:
            checkpoint.load(resume, SimpleCNN("torch", seed=0), asdict(config), nproc)


def run_train(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """``convkit train``: one backend, or both with --compare; with ``--nproc-per-node N`` (N > 1)
    outside torch's launcher, start N ranks running ``argv`` through it."""
    from convkit import distributed
    from convkit.data import DataError, load_mnist
    from convkit.train import train, write_json

    ranks = distributed.Ranks.from_env()
    nproc = args.nproc_per_node
    try:
        if distributed.launched() and nproc is not None and nproc != ranks.local_world_size:
            raise ValueError(f"--nproc-per-node {nproc}: torch's launcher started "
                             f"{ranks.local_world_size} rank(s) per node (LOCAL_WORLD_SIZE); "
                             "give the same number or leave the option out")
        if not distributed.launched() and nproc is not None and nproc > 1:
            if argv is None:
                raise ValueError("--nproc-per-node needs the command line to start the ranks "
                                 "with (run_train(args, argv))")
            _check_before_launch(args, nproc)
            return distributed.launch(nproc, list(argv), args.threads)
        dataset = load_mnist(args.data)
        backends = ("convkit", "torch") if args.compare else (args.backend,)
        runs = {}
        for backend in backends:
            runs[backend] = train(_config(args, backend), dataset,
                                  out=_backend_dir(args.out, backend, args.compare),
                                  resume=_backend_dir(args.resume, backend, args.compare))
            if ranks.is_main:
                print(format_summary(runs[backend]), flush=True)
    except (DataError, ValueError) as e:
        distributed.record_error(e)
        where = f" [rank {ranks.rank} of {ranks.world_size}]" if ranks.world_size > 1 else ""
        print(f"convkit train: error{where}: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    if not ranks.is_main:
        return 0
    if args.compare:
        diff = compare_metrics(runs["convkit"], runs["torch"])
        print(format_comparison(runs, diff))
        result = {"compare": diff, "runs": runs}
    else:
        result = runs[args.backend]
    if args.json is not None:
        write_json(result, args.json)
    out = args.out if args.out is not None else args.resume
    if out is not None:
        print(f"wrote {out}/")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``convkit`` console script and ``python -m convkit``."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "gpu-report":
        return gpu_report.run(args)
    if args.command == "warm-cache":
        return precompile.run(args)
    if args.command == "bench":
        # its own arguments go along: the report records them, a --cold-jit child reruns them
        return bench_cli.run(args, argv[argv.index("bench") + 1:])
    from convkit import distributed
    try:
        return run_train(args, argv)
    except Exception as e:  # in a rank, also where torch's launcher reads it for its summary
        distributed.record_error(e)
        raise


__all__ = ["main", "build_parser", "run_train", "format_summary", "format_comparison",
           "compare_metrics"]
