"""``convkit bench``: convkit's hand-written kernels against the libraries torch ships.

Every row of the report is one (shape, op, implementation). For each row the harness follows
llm.c's pattern: build the row's tensors, call the implementation once (timed separately as the
*first call*, which includes Numba's JIT compile or cache load the first time a kernel is used in
the process), check that output against torch's on the same tensors, warm up, then time repeated
calls and keep the median and spread. Ratios are convkit's median over torch's median measured in
the same process, so they are comparable across machines even when absolute times are not.

What is called on each side:

===============  =====================================  =========================================
op               convkit                                torch
===============  =====================================  =========================================
conv_fwd         convkit.functional.conv2d              torch.nn.functional.conv2d
conv_bwd_input   kernels.<dev>.conv2d_backward_input    aten.convolution_backward (grad_input)
conv_bwd_weight  kernels.<dev>.conv2d_backward_weight   aten.convolution_backward (grad_weight)
conv_fwd_bwd     functional.conv2d + autograd.grad      F.conv2d + autograd.grad (x, w, b)
relu_fwd         convkit.functional.relu                torch.relu
relu_bwd         kernels.<dev>.relu_backward            aten.threshold_backward
pool_fwd         convkit.functional.max_pool2d          F.max_pool2d
pool_bwd         kernels.<dev>.max_pool2d_backward      aten.max_pool2d_with_indices_backward
train_step       SimpleCNN with convkit layers          SimpleCNN with torch layers
===============  =====================================  =========================================

A training step is zero_grad, forward, cross-entropy, backward and an Adam step.
The two backward halves are timed at the kernel level because the public API has no separate
entry for them (torch's ``convolution_backward`` with an output mask is the like-for-like call);
the other ops go through the public API, so their times include convkit's dispatch overhead.
On CUDA the torch column runs cuDNN with ``cudnn.benchmark=True`` and TF32 off (the fair fp32
comparison); a second ``torch-tf32`` column runs with TF32 on. GPU times come from CUDA events
with the L2 cache flushed before each repetition.

The shape table below (``CONV_SHAPES``, ``PLANE_SHAPES``, ``TRAIN_SHAPES``) is the single source
for both this command and the pytest-benchmark suites in ``benchmarks/``.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from convkit.kernels.shapes import conv2d_flops, conv_output_size

Pair = Tuple[int, int]


# --------------------------------------------------------------------------------------------
# Shape table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    """One conv2d benchmark shape: input (N, C, H, W), weight (K, C/groups, KH, KW)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    KH: int
    KW: int
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    quick: bool = False

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.KH, self.KW)

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        OH = conv_output_size(self.H, self.KH, self.stride[0], self.padding[0], self.dilation[0])
        OW = conv_output_size(self.W, self.KW, self.stride[1], self.padding[1], self.dilation[1])
        return (self.N, self.K, OH, OW)

    @property
    def flops(self) -> int:
        """FLOPs of one forward; backward-input and backward-weight each cost the same."""
        return conv2d_flops(self.input_shape, self.weight_shape, self.output_shape)

    def describe(self) -> str:
        s = f"N{self.N} C{self.C} {self.H}x{self.W} K{self.K} {self.KH}x{self.KW}"
        if self.stride != (1, 1):
            s += f" s{_pair_str(self.stride)}"
        if self.padding != (0, 0):
            s += f" p{_pair_str(self.padding)}"
        if self.dilation != (1, 1):
            s += f" d{_pair_str(self.dilation)}"
        if self.groups != 1:
            s += f" g{self.groups}"
        return s


@dataclass(frozen=True)
class PlaneShape:
    """A ReLU / max-pool shape: input (N, C, H, W); pool uses kernel = stride = ``pool``."""

    name: str
    N: int
    C: int
    H: int
    W: int
    pool: int = 2
    quick: bool = False

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    def describe(self) -> str:
        return f"N{self.N} C{self.C} {self.H}x{self.W} (pool {self.pool}x{self.pool} s{self.pool})"


@dataclass(frozen=True)
class TrainShape:
    """A SimpleCNN training step on a batch of N 1x28x28 images, 10 classes."""

    name: str
    N: int
    quick: bool = False

    def describe(self) -> str:
        return f"SimpleCNN N{self.N} 1x28x28, CE + Adam"


def _pair_str(p: Pair) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]},{p[1]}"


CONV_SHAPES: Tuple[ConvShape, ...] = (
    # one image, one channel: what a call costs when there is nothing to compute
    ConvShape("tiny", 1, 1, 8, 8, 1, 3, 3, padding=(1, 1), quick=True),
    ConvShape("simplecnn-conv1", 64, 1, 28, 28, 32, 3, 3, padding=(1, 1), quick=True),
    ConvShape("simplecnn-conv2", 64, 32, 14, 14, 64, 3, 3, padding=(1, 1), quick=True),
    ConvShape("resnet-3x3", 32, 64, 56, 56, 64, 3, 3, padding=(1, 1)),
    ConvShape("resnet-stem", 8, 3, 224, 224, 64, 7, 7, stride=(2, 2), padding=(3, 3)),
    ConvShape("vgg-first", 8, 3, 224, 224, 64, 3, 3, padding=(1, 1)),
    # ResNet's downsampling 3x3 (first conv of a stage)
    ConvShape("strided-3x3-s2", 16, 64, 56, 56, 128, 3, 3, stride=(2, 2), padding=(1, 1)),
    # DeepLab-style atrous conv
    ConvShape("dilated-3x3-d2", 8, 64, 56, 56, 64, 3, 3, padding=(2, 2), dilation=(2, 2)),
    ConvShape("depthwise-3x3", 32, 64, 56, 56, 64, 3, 3, padding=(1, 1), groups=64),
    ConvShape("pointwise-1x1", 32, 64, 56, 56, 128, 1, 1),
)

PLANE_SHAPES: Tuple[PlaneShape, ...] = (
    PlaneShape("simplecnn-act1", 64, 32, 28, 28, quick=True),   # after conv1
    PlaneShape("simplecnn-act2", 64, 64, 14, 14),               # after conv2
)

TRAIN_SHAPES: Tuple[TrainShape, ...] = (
    TrainShape("simplecnn-train", 64, quick=True),
)

CONV_OPS = ("conv_fwd", "conv_bwd_input", "conv_bwd_weight", "conv_fwd_bwd")
RELU_OPS = ("relu_fwd", "relu_bwd")
POOL_OPS = ("pool_fwd", "pool_bwd")
TRAIN_OPS = ("train_step",)
OPS = CONV_OPS + RELU_OPS + POOL_OPS + TRAIN_OPS
OP_GROUPS = {"conv": CONV_OPS, "relu": RELU_OPS, "pool": POOL_OPS, "train": TRAIN_OPS,
             "all": OPS}
