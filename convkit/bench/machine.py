"""What the numbers were measured on: the machine and software (:func:`environment`), and what
that machine can do in this run (:func:`measure_roofs`: SGEMM and copy rates).

:func:`environment` is also what ``convkit train`` records in its metrics.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
from typing import Dict, Optional

import numba
import numpy as np
import torch

import convkit
from convkit.bench.harness import TF32, Timer


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


def device_label(device: torch.device) -> str:
    """'cpu-amd-epyc-7b13' or 'cuda-nvidia-h100-80gb-hbm3': names a results directory."""
    if device.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(device))
    return "cpu-" + slug(cpu_model())


# environment variables that change thread counts, threading layers or the visible GPUs
_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES")


def environment(device: torch.device) -> Dict[str, object]:
    """Everything a reader needs to place a measurement: hardware, threads, versions, date."""
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": _numba_threads(),
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
        "env": {k: os.environ[k] for k in _ENV_VARS if os.environ.get(k) is not None},
        "convkit": convkit.__version__,
    }
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
    except Exception:  # numpy before 1.26 has no mode=, and the keys vary by build
        return None


def _numba_threads() -> Optional[int]:
    """Numba's thread count, or None before its pool started (asking would start it, before
    convkit's runtime setup chose the threading layer)."""
    from numba.np.ufunc import parallel
    return numba.get_num_threads() if parallel._is_initialized else None


def _numba_threading_layer() -> Optional[str]:
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
    with TF32(False):
        timer.wall(lambda: torch.matmul(a, b))
        t = statistics.median(timer(lambda: torch.matmul(a, b)) for _ in range(reps))
    numel = 16 << 20    # 64 MiB
    return {"sgemm_n": n, "sgemm_gflops": 2 * n ** 3 / t / 1e9, "sgemm_ms": t * 1e3,
            "copy_bytes": 2 * numel * 4, "copy_gbps": measure_copy(numel, device, timer, reps),
            "copy_gbps_at": {}}
