"""Validate, then time: the measuring half of ``convkit bench`` (llm.c's harness pattern).

A :class:`Case` is one call to time. Each row is set up, called once (timed on its own as the
*first call*, which includes Numba's JIT compile or cache load the first time a kernel is used in
the process), checked against torch's output on the same tensors, warmed up, and only then timed
(:func:`measure`, or :func:`measure_interleaved` for alternating rounds). A row that fails the
check is reported and never timed. GPU times come from CUDA events with the L2 cache flushed
before each repetition.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# Relative error (max |a - b| over max |reference|) accepted before a row is timed. fp32 sums of
# up to ~10^5 products (backward-weight) stay near 1e-5; a wrong kernel is off by O(1).
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}


def _nothing() -> None:
    pass


@dataclass
class Case:
    """One thing to time. ``run()`` does one call and returns its output (tensors)."""

    shape: object
    op: str
    impl: str               # "torch", "torch-tf32", "direct", "im2col", "auto", "convkit"
    run: Callable[[], object]
    # "functional": one call of the public API; "autograd": torch.autograd.grad through a graph
    # of public-API calls built by setup(); "model": a whole training step
    level: str
    flops: Optional[int] = None
    bytes: Optional[int] = None
    choice: Optional[Callable[[], str]] = None   # what auto ran, asked after timing
    note: str = ""
    setup: Callable[[], None] = _nothing   # once, untimed, before the first call
    tf32: bool = False

    @property
    def is_torch(self) -> bool:
        return self.impl.startswith("torch")


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if t is not None]


def _detach(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    return tuple(None if t is None else t.detach().clone() for t in out)


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


class TF32:
    """Context manager: TF32 on or off for cuDNN convolutions and cuBLAS matmuls."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = self.on
        torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


ROW_FIELDS = ("shape", "shape_desc", "op", "impl", "level", "status", "note", "median_ms",
              "q1_ms", "q3_ms", "min_ms", "max_ms", "reps", "first_call_ms", "ratio",
              "ratio_min", "ratio_tf32", "flops", "gflops", "bytes", "gbps", "roof_pct",
              "auto_choice", "max_rel_error", "tolerance")


def new_row(case: Case) -> Dict[str, object]:
    """A report row for ``case`` with every field of ``ROW_FIELDS``, not yet measured."""
    row = dict.fromkeys(ROW_FIELDS)
    row.update(shape=case.shape.name, shape_desc=case.shape.describe(), op=case.op,
               impl=case.impl, level=case.level, note=case.note, flops=case.flops,
               bytes=case.bytes)
    return row


def first_call(case: Case, timer: Timer, reference=None) -> Tuple[float, object, Optional[float]]:
    """Set ``case`` up (untimed), then call it once: (wall seconds, detached output, max
    relative error vs ``reference``).

    The error is None when there is no reference (torch rows) or the row runs TF32.
    """
    with TF32(case.tf32):
        case.setup()
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
    seconds, out, err = first_call(case, timer, reference)
    row["first_call_ms"] = seconds * 1e3
    if err is not None:
        row["max_rel_error"], row["tolerance"] = err, TOLERANCE[torch.float32]
        if not err <= row["tolerance"]:
            row["status"] = "FAILED validation"
            return row, None, 0
    with TF32(case.tf32):
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
    with TF32(case.tf32):
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
            with TF32(cases[j].tf32):
                times[j].append(timer(cases[j].run))
        rnd += 1
    for j in live:
        finish_timing(rows[j], cases[j], times[j])


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