ALGORITHMS = ("direct", "im2col", "auto")

# Relative error (max |a - b| over max |reference|) accepted before a row is timed. fp32 sums of
# up to ~10^5 products (backward-weight) stay near 1e-5; a wrong kernel is off by O(1).
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}


def all_shapes() -> list:
    """Every shape of the table, conv first, in report order."""
    return [*CONV_SHAPES, *PLANE_SHAPES, *TRAIN_SHAPES]


def ops_for(shape) -> Tuple[str, ...]:
    """The ops that make sense for a shape."""
    if isinstance(shape, ConvShape):
        return CONV_OPS
    if isinstance(shape, PlaneShape):
        return RELU_OPS + POOL_OPS
    return TRAIN_OPS


# --------------------------------------------------------------------------------------------
# Cases: one callable per (shape, op, implementation), plus what validation compares
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One thing to time. ``run()`` does one call and returns its output (tensors)."""

    shape: object
    op: str
    impl: str               # "torch", "torch-tf32", "direct", "im2col", "auto", "convkit"
    run: Callable[[], object]
    level: str              # "functional" (public API), "kernel" (torch-free kernels), "model"
    flops: Optional[int] = None
    bytes: Optional[int] = None
    choice: Optional[Callable[[], Optional[str]]] = None   # what auto ran, asked after
    note: str = ""
    setup: Callable[[], None] = field(default=lambda: None)   # before every call (train step)
    tf32: bool = False

    @property
    def is_torch(self) -> bool:
        return self.impl.startswith("torch")


class _Backend:
    """convkit's public API and the kernel engine autograd uses for one device.

    ``engine.<kernel>(...)`` is ``convkit.autograd.engine_for(device)``: it passes tensors to the
    torch-free kernels as zero-copy arrays and wraps the results, exactly as autograd does.
    """

    def __init__(self, device: torch.device):
        import convkit.functional as CF
        from convkit.autograd import engine_for
        self.F = CF
        self.engine = engine_for(device)


PASSES = {"conv_fwd": ("forward",), "conv_bwd_input": ("backward_input",),
          "conv_bwd_weight": ("backward_weight",),
          "conv_fwd_bwd": ("forward", "backward_input", "backward_weight")}
_PASS_ABBREV = {"forward": "fwd", "backward_input": "in", "backward_weight": "w"}


def auto_choice(shape: ConvShape, device: torch.device,
                passes: Sequence[str] = ("forward",)) -> Optional[str]:
    """What ``algorithm="auto"`` ran for this shape, per pass: "im2col" when every pass agrees,
    else e.g. "fwd:direct in:im2col w:im2col". Asks ``convkit.functional.select_algorithm``
    (on the CPU auto is a measured one-time choice, so ask after the shape has run); None if
    this convkit cannot say."""
    import convkit.functional as CF
    select = getattr(CF, "select_algorithm", None)
    if select is None:
        return None
    picks = []
    for p in passes:
        try:
            picks.append(str(select(shape.input_shape, shape.weight_shape, shape.stride,
                                    shape.padding, shape.dilation, shape.groups,
                                    dtype=torch.float32, device_type=device.type, pass_name=p)))
        except TypeError:
            return None
    if len(set(picks)) == 1:
        return picks[0]
    return " ".join(f"{_PASS_ABBREV[p]}:{a}" for p, a in zip(passes, picks))


def _kernel_algorithm(shape: ConvShape, op: str, device: torch.device, algo: str) -> str:
    """The ``algorithm`` argument for a kernel-level call: the CPU kernels take "auto" (and
    autotune on first use); elsewhere auto is resolved the way functional resolves it."""
    if algo != "auto" or device.type == "cpu":
        return algo
    return auto_choice(shape, device, PASSES[op]) or "auto"


def _randn(shape, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device)


def conv_cases(shape: ConvShape, op: str, device: torch.device, algorithms: Sequence[str],
               tf32_column: bool) -> List[Case]:
    """torch first (then torch-tf32 on CUDA), then one case per convkit algorithm."""
    gen = torch.Generator().manual_seed(0)
    fan_in = shape.weight_shape[1] * shape.KH * shape.KW
    x = _randn(shape.input_shape, device, gen)
    w = _randn(shape.weight_shape, device, gen, 1.0 / math.sqrt(fan_in))
    b = _randn((shape.K,), device, gen, 0.1)
    gy = _randn(shape.output_shape, device, gen)
    args = (shape.stride, shape.padding, shape.dilation, shape.groups)
    flops = shape.flops * (3 if op == "conv_fwd_bwd" else 1)

    def torch_run():
        if op == "conv_fwd":
            return F.conv2d(x, w, b, *args)
        if op == "conv_fwd_bwd":
            return _fwd_bwd(lambda xr, wr, br: F.conv2d(xr, wr, br, *args))
        mask = [op == "conv_bwd_input", op == "conv_bwd_weight", False]
        gx, gw, _ = torch.ops.aten.convolution_backward(
            gy, x, w, None, list(shape.stride), list(shape.padding), list(shape.dilation),
            False, [0, 0], shape.groups, mask)
        return gx if op == "conv_bwd_input" else gw

    def _fwd_bwd(conv):
        xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
        y = conv(xr, wr, br)
        return torch.autograd.grad(y, (xr, wr, br), gy)

    kernel_level = op in ("conv_bwd_input", "conv_bwd_weight")
    cases = [Case(shape, op, "torch", torch_run, "kernel" if kernel_level else "functional",
                  flops)]
    if tf32_column:
        cases.append(Case(shape, op, "torch-tf32", torch_run, cases[0].level, flops, tf32=True))
    if not algorithms:
        return cases
    be = _Backend(device)
    for algo in algorithms:
        choice = (lambda: auto_choice(shape, device, PASSES[op])) if algo == "auto" else None
        if kernel_level:
            kalgo = _kernel_algorithm(shape, op, device, algo)
            if op == "conv_bwd_input":
                def run(a=kalgo):
                    return be.engine.conv2d_backward_input(gy, w, shape.input_shape, *args, a)
            else:
                def run(a=kalgo):
                    return be.engine.conv2d_backward_weight(x, gy, shape.weight_shape, *args, a)
            cases.append(Case(shape, op, algo, run, "kernel", flops, choice=choice))
        elif op == "conv_fwd":
            cases.append(Case(shape, op, algo,
                              lambda a=algo: be.F.conv2d(x, w, b, *args, algorithm=a),
                              "functional", flops, choice=choice))
        else:
            cases.append(Case(shape, op, algo,
                              lambda a=algo: _fwd_bwd(lambda xr, wr, br: be.F.conv2d(
                                  xr, wr, br, *args, algorithm=a)),
                              "functional", flops, choice=choice))
    return cases


def plane_cases(shape: PlaneShape, op: str, device: torch.device,
                with_convkit: bool) -> List[Case]:
    """ReLU / max-pool cases: torch, then convkit (no algorithm choice for these ops; no TF32
    column either, as there is no matmul inside)."""
    gen = torch.Generator().manual_seed(0)
    x = _randn(shape.input_shape, device, gen)
    k = shape.pool
    numel = x.numel()
    if op.startswith("relu"):
        y = torch.relu(x)
        gy = _randn(shape.input_shape, device, gen)
        nbytes = 4 * numel * (2 if op == "relu_fwd" else 3)     # read x | gy, y; write y | gx
    else:
        y, idx = F.max_pool2d(x, k, k, return_indices=True)
        gy = _randn(y.shape, device, gen)
        out = y.numel()
        # fwd: read x, write y (+ int64 indices, which convkit always produces); bwd: read gy and
        # indices, write gx
        nbytes = 4 * numel + 4 * out if op == "pool_fwd" else 4 * out + 8 * out + 4 * numel

    def torch_run():
        if op == "relu_fwd":
            return torch.relu(x)
        if op == "relu_bwd":
            return torch.ops.aten.threshold_backward(gy, y, 0)
        if op == "pool_fwd":
            return F.max_pool2d(x, k, k)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            gy, x, [k, k], [k, k], [0, 0], [1, 1], False, idx)

    level = "kernel" if op.endswith("bwd") else "functional"
    cases = [Case(shape, op, "torch", torch_run, level, bytes=nbytes)]
    if not with_convkit:
        return cases
    be = _Backend(device)
    if op == "relu_fwd":
        def run():
            return be.F.relu(x)
    elif op == "pool_fwd":
        def run():
            return be.F.max_pool2d(x, k, k)
    elif op == "relu_bwd":
        def run():
            return be.engine.relu_backward(gy, y)
    else:
        def run():
            return be.engine.max_pool2d_backward(gy, idx, shape.input_shape)
    cases.append(Case(shape, op, "convkit", run, level, bytes=nbytes))
    return cases


def simple_cnn(backend: str = "torch", algorithm: str = "auto") -> torch.nn.Module:
    """The tutorial's SimpleCNN (421,642 parameters): ``convkit.models.SimpleCNN``, or the same
    layers built here when that module is absent."""
    try:
        from convkit.models import SimpleCNN
    except ImportError:
        SimpleCNN = None
    if SimpleCNN is not None:
        return SimpleCNN(backend=backend, algorithm=algorithm, seed=0)
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10))
    if backend == "convkit":
        import convkit
        model = convkit.convert(model, algorithm=algorithm)
    return model


def simple_cnn_convs(N: int) -> Tuple[ConvShape, ConvShape]:
    """SimpleCNN's two convolutions at batch N."""
    return (ConvShape("conv1", N, 1, 28, 28, 32, 3, 3, padding=(1, 1)),
            ConvShape("conv2", N, 32, 14, 14, 64, 3, 3, padding=(1, 1)))


