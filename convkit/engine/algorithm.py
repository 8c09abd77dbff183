"""``algorithm="auto"``: which conv2d kernel runs, decided here for every device.

By default auto is a fixed rule of the problem's shape (:func:`rule`), so the same command gives
the same kernels, and the same bits, run after run. Each pass reduces over a different axis, so
each has its own measure of how much work one output element gets:

    forward           C/groups * KH * KW        (per output pixel)
    backward_input    K/groups * KH * KW        (per input pixel: a transposed convolution)
    backward_weight   K/groups * C/groups       (the channel pairs one tap's gradient couples)

Under DIRECT_MAX_REDUCTION the direct loop nest wins (conv1 with one input channel, depthwise,
3-channel image stems forward); above it, im2col + GEMM does, unless the GEMM would have at most
DIRECT_MAX_GEMM_ROWS rows (K/groups: a depthwise conv with a large kernel, say). Tiny problems
(under SMALL_MACS multiply-adds) run direct: no unfold and no BLAS call to pay for. Measured on
the benchmark shapes (benchmarks/results/cpu-amd-epyc/full.md), this rule picks the faster
kernel in every row where the two differ by more than 10 %.

On the CPU, a conv Winograd can compute (``winograd_qualifies``: 3x3, stride 1, dilation 1)
runs "winograd" instead of im2col where :func:`winograd_wins` says so: both channel counts of a
group at least WINOGRAD_MIN_CHANNELS, an output plane at least WINOGRAD_MIN_SIDE[pass] on each
side and at least WINOGRAD_MIN_MACS multiply-adds (the measurements are next to the
constants). Its float32 error is bounded too: the tile (``conv_winograd.tile_for``)
is F(4x4, 3x3) only where its measured error stays within WINOGRAD_ERROR_BOUND times im2col's
(docs/algorithms-winograd.md).
CUDA stays on im2col (no Winograd kernels there).

Like ``torch.backends.cudnn.benchmark``, timing is opt-in: with :func:`set_benchmark` (or
CONVKIT_BENCHMARK=1) the first CPU call of a new pass and shape runs each kernel once to compile
and warm it, times them alternately AUTOTUNE_ROUNDS times, keeps each one's best time and from then
on runs the winner (the choice is per process, so it can differ between runs and machines).
Problems under AUTOTUNE_MIN_MACS keep the rule. ``torch.use_deterministic_algorithms(True)``
turns timing off.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Optional

import torch

from convkit.kernels.shapes import ArgumentError, conv_output_size

# multiply-adds under which direct runs: a fixed per-call cost (unfold buffers, a BLAS call)
# outweighs the GEMM's speed there (the 'tiny' benchmark rows: im2col 1.9-3.2x direct's time)
SMALL_MACS = 1 << 18
# reduction length (see the module docstring) under which the direct kernel is chosen
DIRECT_MAX_REDUCTION = 32
# output channels of a group (K/groups) up to which forward and backward_input run direct
# whatever the reduction: im2col's GEMM is then one or two rows (forward) or an outer product of
# rank one or two (backward_input), so unfolding (folding) every tap of every pixel costs more
# than the arithmetic (depthwise 7x7 forward 0.05x im2col's time, backward_input 0.2x; depthwise
# 1x255 on 3x512^2 0.09x, both passes; K/groups = C/groups = 4 ties, 8 favours im2col, measured)
DIRECT_MAX_GEMM_ROWS = 2

# Winograd where it wins (winograd_wins). Measured on a quiet AMD EPYC Zen 4 (AVX-512, 2
# threads, load < 0.5; winograd / im2col time per pass, ResNet-18's stride-1 3x3 convs):
#   N=1: 64 ch 56^2 fwd 0.64, bwd-input 0.79, weight 0.37; 128 ch 28^2 0.71 / 0.72 / 0.32;
#        256 ch 14^2 0.47 / 0.57 / 0.21; 512 ch 7^2 1.33 / 1.22 / 0.27
#   N=2: 0.76 / 0.83 / 0.77; 0.95 / 0.95 / 0.55; 0.83 / 0.85 / 0.47; 1.00 / 1.05 / 0.51
#   N=4: 0.63 / 0.63 / 0.79; 0.75 / 0.75 / 0.78; 0.68 / 0.75 / 0.71; 0.69 / 0.83 / 0.49
#   N=8 (bench --interleave): 0.65 / 0.66 / 0.80; 0.63 / 0.65 / 0.86; 0.58 / 0.60 / 0.75;
#        1.06 / 1.02 / 0.67
# so Winograd from 64 channels a group (SimpleCNN conv2's 32 -> 64 at 14^2, N=64: fwd 0.91,
# bwd-input 1.05, weight 0.96, left to im2col), on planes of at least 14 a side for the
# forward and input gradient (7x7 planes padded to 8x8 tiles and layer 4's 38 MB transformed
# filter: a loss at N=1-2 and N=8) and 7 for the weight gradient. An earlier threshold of
# 2^29 multiply-adds came from timings on a machine loaded by other jobs; quiet, Winograd wins
# down to N=1 (1.2e8), so only problems far below that stay on im2col.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIDE = {"forward": 14, "backward_input": 14, "backward_weight": 7}
WINOGRAD_MIN_MACS = 1 << 24
# the float32 max error (relative to the largest output) auto accepts, as a multiple of
# im2col's: F(4,3) measured 9-28x on the ResNet/VGG shapes it runs (planes >= 16), F(2,3)
# 0.7-2.6x (docs/algorithms-winograd.md); an order of magnitude inside the parity suites'
# float32 tolerance. conv_winograd.tile_for keeps F(4,3) to where this holds
WINOGRAD_ERROR_BOUND = 32

# multiply-adds below which benchmark mode still trusts the rule instead of timing
AUTOTUNE_MIN_MACS = 1 << 21
# timed runs per algorithm on a new key; the minimum of each is compared
AUTOTUNE_ROUNDS = 3

PASSES = ("forward", "backward_input", "backward_weight")

_benchmark = [os.environ.get("CONVKIT_BENCHMARK", "0") == "1"]
CHOICES = {}  # key -> algorithm timing chose (benchmark mode)


def set_benchmark(enabled: bool) -> None:
    """Turn timing-based choice of ``auto`` on or off (off by default; see module docstring)."""
    _benchmark[0] = bool(enabled)


def benchmark_enabled() -> bool:
    """Whether ``auto`` times the kernels (and deterministic algorithms are not requested)."""
    return _benchmark[0] and not torch.are_deterministic_algorithms_enabled()


def winograd_qualifies(weight_shape, stride, dilation) -> bool:
    """Whether Winograd F(m x m, 3 x 3) computes this conv: a 3x3 filter, stride 1, dilation 1
    (any zero padding, any groups)."""
    return (tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1))


def check_winograd(weight_shape, stride, dilation, op: str = "conv2d()") -> None:
    """ArgumentError (a ValueError) naming what keeps ``algorithm="winograd"`` from this conv."""
    if not winograd_qualifies(weight_shape, stride, dilation):
        raise ArgumentError(
            f"{op}: algorithm='winograd' needs a 3x3 kernel, stride 1 and dilation 1, got "
            f"kernel {tuple(weight_shape[2:])}, stride {tuple(stride)}, dilation "
            f"{tuple(dilation)}; use 'auto', 'im2col' or 'direct'")


def winograd_wins(pass_name: str, weight_shape, groups: int, out_hw, macs: int) -> bool:
    """Whether ``auto`` runs Winograd for this pass of a qualifying conv of ``macs``
    multiply-adds (module docstring)."""
    K, Cg = weight_shape[0], weight_shape[1]
    return (min(Cg, K // groups) >= WINOGRAD_MIN_CHANNELS
            and min(out_hw) >= WINOGRAD_MIN_SIDE[pass_name] and macs >= WINOGRAD_MIN_MACS)


def rule(pass_name: str, weight_shape, groups: int, macs: int, conf=None, out_hw=None,
         device_type: str = "cpu") -> str:
    """The deterministic choice: "direct", "im2col" or (CPU, ``conf`` = (stride, padding,
    dilation, groups) and the output plane ``out_hw`` given) "winograd" (module docstring)."""
    K, Cg, KH, KW = weight_shape
    if macs < SMALL_MACS:
        return "direct"
    Kg = K // groups
    reduction = {"forward": Cg * KH * KW, "backward_input": Kg * KH * KW,
                 "backward_weight": Kg * Cg}[pass_name]
    if reduction < DIRECT_MAX_REDUCTION or (pass_name != "backward_weight"
                                            and Kg <= DIRECT_MAX_GEMM_ROWS):
        return "direct"
    if (device_type == "cpu" and conf is not None and out_hw is not None
            and winograd_qualifies(weight_shape, conf[0], conf[2])
            and winograd_wins(pass_name, weight_shape, groups, out_hw, macs)
            and _winograd_runs()):
        return "winograd"
    return "im2col"


@functools.lru_cache(maxsize=None)
def _winograd_runs() -> bool:
    """Whether numpy's BLAS has the cblas_?gemm the Winograd kernels call (both dtypes)."""
    import numpy as np

    from convkit.kernels.cpu.conv_winograd import available
    return available(np.float32) and available(np.float64)


