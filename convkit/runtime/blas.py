"""GEMMs for the im2col kernels: numpy's BLAS, one thread per call, split across a small pool.

numpy's OpenBLAS keeps its own thread pool, which spin-waits between calls; next to torch's
OpenMP pool and Numba's workers on a 2-core machine the three pools steal each other's cores
(measured here: SimpleCNN's training step with im2col convs 144 ms with OpenBLAS' default
threads, 53 ms with one). So convkit runs each BLAS call single-threaded (OpenBLAS' thread count
is set to 1 for the duration of a convkit GEMM batch and restored afterwards) and gets its
parallelism by splitting the work into independent GEMMs (Numba workers calling ``cblas_?gemm``
by address, or numpy.matmul from a thread pool: BLAS releases the GIL). Where numpy's BLAS is not
OpenBLAS the thread count is left alone. The thread count is process-wide in OpenBLAS: another
Python thread's numpy call that overlaps a convkit GEMM batch runs single-threaded too.
CONVKIT_BLAS_ONE_THREAD=0 leaves OpenBLAS' thread count alone (then expect oversubscription).
Even a batch that is one GEMM block (one worker: a single image of small planes) stays on one
OpenBLAS thread: given two, ResNet-18's layer 4 at N=2 (then one block) ran 0.56x its time
alone, but a whole ResNet-18 step
(torchvision, N2 224^2, bench --model on a quiet 2-core Zen 4) went from 1.47x torch to 2.16x,
every later op sharing its cores with OpenBLAS' spinning threads.
Nothing is looked up at import: the libraries are found on the first GEMM.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba

import convkit.runtime as runtime

_pool = None
_pool_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _openblas_libraries():
    """The OpenBLAS shared libraries loaded in this process (numpy's), opened with ctypes."""
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before looking for it)

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps
                            if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return []
    libs = []
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return tuple(libs)


@functools.lru_cache(maxsize=None)
def _openblas_threads():
    """(get, set) for the thread count of the OpenBLAS loaded by numpy, or (None, None)."""
    for lib in _openblas_libraries():
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                return get, put
    return None, None


@functools.lru_cache(maxsize=None)
def _cblas_gemm():
    """{numpy dtype char ("f", "d"): address} of numpy's ILP64 OpenBLAS cblas_sgemm / cblas_dgemm,
    called from Numba kernels (see ``_native.cblas_gemm``); empty when numpy's BLAS is not such a
    build."""
    found = {}
    for lib in _openblas_libraries():
        for char, blas_char in (("f", "s"), ("d", "d")):
            for name in (f"scipy_cblas_{blas_char}gemm64_", f"cblas_{blas_char}gemm64_"):
                fn = getattr(lib, name, None)
                if fn is not None and char not in found:
                    found[char] = ctypes.cast(fn, ctypes.c_void_p).value
    return found


def gemm_address(dtype_char: str):
    """Address of numpy's ILP64 ``cblas_?gemm`` for numpy dtype char "f" or "d", or None (then
    the im2col kernels use their numpy.matmul pipeline)."""
    return _cblas_gemm().get(dtype_char)


@contextmanager
def single_threaded():
    """OpenBLAS at one thread for the duration (restored after); see the module docstring."""
    get_threads, set_threads = _openblas_threads()
    if set_threads is None or not runtime.enabled("CONVKIT_BLAS_ONE_THREAD"):
        yield
        return
    before = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS,
                                       thread_name_prefix="convkit-gemm")
        return _pool


def workers(flops: int) -> int:
    """Threads worth using for a GEMM batch of ``flops``: one below ~4 MFLOP."""
    return 1 if flops < (1 << 22) else numba.get_num_threads()


def run(tasks) -> list:
    """Run zero-argument callables (each doing BLAS work) in parallel, BLAS single-threaded."""
    with single_threaded():
        if len(tasks) == 1:
            return [tasks[0]()]
        return list(_executor().map(lambda t: t(), tasks))