def simple_cnn_flops(N: int) -> int:
    """Nominal FLOPs of one training step: 3x the forward FLOPs of the convs and linears."""
    fc = 2 * N * (3136 * 128 + 128 * 10)
    return 3 * (sum(c.flops for c in simple_cnn_convs(N)) + fc)


def _train_choice(shape: TrainShape, device: torch.device) -> Callable[[], Optional[str]]:
    def choice():
        conv1, conv2 = simple_cnn_convs(shape.N)
        # conv1's input needs no gradient, so it has no backward-input pass
        c1 = auto_choice(conv1, device, ("forward", "backward_weight"))
        c2 = auto_choice(conv2, device, PASSES["conv_fwd_bwd"])
        return None if c1 is None or c2 is None else f"conv1 {c1}; conv2 {c2}"
    return choice


def train_cases(shape: TrainShape, device: torch.device, algorithms: Sequence[str],
                tf32_column: bool) -> List[Case]:
    """One full step each: zero_grad, forward, cross-entropy, backward, Adam step.

    Every model starts from the same weights and reseeds torch's RNG before each step, so the
    first step's loss and gradients (dropout included) can be compared exactly.
    """
    base = simple_cnn("torch").to(device)
    state = copy.deepcopy(base.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape.N, 1, 28, 28, generator=gen).to(device)
    target = torch.randint(0, 10, (shape.N,), generator=gen).to(device)
    flops = simple_cnn_flops(shape.N)

    def make(model):
        model.load_state_dict(state)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())

        def run():
            torch.manual_seed(2)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            return (loss.detach(), *[p.grad for p in params])
        return run

    cases = [Case(shape, "train_step", "torch", make(base), "model", flops)]
    if tf32_column:
        cases.append(Case(shape, "train_step", "torch-tf32", make(copy.deepcopy(base)),
                          "model", flops, tf32=True))
    for algo in algorithms:
        model = simple_cnn("convkit", algo).to(device)
        cases.append(Case(shape, "train_step", algo, make(model), "model", flops,
                          choice=_train_choice(shape, device) if algo == "auto" else None))
    return cases


def build_cases(shape, op: str, device: torch.device, algorithms: Sequence[str] = ALGORITHMS,
                tf32_column: Optional[bool] = None) -> List[Case]:
    """All cases of one (shape, op): torch first, so later rows can be validated against it."""
    if tf32_column is None:
        tf32_column = device.type == "cuda"
    if isinstance(shape, ConvShape):
        return conv_cases(shape, op, device, algorithms, tf32_column)
    if isinstance(shape, PlaneShape):
        return plane_cases(shape, op, device, bool(algorithms))
    return train_cases(shape, device, algorithms, tf32_column)


# --------------------------------------------------------------------------------------------
# Validation and timing
# --------------------------------------------------------------------------------------------
def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if t is not None]


def max_rel_error(out, ref) -> float:
    """max |out - ref| / max |ref| over every tensor of two outputs (tuples compared pairwise)."""
    a, r = _tensors(out), _tensors(ref)
    if len(a) != len(r):
        return math.inf
    worst = 0.0
    for t, u in zip(a, r):
        if t.shape != u.shape:
            return math.inf
        t, u = t.detach().double(), u.detach().double().to(t.device)
        scale = u.abs().max().item() if u.numel() else 0.0
        err = (t - u).abs().max().item() if u.numel() else 0.0
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