def key(pass_name: str, input_shape, weight_shape, stride, padding, dilation, groups: int,
        dtype) -> tuple:
    """The cache key of one conv pass for benchmark mode."""
    return (pass_name, tuple(input_shape), tuple(weight_shape), tuple(stride), tuple(padding),
            tuple(dilation), groups, str(dtype))


def timing_applies(device_type: str, macs: int) -> bool:
    """Whether :func:`run` may time the kernels for a pass of ``macs`` multiply-adds (benchmark
    mode, CPU, large enough); where not, ``auto`` is :func:`rule`."""
    return device_type == "cpu" and macs >= AUTOTUNE_MIN_MACS and benchmark_enabled()


def run(pass_name: str, device_type: str, input_shape, weight_shape, conf, dtype, macs: int,
        call):
    """``call(algorithm)`` for the algorithm ``auto`` stands for on this pass and shape."""
    stride, padding, dilation, groups = conf
    if not timing_applies(device_type, macs):
        return call(rule(pass_name, weight_shape, groups, macs, conf,
                         _out_hw(input_shape, weight_shape, conf), device_type))
    k = key(pass_name, input_shape, weight_shape, stride, padding, dilation, groups, dtype)
    alg = CHOICES.get(k)
    if alg is not None:
        return call(alg)
    algorithms = ("direct", "im2col")
    if winograd_qualifies(weight_shape, stride, dilation) and _winograd_runs():
        algorithms += ("winograd",)
    times = {a: float("inf") for a in algorithms}
    for a in algorithms:
        call(a)
    for _ in range(AUTOTUNE_ROUNDS):
        for a in algorithms:
            t0 = time.perf_counter()
            out = call(a)
            times[a] = min(times[a], time.perf_counter() - t0)
    CHOICES[k] = alg = min(algorithms, key=times.get)
    return out if alg == algorithms[-1] else call(alg)


