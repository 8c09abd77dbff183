"""``convkit bench`` / ``python -m convkit.bench``: the options, and one run from them to the
printed tables and the files asked for (``--cold-jit`` re-runs the command in a child process
with an empty Numba cache)."""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import torch

from convkit.bench.harness import QUICK_SETTINGS, Settings
from convkit.bench.report import write_outputs
from convkit.bench.shapes import (
    ALGORITHMS,
    OP_GROUPS,
    OPS,
    WORKLOADS,
    all_shapes,
    select_ops,
    select_shapes,
)

DESCRIPTION = ("Time convkit's conv2d / ReLU / max-pool kernels and a SimpleCNN training step "
               "against PyTorch (oneDNN on CPU, cuDNN on GPU) on a named shape table.")

# set in the --cold-jit child, which must run rather than start another child
_COLD_ENV = "CONVKIT_BENCH_COLD_CHILD"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``convkit bench``'s options to ``p`` (this command's parser, or the ``bench``
    subcommand of ``convkit``'s) and return it."""
    p.add_argument("--quick", action="store_true",
                   help="the quick subset of shapes and shorter timing (about a minute on 2 cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ops", nargs="+", metavar="OP",
                   help=f"ops or groups to run (default all): {', '.join(OPS)}; groups "
                        f"{', '.join(OP_GROUPS)}; comma-separated also works")
    p.add_argument("--shapes", nargs="+", metavar="NAME",
                   help="shape names from the table (default: all, or the quick subset); "
                        f"{', '.join(s.name for s in all_shapes())}; or a network's convs, "
                        f"{', '.join(WORKLOADS)}: its distinct convs, reported also as one "
                        "total weighted by how often each occurs (python -m convkit.bench.shapes "
                        "lists them)")
    p.add_argument("--algorithms", nargs="+", metavar="ALGO", default=list(ALGORITHMS),
                   help="convkit conv algorithms to time (default: direct im2col auto)")
    p.add_argument("--json", metavar="FILE", help="write every row and the machine info as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of ratios vs torch")
    p.add_argument("--markdown", metavar="FILE", help="write the markdown report")
    p.add_argument("--report", metavar="DIR",
                   help="write DIR/<device-label>/{full|quick}.{md,json,png,cmd} in one go")
    p.add_argument("--readme", metavar="FILE",
                   help="also put the summary table into FILE between <!-- bench:start/end -->")
    p.add_argument("--interleave", action="store_true",
                   help="time torch and convkit in alternating rounds instead of one after the "
                        "other: steadier ratios on a machine other processes are using")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: rewrite the tables, PNG, report folder and README "
                        "section from a JSON file an earlier run wrote")
    p.add_argument("--threads", type=int, help="set torch's and numba's thread counts")
    p.add_argument("--cold-jit", action="store_true",
                   help="run with an empty Numba cache (a fresh NUMBA_CACHE_DIR), so first-call "
                        "times show the full JIT compile a new install pays once")
    p.add_argument("--min-time", type=float, help="seconds of timed repetitions per row")
    p.add_argument("--reps", type=int, help="minimum timed repetitions per row")
    p.add_argument("--model", metavar="MODULE:CALLABLE",
                   help="benchmark a whole model instead of the shape table: a callable that "
                        "builds an nn.Module (torchvision:resnet18, my_models.py:build); it is "
                        "converted, checked against torch, timed forward and forward+backward, "
                        "layer by layer too (see convkit.bench.model)")
    p.add_argument("--input-shape", metavar="C,H,W", help="--model's input, one image "
                   "(default 3,224,224)")
    p.add_argument("--batch", type=int, default=2, help="--model's batch size (default 2)")
    p.add_argument("--no-functional", dest="functional", action="store_false",
                   help="--model: convert modules only, leave F.relu & co. in forward on torch")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m convkit.bench``."""
    return add_arguments(argparse.ArgumentParser(prog="convkit bench", description=DESCRIPTION))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m convkit.bench``. Returns the exit code: 0, or 1 when any row
    failed validation or raised."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(argv), argv)


def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the benchmark ``args`` describe (parsed from ``argv``, the command's own arguments,
    which the report records and a --cold-jit child receives); returns the exit code."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = "python -m convkit.bench" if main_spec is not None and \
        main_spec.name == "convkit.bench.__main__" else "convkit bench"
    command = " ".join([prog, *(shlex.quote(a) for a in argv)])
    if args.cold_jit and os.environ.get(_COLD_ENV) != "1":
        # NUMBA_CACHE_DIR is read when numba is imported, so the run happens in a child process
        with tempfile.TemporaryDirectory(prefix="convkit-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, **{_COLD_ENV: "1"})
            return subprocess.run([sys.executable, "-m", "convkit.bench", *argv],
                                  env=env).returncode
    if args.model:
        from convkit.bench.model import run_model
        return run_model(args, command)
    if args.from_json:
        with open(args.from_json) as f:
            return _write(args, json.load(f))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("convkit bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    algorithms = _split(args.algorithms) or []
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad:
        raise SystemExit(f"convkit bench: unknown algorithm(s) {bad}; choose from {ALGORITHMS}")
    shapes = select_shapes(_split(args.shapes), args.quick)
    ops = select_ops(_split(args.ops))
    # the measuring code (and numba) load only once a run starts, not for `convkit --help`
    import numba

    from convkit.bench.machine import device_label, environment
    from convkit.bench.runner import run_bench
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    settings = copy.copy(QUICK_SETTINGS if args.quick else Settings())
    if args.min_time is not None:
        settings.min_time = args.min_time
    if args.reps is not None:
        settings.min_reps = args.reps
    settings.interleave = args.interleave
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    try:
        result = run_bench(shapes, ops, device, algorithms, settings, args.quick)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
    result["elapsed_s"] = time.perf_counter() - t0
    result["command"] = command
    result["device_label"] = device_label(device)
    result["machine"] = environment(device)
    result["jit_cache"] = "cold (empty NUMBA_CACHE_DIR)" if args.cold_jit else \
        "warm (Numba's on-disk cache used when present)"
    if device.type == "cuda":
        result["machine"]["cudnn_benchmark"] = True
    return _write(args, result)


def _write(args: argparse.Namespace, result: dict) -> int:
    return write_outputs(result, json_path=args.json, plot=args.plot, markdown=args.markdown,
                         report=args.report, readme=args.readme)