class Timer:
    """Wall time of one call. CPU: perf_counter. CUDA: events around the call, L2 flushed first."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            props = torch.cuda.get_device_properties(device)
            l2 = getattr(props, "L2_cache_size", 64 << 20) or (64 << 20)
            self._flush = torch.empty(2 * l2 // 4, dtype=torch.float32, device=device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def wall(self, fn: Callable[[], object]):
        """(seconds, output) of one call, host-side and synchronised: used for the first call."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        self._flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


@dataclass
class Settings:
    """How long to measure each row."""

    min_time: float = 0.5     # seconds of timed repetitions per row (at least)
    min_reps: int = 5
    max_reps: int = 1000
    warmup_time: float = 0.05  # seconds of extra warm-up after the first call (at least 1 call)
    slow_call: float = 1.0    # a warm call slower than this (seconds) gets only slow_reps reps,
    slow_reps: int = 3        # so the slowest kernels do not dominate the run
    interleave: bool = False  # time the implementations of a row in alternating rounds


QUICK_SETTINGS = Settings(min_time=0.15, min_reps=3, warmup_time=0.02)


def summarize(times: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, min and max in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3,
            "min_ms": ms[0], "max_ms": ms[-1], "reps": len(ms)}


class _TF32:
    """Context manager: TF32 on or off for cuDNN convolutions and cuBLAS matmuls."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = self.on
        torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def first_call(case: Case, timer: Timer, reference=None) -> Tuple[float, object, Optional[float]]:
    """Call ``case`` once: (wall seconds, detached output, max relative error vs ``reference``).

    The error is None when there is no reference (torch rows) or the row runs TF32.
    """
    with _TF32(case.tf32):
        seconds, out = timer.wall(case.run)
    err = None
    if reference is not None and not case.tf32:
        err = max_rel_error(out, reference)
    return seconds, _detach(out), err


def prepare(case: Case, timer: Timer, settings: Settings,
            reference=None) -> Tuple[dict, object, int]:
    """First call (timed on its own), validation against ``reference``, then warm-up.

    Returns the row (status "ready" when it may be timed), the first call's output (a detached
    copy, the reference for the rows after a torch row) and how many timed reps it needs.
    """
    row = new_row(case)
    if case.run is None:
        row["status"] = "skipped"
        return row, None, 0
    seconds, out, err = first_call(case, timer, reference)
    row["first_call_ms"] = seconds * 1e3
    if err is not None:
        row["max_rel_error"], row["tolerance"] = err, TOLERANCE[torch.float32]
        if not err <= row["tolerance"]:
            row["status"] = "FAILED validation"
            return row, None, 0
    with _TF32(case.tf32):
        t_end = time.perf_counter() + settings.warmup_time
        warm, _ = timer.wall(case.run)
        while time.perf_counter() < t_end:
            timer.wall(case.run)
    row["status"] = "ready"
    slow = warm > settings.slow_call
    return row, out, min(settings.min_reps, settings.slow_reps) if slow else settings.min_reps


def finish_timing(row: dict, case: Case, times: Sequence[float]) -> None:
    """Store the statistics of ``times`` and what auto chose."""
    row.update(summarize(times))
    row["status"] = "ok"
    if case.choice is not None:
        row["auto_choice"] = case.choice()


def measure(case: Case, timer: Timer, settings: Settings, reference=None) -> Tuple[dict, object]:
    """Validate ``case`` against ``reference`` on its first call, then time it.

    Returns the row (a dict with ``ROW_FIELDS``) and the first call's output. A row that fails
    validation is not timed.
    """
    row, out, min_reps = prepare(case, timer, settings, reference)
    if row["status"] != "ready":
        return row, out
    times: List[float] = []
    with _TF32(case.tf32):
        t_end = time.perf_counter() + settings.min_time
        while len(times) < settings.max_reps and (
                len(times) < min_reps or time.perf_counter() < t_end):
            times.append(timer(case.run))
    finish_timing(row, case, times)
    return row, out


def measure_interleaved(cases: Sequence[Case], rows: Sequence[dict], needs: Sequence[int],
                        timer: Timer, settings: Settings) -> None:
    """Time prepared cases in rounds, one call of each per round (order rotated every round),
    so a change in machine load hits every implementation alike."""
    live = [j for j, r in enumerate(rows) if r["status"] == "ready"]
    times: Dict[int, List[float]] = {j: [] for j in live}
    t_end = time.perf_counter() + settings.min_time * len(live)
    rnd = 0
    while live and rnd < settings.max_reps and (
            rnd < max(needs[j] for j in live) or time.perf_counter() < t_end):
        for j in live[rnd % len(live):] + live[:rnd % len(live)]:
            with _TF32(cases[j].tf32):
                times[j].append(timer(cases[j].run))
        rnd += 1
    for j in live:
        finish_timing(rows[j], cases[j], times[j])


ROW_FIELDS = ("shape", "shape_desc", "op", "impl", "level", "status", "note", "median_ms",
              "q1_ms", "q3_ms", "min_ms", "max_ms", "reps", "first_call_ms", "ratio",
              "ratio_min", "ratio_tf32", "flops", "gflops", "bytes", "gbps", "roof_pct",
              "auto_choice", "max_rel_error", "tolerance")


def new_row(case: Case) -> Dict[str, object]:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(shape=case.shape.name, shape_desc=case.shape.describe(), op=case.op,
               impl=case.impl, level=case.level, note=case.note, flops=case.flops,
               bytes=case.bytes)
    return row


def finish_row(row: Dict[str, object], torch_row: Optional[dict], tf32_row: Optional[dict],
               roofs: Dict[str, float]) -> None:
    """Fill ratio, GFLOP/s or GB/s and % of the matching roof from the row's median."""
    med = row["median_ms"]
    if med is None:
        return
    if torch_row is not None and torch_row is not row and torch_row.get("median_ms"):
        row["ratio"] = med / torch_row["median_ms"]
        row["ratio_min"] = row["min_ms"] / torch_row["min_ms"]
    if tf32_row is not None and tf32_row is not row and tf32_row.get("median_ms"):
        row["ratio_tf32"] = med / tf32_row["median_ms"]
    if row["flops"]:
        row["gflops"] = row["flops"] / (med * 1e-3) / 1e9
        if roofs.get("sgemm_gflops"):
            row["roof_pct"] = 100.0 * row["gflops"] / roofs["sgemm_gflops"]
    elif row["bytes"]:
        row["gbps"] = row["bytes"] / (med * 1e-3) / 1e9
        roof = roofs.get("copy_gbps_at", {}).get(row["shape"]) or roofs.get("copy_gbps")
        if roof:
            row["roof_pct"] = 100.0 * row["gbps"] / roof