def select_algorithm(input_shape, weight_shape, stride, padding, dilation, groups: int,
                     dtype=torch.float32, device_type: str = "cpu",
                     pass_name: str = "forward") -> str:
    """The algorithm ``auto`` runs (or will run) for this pass and shape: the timed choice where
    benchmark mode made one, the rule otherwise."""
    if pass_name not in PASSES:
        raise ValueError(f"pass_name must be one of {PASSES}, got {pass_name!r}")
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    chosen: Optional[str] = None
    if device_type == "cpu":
        chosen = CHOICES.get(key(pass_name, input_shape, weight_shape, stride, padding, dilation,
                                 groups, dtype))
    if chosen is not None:
        return chosen
    N, C = input_shape[:2]
    K, _, KH, KW = weight_shape
    conf = (stride, padding, dilation, groups)
    OH, OW = _out_hw(input_shape, weight_shape, conf)
    macs = N * K * OH * OW * (C // groups) * KH * KW
    return rule(pass_name, weight_shape, groups, macs, conf, (OH, OW), device_type)


def _out_hw(input_shape, weight_shape, conf) -> tuple:
    """(OH, OW) of the conv (stride, padding, dilation, groups) = ``conf``."""
    stride, padding, dilation = conf[:3]
    return tuple(conv_output_size(input_shape[2 + i], weight_shape[2 + i], stride[i], padding[i],
                                  dilation[i]) for i in (0, 1))
