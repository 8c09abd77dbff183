"""Per-call overhead in one number: issue 15's tiny-call target (geometric mean of conv2d
forward, relu, max_pool2d and conv2d forward+backward at N1 C4 8x8, K4 3x3, over torch's time).

    python benchmarks/tiny_calls.py [--rounds 15] [--threads 1] [--json FILE]

Torch and convkit are timed in alternating rounds on the same tensors (each round: the best of
three chunks of calls per side), and each op's ratio is the median over rounds of the per-round
ratios, so a machine other processes are using shifts both sides alike. Every op is checked
against torch before it is timed. One thread by default, as benchmarks/test_bench_overhead.py:
these calls are far below any parallel grain.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

import convkit.functional as CF


def _ops():
    torch.manual_seed(0)
    x, w, b, gy = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(4), \
        torch.randn(1, 4, 8, 8)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def fwd_bwd(conv):
        return lambda: (lambda y: (y,) + torch.autograd.grad(y, (xg, wg, bg), gy))(
            conv(xg, wg, bg, 1, 1))

    return {
        "conv2d forward": (lambda: F.conv2d(x, w, b, 1, 1), lambda: CF.conv2d(x, w, b, 1, 1)),
        "relu": (lambda: F.relu(x), lambda: CF.relu(x)),
        "max_pool2d": (lambda: F.max_pool2d(x, 2), lambda: CF.max_pool2d(x, 2)),
        "conv2d forward+backward": (fwd_bwd(F.conv2d), fwd_bwd(CF.conv2d)),
    }


def _per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def measure(rounds: int = 15) -> dict:
    """{op: {torch_us, convkit_us, ratio}} and the geometric mean of the ratios."""
    ops = _ops()
    for name, (reference, call) in ops.items():
        for got, want in zip(*(torch.utils._pytree.tree_leaves(f()) for f in (call, reference))):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
        for _ in range(200):
            reference(), call()
    rows = {}
    for name, (reference, call) in ops.items():
        calls = 200 if "backward" in name else 2000
        times = {"torch": [], "convkit": [], "ratio": []}
        for _ in range(rounds):
            t = min(_per_call_us(reference, calls) for _ in range(3))
            c = min(_per_call_us(call, calls) for _ in range(3))
            times["torch"].append(t)
            times["convkit"].append(c)
            times["ratio"].append(c / t)
        rows[name] = {"torch_us": statistics.median(times["torch"]),
                      "convkit_us": statistics.median(times["convkit"]),
                      "ratio": statistics.median(times["ratio"])}
    geomean = math.exp(sum(math.log(r["ratio"]) for r in rows.values()) / len(rows))
    return {"rows": rows, "geomean": geomean}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.rounds)
    for name, row in result["rows"].items():
        print(f"{name:24s} torch {row['torch_us']:8.2f} us   convkit {row['convkit_us']:8.2f} us"
              f"   {row['ratio']:5.2f}x")
    print(f"geometric mean {result['geomean']:.2f}x torch (target <= 2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "threads": args.threads, "rounds": args.rounds}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