def measure_copy(numel: int, device: torch.device, timer: Timer, reps: int = 7) -> float:
    """GB/s of ``dst.copy_(src)`` for ``numel`` fp32 elements (bytes read + written)."""
    src = torch.empty(numel, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timer.wall(lambda: dst.copy_(src))
    t = statistics.median(timer(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * numel * 4 / t / 1e9


def measure_roofs(device: torch.device, timer: Timer, quick: bool) -> Dict[str, object]:
    """SGEMM (torch.matmul, fp32, TF32 off) and copy bandwidth on ``device``, in this run.

    The copy of 64 MiB measures memory bandwidth; ReLU/pool rows are compared with a copy of
    their own input size (``copy_gbps_at``, filled in by ``run_bench``), because activations
    that fit in the last-level cache move faster than memory allows.
    """
    n = 4096 if device.type == "cuda" else 2048   # big enough to reach the GEMM plateau
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    reps = 3 if quick else 7
    with _TF32(False):
        timer.wall(lambda: torch.matmul(a, b))
        t = statistics.median(timer(lambda: torch.matmul(a, b)) for _ in range(reps))
    numel = 16 << 20    # 64 MiB
    return {"sgemm_n": n, "sgemm_gflops": 2 * n ** 3 / t / 1e9, "sgemm_ms": t * 1e3,
            "copy_bytes": 2 * numel * 4, "copy_gbps": measure_copy(numel, device, timer, reps),
            "copy_gbps_at": {}}


# --------------------------------------------------------------------------------------------
# Machine info
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def slug(text: str) -> str:
    """Lower-case, dash-separated file-system name: 'AMD EPYC 7B13' -> 'amd-epyc-7b13'."""
    s = re.sub(r"\((r|tm)\)|cpu @.*|\bprocessor\b|\bwith\b.*", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "unknown"


def machine_info(device: torch.device) -> Dict[str, object]:
    """Everything a reader needs to place the numbers: hardware, threads, versions, date."""
    import numba
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _numba_threading_layer(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "device": str(device),
        "gpu_name": None,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "cudnn_benchmark": None,
        "convkit_git": _git_rev(),
        "numpy_blas": _numpy_blas(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                "OPENBLAS_NUM_THREADS",
                                                "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
                                                "OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES")
                if os.environ.get(k) is not None},
    }
    try:
        import convkit
        info["convkit"] = getattr(convkit, "__version__", None)
    except ImportError:
        info["convkit"] = None
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return info


def _numpy_blas() -> Optional[str]:
    """numpy's BLAS (im2col's GEMMs run there), e.g. 'scipy-openblas 0.3.31'."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy: no mode= or other keys
        return None


def _numba_threading_layer() -> Optional[str]:
    import numba
    try:
        return numba.threading_layer()
    except ValueError:     # no parallel function has run yet
        return None


def _git_rev() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --------------------------------------------------------------------------------------------
# Report: terminal table, markdown, JSON, PNG
# --------------------------------------------------------------------------------------------
def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def _ms(v: float) -> str:
    """Milliseconds to 4 significant digits, never in exponent form."""
    return f"{v:.0f}" if v >= 1e4 else f"{v:.4g}"


def _ratio(v: float) -> str:
    """A time ratio to 3 significant digits, never in exponent form."""
    return f"{v:.0f}" if v >= 1e3 else f"{v:.4f}" if v < 1e-3 else f"{v:.3g}"


def progress_line(i: int, total: int, row: dict) -> str:
    """One line per measured row, printed as it finishes."""
    width = len(str(total))
    head = f"[{i:>{width}}/{total}] {row['shape']:<16} {row['op']:<15} {row['impl']:<10}"
    if row["status"] != "ok":
        return f"{head} {row['status']}{': ' + row['note'] if row['note'] else ''}"
    spread = f"({_ms(row['q1_ms'])}-{_ms(row['q3_ms'])})"
    rate = (f"{row['gflops']:7.1f} GFLOP/s" if row["gflops"] is not None else
            f"{row['gbps']:7.1f} GB/s   " if row["gbps"] is not None else " " * 15)
    roof = f"{row['roof_pct']:5.1f}% roof" if row["roof_pct"] is not None else " " * 10
    ratio = f"{_ratio(row['ratio']):>7}x" if row["ratio"] is not None else " " * 8
    auto = f" auto->{row['auto_choice']}" if row["auto_choice"] else ""
    first = f"first {row['first_call_ms']:8.1f} ms"
    return f"{head} {_ms(row['median_ms']):>9} ms {spread:<17} {first} {ratio} {rate} {roof}{auto}"


def _impl_columns(rows: Sequence[dict]) -> List[str]:
    order = ["torch", "torch-tf32", "direct", "im2col", "auto", "convkit"]
    present = {r["impl"] for r in rows}
    return [c for c in order if c in present]


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return "n/a" if row["status"] == "skipped" else row["status"]
    cell = _ms(row["median_ms"])
    if row["ratio"] is not None:
        cell += f" ({_ratio(row['ratio'])}x)"
    return cell


def summary_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """One line per (shape, op): median ms per implementation with the ratio to torch in
    brackets, the best convkit GFLOP/s (or GB/s) and % of the roof, and what auto chose.
    Ops with the same implementations share a table (conv/train apart from ReLU/pool)."""
    keys: List[Tuple[str, str]] = []
    by_key: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for r in rows:
        key = (r["shape"], r["op"])
        if key not in by_key:
            keys.append(key)
            by_key[key] = {}
        by_key[key][r["impl"]] = r
    tables: Dict[Tuple[str, ...], List[List[str]]] = {}
    for key in keys:
        group = by_key[key]
        cols = tuple(_impl_columns(list(group.values())))
        convkit = [r for r in group.values() if not r["impl"].startswith("torch")
                   and r["status"] == "ok"]
        best = min(convkit, key=lambda r: r["median_ms"]) if convkit else None
        if best is None:
            best_s = ""
        elif best["gflops"] is not None:
            best_s = (f"{best['gflops']:.1f} GFLOP/s ({_fmt(best['roof_pct'], '.0f')}%) "
                      f"{best['impl']}")
        elif best["gbps"] is not None:
            best_s = (f"{best['gbps']:.1f} GB/s ({_fmt(best['roof_pct'], '.0f')}%) "
                      f"{best['impl']}")
        else:
            best_s = best["impl"]
        auto = (group.get("auto") or {}).get("auto_choice") or ""
        tables.setdefault(cols, []).append(
            [key[0], key[1], *[_cell(group.get(c)) for c in cols], best_s, auto])
    out = []
    for cols, lines in tables.items():
        header = ["shape", "op", *[f"{c} ms" for c in cols], "best convkit", "auto chose"]
        if markdown:
            out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            out += ["| " + " | ".join(line) + " |" for line in lines]
        else:
            widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            out += [fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                    *[fmt.format(*line).rstrip() for line in lines]]
        out.append("")
    return "\n".join(out).rstrip("\n")


def detail_table(rows: Sequence[dict]) -> str:
    """Markdown table with every field a reader may want per row."""
    header = ["shape", "op", "impl", "median ms", "IQR ms", "min-max ms", "first call ms",
              "ratio", "ratio of mins", "GFLOP/s", "GB/s", "% roof", "auto chose", "rel err",
              "level"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [r["shape"], r["op"], r["impl"],
                 _ms(r["median_ms"]) if ok else r["status"],
                 f"{_ms(r['q1_ms'])}-{_ms(r['q3_ms'])}" if ok else "",
                 f"{_ms(r['min_ms'])}-{_ms(r['max_ms'])}" if ok else "",
                 _fmt(r["first_call_ms"], ".1f", ""),
                 "" if r["ratio"] is None else _ratio(r["ratio"]),
                 "" if r["ratio_min"] is None else _ratio(r["ratio_min"]),
                 _fmt(r["gflops"], ".1f", ""), _fmt(r["gbps"], ".1f", ""),
                 _fmt(r["roof_pct"], ".1f", ""), r["auto_choice"] or "",
                 _fmt(r["max_rel_error"], ".1e", ""), r["level"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def target_checks(rows: Sequence[dict]) -> List[Tuple[str, str, str]]:
    """The speed targets of the CPU-speed issue, checked on this run's rows.

    Returns (target, measured, "yes" / "no") for every target whose rows were measured; ratios
    are ``algorithm="auto"`` against torch, as a user would run convkit.
    """
    get = {(r["shape"], r["op"], r["impl"]): r for r in rows if r["status"] == "ok"}

    def ratio(shape, op, impl="auto"):
        r = get.get((shape, op, impl))
        return None if r is None else r["ratio"]

    checks = []

    def check(target, values, ok):
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            shown = ", ".join(f"{k} {_ratio(v)}x" if k != "roof" else f"{v:.0f}% roof"
                              for k, v in values.items())
            checks.append((target, shown, "yes" if all(ok(v) for v in values.values())
                           else "no"))

    check("SimpleCNN training step <= 1.0x torch (stretch 0.8x)",
          {"train_step": ratio("simplecnn-train", "train_step")}, lambda v: v <= 1.0)
    check("SimpleCNN conv layers, fwd+bwd <= 1.5x torch",
          {"conv1": ratio("simplecnn-conv1", "conv_fwd_bwd"),
           "conv2": ratio("simplecnn-conv2", "conv_fwd_bwd")}, lambda v: v <= 1.5)
    check("conv1 backward faster than torch",
          {"bwd_input": ratio("simplecnn-conv1", "conv_bwd_input"),
           "bwd_weight": ratio("simplecnn-conv1", "conv_bwd_weight")}, lambda v: v < 1.0)
    check("224x224 3-channel convs faster than torch (fwd+bwd)",
          {"resnet-stem": ratio("resnet-stem", "conv_fwd_bwd"),
           "vgg-first": ratio("vgg-first", "conv_fwd_bwd")}, lambda v: v < 1.0)
    roof = get.get(("resnet-3x3", "conv_fwd", "auto"))
    if roof is not None and roof["roof_pct"] is not None:
        check("ResNet 3x3 (56x56 C64) forward >= 60% of the SGEMM roof",
              {"roof": roof["roof_pct"]}, lambda v: v >= 60)
    misses, total = [], 0
    for (shape, op, impl), r in get.items():
        d, i = get.get((shape, op, "direct")), get.get((shape, op, "im2col"))
        if impl != "auto" or d is None or i is None:
            continue
        total += 1
        best = min(d["median_ms"], i["median_ms"])
        if r["median_ms"] > 1.1 * best:
            misses.append((r["median_ms"] / best, f"{shape} {op}"))
    if total:
        misses.sort(reverse=True)
        worst = ", ".join(f"{name} {_ratio(f)}x" for f, name in misses[:4])
        more = f" and {len(misses) - 4} more" if len(misses) > 4 else ""
        checks.append(("auto within 10% of the faster of direct / im2col",
                       f"{total - len(misses)}/{total} rows" +
                       (f"; worst: {worst}{more}" if misses else ""),
                       "no" if misses else "yes"))
    return checks


def targets_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """``target_checks`` as a table (empty string when no target's rows were measured)."""
    checks = target_checks(rows)
    if not checks:
        return ""
    if markdown:
        return "\n".join(["| target | measured | met |", "|---|---|---|",
                          *[f"| {t} | {m} | {ok} |" for t, m, ok in checks]])
    width = max(len(t) for t, _, _ in checks)
    return "\n".join(f"{t:<{width}}  {ok:<3}  {m}" for t, m, ok in checks)


def _copy_roof_text(roofs: dict) -> str:
    at = roofs.get("copy_gbps_at") or {}
    if not at:
        return "the 64 MiB copy (memory bandwidth; cache-resident activations can exceed it)"
    return "a torch copy of their input size (" + \
        ", ".join(f"{k}: {v:.1f} GB/s" for k, v in at.items()) + ")"


def markdown_report(result: dict) -> str:
    """The committed report: command, machine, roofs, summary and detailed tables."""
    m, roofs = result["machine"], result["roofs"]
    shapes = {}
    for r in result["rows"]:
        shapes.setdefault(r["shape"], r["shape_desc"])
    lines = [
        f"# convkit bench: {result['device_label']}",
        "",
        "Made by:",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- date: {m['date']}; convkit {m['convkit']} (git {m['convkit_git']})",
        f"- CPU: {m['cpu_model']}, {m['cpu_cores']} cores; torch threads {m['torch_threads']}, "
        f"numba threads {m['numba_threads']} ({m['numba_threading_layer']})",
        f"- GPU: {m['gpu_name']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
        f"cudnn.benchmark={m['cudnn_benchmark']})" if m["gpu_name"] else "- GPU: none used",
        f"- torch {m['torch']}, numba {m['numba']}, numpy {m['numpy']} "
        f"(BLAS {m.get('numpy_blas')}), Python {m['python']}",
        f"- run time: {_minutes(result.get('elapsed_s'))}; "
        f"load average before the run: {result['load_avg_start']:.2f} (above ~0.5 other "
        "processes shared the cores and times are noisier)",
        f"- roofs measured in this run: SGEMM {roofs['sgemm_gflops']:.1f} GFLOP/s "
        f"(torch.matmul {roofs['sgemm_n']}x{roofs['sgemm_n']} fp32), "
        f"copy {roofs['copy_gbps']:.1f} GB/s",
        "",
        "Times are medians of repeated calls after warm-up; `(r x)` is the time ratio to the "
        "`torch` column (below 1 = convkit faster). "
        + ("`torch` runs cuDNN with TF32 off; `torch-tf32` with TF32 on. "
           if result["device"] == "cuda" else "`torch` is PyTorch's CPU path (oneDNN). ")
        + "conv GFLOP/s use the exact FLOP count (backward-input and backward-weight each equal "
          "the forward; fwd+bwd is 3x) and % of the SGEMM roof; ReLU/pool report GB/s of bytes "
          "moved and % of " + _copy_roof_text(roofs) + ".",
        "",
        "## Summary",
        "",
        summary_table(result["rows"], markdown=True),
        "",
        "## Speed targets (issue 7), this run",
        "",
        targets_table(result["rows"], markdown=True) or "No target's rows were measured.",
        "",
        "## Shapes",
        "",
        *[f"- `{name}`: {desc}" for name, desc in shapes.items()],
        "",
        "## Every row",
        "",
        "First-call time includes Numba's JIT compile (or cache load) the first time a kernel is "
        "used in the process, and torch's own first-call setup. "
        f"JIT cache: {result.get('jit_cache')}.",
        "",
        detail_table(result["rows"]),
        "",
    ]
    return "\n".join(lines)


def plot_ratios(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Horizontal bar chart: convkit/torch time ratio per (shape, op) and implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    impls = [c for c in _impl_columns(rows) if c != "torch"]
    keys = []
    ratio = {}
    for r in rows:
        key = f"{r['shape']} {r['op']}"
        if key not in keys:
            keys.append(key)
        if r["ratio"] is not None:
            ratio[(key, r["impl"])] = r["ratio"]
    colors = {impl: f"C{j}" for j, impl in enumerate(impls)}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(keys) + 1.5))
    labelled = set()
    for i, key in enumerate(keys):
        present = [impl for impl in impls if (key, impl) in ratio]
        height = 0.8 / max(len(present), 2)
        for j, impl in enumerate(present):
            y = i + (j - (len(present) - 1) / 2) * height
            v = ratio[(key, impl)]
            ax.barh(y, v, height=height, color=colors[impl],
                    label=None if impl in labelled else impl)
            labelled.add(impl)
            ax.text(v, y, f" {_ratio(v)}", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(len(keys) - 0.5, -0.5)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(keys, fontsize=8)
    ax.set_xlabel("time / torch time (log; < 1 = faster than torch)")
    ax.set_title(title or "convkit vs torch")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------
def select_shapes(names: Optional[Sequence[str]], quick: bool) -> list:
    """Shapes by name (or 'quick' / 'all'); default: the quick subset or everything."""
    shapes = all_shapes()
    if not names:
        return [s for s in shapes if s.quick] if quick else shapes
    by_name = {s.name: s for s in shapes}
    picked = []
    for name in names:
        if name in ("quick", "all"):
            picked += [s for s in shapes if s.quick or name == "all"]
        elif name in by_name:
            picked.append(by_name[name])
        else:
            raise SystemExit(f"convkit bench: unknown shape {name!r}; choose from "
                             f"{', '.join(by_name)}, quick, all")
    return list(dict.fromkeys(picked))


def select_ops(names: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """Ops by name or group (conv, relu, pool, train, all)."""
    if not names:
        return OPS
    picked: List[str] = []
    for name in names:
        if name in OP_GROUPS:
            picked += OP_GROUPS[name]
        elif name in OPS:
            picked.append(name)
        else:
            raise SystemExit(f"convkit bench: unknown op {name!r}; choose from "
                             f"{', '.join(OPS)} or a group {', '.join(OP_GROUPS)}")
    return tuple(op for op in OPS if op in picked)


def run_bench(shapes: Sequence, ops: Sequence[str], device: torch.device,
              algorithms: Sequence[str] = ALGORITHMS, settings: Optional[Settings] = None,
              quick: bool = False, out=None) -> dict:
    """Measure every (shape, op) and return the result dict written as JSON."""
    settings = settings or (QUICK_SETTINGS if quick else Settings())
    stream = out or sys.stdout
    timer = Timer(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.2f} before starting: other processes are using "
              "the CPU, so times will be noisy (ratios from one run stay comparable)",
              file=stream, flush=True)
    print(f"convkit bench on {device}: measuring roofs ...", file=stream, flush=True)
    roofs = measure_roofs(device, timer, quick)
    print(f"  SGEMM {roofs['sgemm_gflops']:.1f} GFLOP/s, copy {roofs['copy_gbps']:.1f} GB/s",
          file=stream, flush=True)
    plan = [(s, op) for s in shapes for op in ops_for(s) if op in ops]
    tf32 = device.type == "cuda"
    total = sum(1 + (min(len(algorithms), 1) if isinstance(s, PlaneShape)
                     else tf32 + len(algorithms))
                for s, _ in plan)
    rows: List[dict] = []
    i = 0
    for shape, op in plan:
        if isinstance(shape, PlaneShape) and shape.name not in roofs["copy_gbps_at"]:
            roofs["copy_gbps_at"][shape.name] = measure_copy(
                math.prod(shape.input_shape), device, timer)
        cases = build_cases(shape, op, device, algorithms)
        group: List[dict] = []
        needs: List[int] = []
        reference = None
        for case in cases:
            try:
                if settings.interleave:
                    row, first, need = prepare(case, timer, settings,
                                               None if case.is_torch else reference)
                else:
                    (row, first), need = measure(case, timer, settings,
                                                 None if case.is_torch else reference), 0
            except Exception as e:  # one broken kernel must not hide the other rows
                row, first, need = new_row(case), None, 0
                row["status"] = "error"
                row["note"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            if case.impl == "torch":
                reference = first   # every convkit row is checked against torch's output
            group.append(row)
            needs.append(need)
            if not settings.interleave:
                i += 1
                _finish_group([row], group, roofs)
                print(progress_line(i, total, row), file=stream, flush=True)
        if settings.interleave:
            try:
                measure_interleaved(cases, group, needs, timer, settings)
            except Exception as e:
                for row in group:
                    if row["status"] == "ready":
                        row["status"], row["note"] = "error", f"{type(e).__name__}: {e}"[:200]
            _finish_group(group, group, roofs)
            for row in group:
                i += 1
                print(progress_line(i, total, row), file=stream, flush=True)
        rows += group
        del cases, reference
    return {"schema": 1, "device": device.type, "quick": quick, "rows": rows, "roofs": roofs,
            "load_avg_start": load,
            "settings": vars(settings), "algorithms": list(algorithms), "ops": list(ops)}


def _finish_group(todo: Sequence[dict], group: Sequence[dict], roofs: Dict[str, float]) -> None:
    torch_row = next((r for r in group if r["impl"] == "torch"), None)
    tf32_row = next((r for r in group if r["impl"] == "torch-tf32"), None)
    for row in todo:
        finish_row(row, torch_row, tf32_row, roofs)


def _detach(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    return tuple(None if t is None else t.detach().clone() for t in out)


def device_label(device: torch.device) -> str:
    """'cpu-amd-epyc-7b13' or 'cuda-nvidia-h100-80gb-hbm3': names a results directory."""
    if device.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(device))
    return "cpu-" + slug(cpu_model())


# the README shows the SimpleCNN rows; the report linked from it has every shape
README_SHAPES = ("simplecnn",)


def _minutes(seconds: Optional[float]) -> str:
    return "several minutes" if not seconds else f"{seconds / 60:.0f} minutes"


def update_readme(path: str, result: dict, report_path: Optional[str]) -> None:
    """Replace the README section between the bench markers (append it if missing)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    m = result["machine"]
    where = m["gpu_name"] or m["cpu_model"]
    body = "\n".join([
        start,
        "## Benchmarks",
        "",
        f"convkit vs PyTorch on {where} ({m['torch_threads']} threads, torch {m['torch']}, "
        f"numba {m['numba']}, {m['date'][:10]}); time in ms, ratio to torch in brackets "
        "(below 1 = convkit faster). SimpleCNN's layers and training step here; every shape "
        "(ResNet, VGG, strided, dilated, depthwise, 1x1) is in the full report."
        + (f" Full report: [{report_path}]({report_path})." if report_path else ""),
        "",
        summary_table([r for r in result["rows"] if r["shape"].startswith(README_SHAPES)],
                      markdown=True),
        "",
        "Speed targets (issue 7), same run:",
        "",
        targets_table(result["rows"], markdown=True) or "(no target's rows in this run)",
        "",
        "Reproduce (about a minute with `--quick`; the full table took "
        f"{_minutes(result.get('elapsed_s'))} here):",
        "",
        "```",
        "convkit bench --quick                                   # terminal table only",
        "convkit bench --report benchmarks/results --readme README.md   # full report + this table",
        "pytest benchmarks/ --benchmark-only                     # pytest-benchmark suites",
        "```",
        "",
        f"This table was made by `{result['command']}`.",
        end,
    ])
    text = open(path).read() if os.path.exists(path) else ""
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    with open(path, "w") as f:
        f.write(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convkit bench",
        description="Time convkit's conv2d / ReLU / max-pool kernels and a SimpleCNN training "
                    "step against PyTorch (oneDNN on CPU, cuDNN on GPU) on a named shape table.")
    p.add_argument("--quick", action="store_true",
                   help="the quick subset of shapes and shorter timing (about a minute on 2 cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ops", nargs="+", metavar="OP",
                   help=f"ops or groups to run (default all): {', '.join(OPS)}; groups "
                        f"{', '.join(OP_GROUPS)}; comma-separated also works")
    p.add_argument("--shapes", nargs="+", metavar="NAME",
                   help="shape names from the table (default: all, or the quick subset); "
                        f"{', '.join(s.name for s in all_shapes())}")
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
    return p


_COLD_ENV = "CONVKIT_BENCH_COLD_CHILD"


def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``convkit bench`` (and ``python -m convkit.bench``). Returns the exit code:
    0, or 1 when any row failed validation or raised."""
    args = build_parser().parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = "python -m convkit.bench" if main_spec is not None and \
        main_spec.name == "convkit.bench" else "convkit bench"
    command = " ".join([prog, *(shlex.quote(a) for a in argv_used)])
    if args.cold_jit and os.environ.get(_COLD_ENV) != "1":
        # NUMBA_CACHE_DIR is read when numba is imported, so the run happens in a child process
        import tempfile
        with tempfile.TemporaryDirectory(prefix="convkit-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, **{_COLD_ENV: "1"})
            return subprocess.run([sys.executable, "-m", "convkit.bench", *argv_used],
                                  env=env).returncode
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        return _write_outputs(args, result, result["command"])
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
    if args.threads:
        import numba
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
    result["machine"] = machine_info(device)
    result["jit_cache"] = "cold (empty NUMBA_CACHE_DIR)" if args.cold_jit else \
        "warm (Numba's on-disk cache used when present)"
    if device.type == "cuda":
        result["machine"]["cudnn_benchmark"] = True
    return _write_outputs(args, result, command)


def _write_outputs(args: argparse.Namespace, result: dict, command: str) -> int:
    """Print the summary, write the requested files; 1 if any row failed or raised."""
    print()
    print(summary_table(result["rows"]))
    targets = targets_table(result["rows"])
    if targets:
        print("\nspeed targets (auto vs torch):\n" + targets)
    failed = [r for r in result["rows"] if r["status"] in ("FAILED validation", "error")]
    for r in failed:
        why = r["note"] if r["status"] == "error" else \
            f"max rel error {r['max_rel_error']:.2e} > {r['tolerance']:.0e}"
        print(f"{r['status']}: {r['shape']} {r['op']} {r['impl']} ({why})")

    outputs = {"json": args.json, "plot": args.plot, "markdown": args.markdown}
    report_md = None
    if args.report:
        folder = os.path.join(args.report, result["device_label"])
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, "quick" if result["quick"] else "full")
        outputs = {"json": outputs["json"] or stem + ".json",
                   "plot": outputs["plot"] or stem + ".png",
                   "markdown": outputs["markdown"] or stem + ".md"}
        with open(stem + ".cmd", "w") as f:
            f.write(command + "\n")
        report_md = outputs["markdown"]
    if outputs["json"]:
        with open(outputs["json"], "w") as f:
            json.dump(_finite(result), f, indent=1, default=str)
            f.write("\n")
    if outputs["markdown"]:
        with open(outputs["markdown"], "w") as f:
            f.write(markdown_report(result))
    if outputs["plot"]:
        try:
            plot_ratios(result["rows"], outputs["plot"],
                        f"convkit / torch time, {result['device_label']}")
        except ImportError as e:
            print(f"no plot ({e}); pip install matplotlib for the PNG")
            outputs["plot"] = None
    if args.readme:
        rel = os.path.relpath(report_md, os.path.dirname(os.path.abspath(args.readme)) or ".") \
            if report_md else None
        update_readme(args.readme, result, rel)
    for kind, path in outputs.items():
        if path:
            print(f"wrote {kind}: {path}")
    return 1 if failed else 0


def _finite(v):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


if __name__ == "__main__":
    sys.exit(main())
