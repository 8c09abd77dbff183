"""First calls of a ResNet-18 training step against the steady state, with an empty and a warm
Numba cache.

    python benchmarks/first_calls.py                    # empty cache, then warm, N2 3x224x224
    python benchmarks/first_calls.py --precompile       # empty, `convkit warm-cache`, then warm
    python benchmarks/first_calls.py --size 112 --steps 6 --json out.json

Each run is a fresh process (Numba reads NUMBA_CACHE_DIR when it is imported) on a temporary
cache directory that the runs share in order: the first finds it empty, the later ones find what
the earlier ones (or ``convkit warm-cache``) wrote. A run times ``import convkit`` + convert,
each of the first training steps (SGD, cross-entropy, train mode) and the median of the steps
after them. The model is torchvision's resnet18 where torchvision imports, else the same
architecture written out here (same convolutions, pools, ReLUs and BatchNorms).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_CHILD = "_CONVKIT_FIRST_CALLS_CHILD"


def resnet18(num_classes: int = 1000):
    """torchvision's resnet18 (weights=None), or the same layers written out."""
    try:
        import torchvision
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    except Exception:  # not installed, or a wheel that does not match torch
        pass
    from torch import nn

    def block(cin, cout, stride):
        down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else None)

        class Basic(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.relu = nn.ReLU(inplace=True)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.downsample = down

            def forward(self, x):
                idt = x if self.downsample is None else self.downsample(x)
                out = self.relu(self.bn1(self.conv1(x)))
                return self.relu(self.bn2(self.conv2(out)) + idt)
        return Basic()

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    for cin, cout, stride in [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]:
        layers += [block(cin, cout, stride), block(cout, cout, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def child(batch: int, size: int, steps: int, algorithm: str) -> dict:
    """One process's timings (seconds)."""
    t0 = time.perf_counter()
    import torch
    import torch.nn.functional as F

    import convkit
    t_torch = time.perf_counter()
    torch.manual_seed(0)
    model = convkit.convert(resnet18(), algorithm=algorithm).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    t_ready = time.perf_counter()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    steady = statistics.median(times[2:])
    return {"import_s": t_torch - t0, "convert_s": t_ready - t_torch, "steps_s": times,
            "steady_s": steady, "first_over_steady_s": times[0] - steady,
            "threads": torch.get_num_threads()}


def run_child(cache: str, batch: int, size: int, steps: int, algorithm: str) -> dict:
    """A fresh process on ``cache``: its timings, and its wall time from start to exit."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, **{_CHILD: "1"})
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--batch", str(batch), "--size", str(size),
                          "--steps", str(steps), "--algorithm", algorithm], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=6, help="steps per run (>= 3; default 6)")
    p.add_argument("--algorithm", default="auto", help="convert(model, algorithm=...)")
    p.add_argument("--precompile", action="store_true",
                   help="run `convkit warm-cache` on the empty cache first, and time it")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if os.environ.get(_CHILD):
        print(json.dumps(child(args.batch, args.size, max(3, args.steps), args.algorithm)))
        return 0
    from convkit.bench.machine import cpu_model

    results = {"cpu": cpu_model(), "batch": args.batch, "size": args.size,
               "algorithm": args.algorithm, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="convkit-first-calls-") as cache:
        order = ["empty", "warm"]
        if args.precompile:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "convkit", "warm-cache"], check=True,
                           env=dict(os.environ, NUMBA_CACHE_DIR=cache))
            results["warm_cache_s"] = time.perf_counter() - t
            order = ["precompiled", "warm"]
        for name in order:
            r = run_child(cache, args.batch, args.size, max(3, args.steps), args.algorithm)
            results["runs"][name] = r
            print(f"{name:>12}: import {r['import_s']:.2f} s, convert {r['convert_s']:.2f} s, "
                  f"steps {' '.join(f'{s:.2f}' for s in r['steps_s'])} s; first step "
                  f"{r['first_over_steady_s']:+.2f} s over the steady {r['steady_s']:.2f} s",
                  flush=True)
    print(f"CPU: {results['cpu']}, N{args.batch} 3x{args.size}x{args.size}, "
          f"algorithm={args.algorithm}, "
          f"{results['runs'][order[0]]['threads']} threads")
    if "warm_cache_s" in results:
        print(f"convkit warm-cache on the empty cache: {results['warm_cache_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
