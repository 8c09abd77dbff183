"""Run Numba's parallel loops on the process's OpenMP pool (torch's) instead of a second pool.

Why: torch's CPU ops run on torch's OpenMP (libgomp) workers, and after every torch op those
workers spin-wait for several milliseconds (libgomp's default spin count) before they sleep.
Numba threads started in that window share the cores with them: measured here, max-pool forward
right after a torch.mm took 6.3 ms instead of 4.1 ms, an im2col conv 10 ms instead of 6 ms, and
SimpleCNN's training step lost up to a quarter of its time that way. Run on the same pool, the
spinning workers are simply the ones that pick the work up.

How: Numba's parallel loops (prange) call an external function ``numba_parallel_for`` that the
threading layer registers with LLVM (``numba.np.ufunc.parallel._launch_threads``), and reductions
ask ``get_thread_id``. :func:`install` registers its own two, built here as Numba cfuncs:
``parallel_for`` opens an OpenMP team with ``GOMP_parallel`` of the given libgomp and gives each
thread its share of the schedule chunks, exactly as Numba's own OpenMP layer (omppool.cpp) does;
``get_thread_id`` is that libgomp's ``omp_get_thread_num``. Everything else of the threading
layer (thread counts, scheduling) stays Numba's workqueue layer. Kernels linked after install
(compiled or loaded from Numba's cache) use the OpenMP pool; call install before the first
parallel kernel runs.

This module does not import torch: the engine (``convkit.engine.cpu``) names torch's libgomp
(:func:`find_openmp_runtime`) when torch's parallel backend is OpenMP, and ``convkit.runtime.setup``
installs it on the first parallel kernel launch. CONVKIT_OPENMP=0 turns it off. The cfuncs
(``convkit.runtime._gomp_team``) reach libgomp through symbols bound here, so Numba caches them.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

_installed: Optional[str] = None
_lock = threading.Lock()
_keep = []  # the cfuncs and ctypes objects whose addresses LLVM holds


def find_openmp_runtime(prefer: str = "torch") -> Optional[str]:
    """Path of a loaded libgomp, preferring one whose path contains ``prefer``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps
                            if "libgomp" in os.path.basename(line.split()[-1])})
    except OSError:
        return None
    preferred = [p for p in paths if prefer in p]
    return (preferred or paths or [None])[0]


def installed() -> Optional[str]:
    """The libgomp whose pool runs Numba's parallel loops, or None (Numba's own layer)."""
    return _installed


def install(path: Optional[str]) -> bool:
    """Route Numba's parallel loops through ``GOMP_parallel`` of the libgomp at ``path``."""
    global _installed
    if path is None or os.environ.get("CONVKIT_OPENMP", "1") == "0":
        return False
    with _lock:
        if _installed is not None:
            return _installed == path
        try:
            gomp = ctypes.CDLL(path)
            gomp_parallel, thread_num, num_threads = (
                gomp.GOMP_parallel, gomp.omp_get_thread_num, gomp.omp_get_num_threads)
        except (OSError, AttributeError):
            return False
        gomp_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        gomp_parallel.restype = None
        for fn in (thread_num, num_threads):
            fn.argtypes, fn.restype = [], ctypes.c_int
        parallel_for, get_thread_id = _build(gomp_parallel, thread_num, num_threads)

        import llvmlite.binding as llvm
        from numba.np.ufunc import parallel as numba_parallel

        numba_parallel._launch_threads()  # Numba registers its layer first; ours replaces it
        llvm.add_symbol("numba_parallel_for", parallel_for.address)
        llvm.add_symbol("get_thread_id", get_thread_id.address)
        _keep.extend([gomp, gomp_parallel, thread_num, num_threads, parallel_for,
                      get_thread_id])
        _installed = path
        return True


def _build(gomp_parallel, thread_num, num_threads):
    """The two cfuncs (``convkit.runtime._gomp_team``), bound to this libgomp's functions."""
    import llvmlite.binding as llvm

    for name, fn in (("convkit_GOMP_parallel", gomp_parallel),
                     ("convkit_omp_get_thread_num", thread_num),
                     ("convkit_omp_get_num_threads", num_threads)):
        llvm.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)
    from convkit.runtime import _gomp_team as gomp_team

    return gomp_team.parallel_for, gomp_team.get_thread_id
