"""Depthwise convs with long 1-D kernels on a permuted (channels-last) input: the pattern of
PyTorch's ``test_permute_conv2d_issue_120211`` (1x(2r+1) kernels, r = 0..127, on a
1x3x1024x1024 image made by permuting an NHWC tensor), timed for torch and convkit.

    python benchmarks/long_kernels.py [--radii 0,8,32,64,127] [--size 1024] [--rounds 3]

Each radius is checked against torch, then both sides run in alternating rounds; the ratio is
convkit's median time over torch's, from the same run. The sum over every radius of 0..127 is
what the PyTorch test costs (``--radii all``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import convkit.functional as CF


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--radii", default="0,8,32,64,127",
                        help="comma-separated kernel radii, or 'all' for 0..127")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    radii = range(128) if args.radii == "all" else [int(r) for r in args.radii.split(",")]
    torch.manual_seed(0)
    image = torch.rand(1, args.size, args.size, 3).permute(0, 3, 1, 2)
    print(f"{'radius':>6} {'torch s':>9} {'convkit s':>10} {'ratio':>6}")
    totals = [0.0, 0.0]
    for r in radii:
        if 2 * r + 1 > args.size:
            break
        kernel = torch.randn(3, 1, 1, 2 * r + 1)
        ours, theirs = CF.conv2d(image, kernel, groups=3), F.conv2d(image, kernel, groups=3)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * (2 * r + 1))
        assert ours.stride() == theirs.stride()
        times = {"torch": [], "convkit": []}
        for _ in range(args.rounds):
            times["torch"].append(_time(lambda k=kernel: F.conv2d(image, k, groups=3)))
            times["convkit"].append(_time(lambda k=kernel: CF.conv2d(image, k, groups=3)))
        t, c = (statistics.median(times[k]) for k in ("torch", "convkit"))
        totals[0] += t
        totals[1] += c
        print(f"{r:>6} {t:>9.4f} {c:>10.4f} {c / t:>6.2f}")
    print(f"{'total':>6} {totals[0]:>9.3f} {totals[1]:>10.3f} {totals[1] / totals[0]:>6.2f}")


if __name__ == "__main__":
    main()
