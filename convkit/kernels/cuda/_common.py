"""Shared pieces of the numba.cuda kernels: argument conversion, output allocation, the one
launch-configuration helper, per-dtype kernel specialisation and two small utility kernels.

Torch-free. Every public kernel function in this package launches asynchronously on the
``stream`` it is given (0 = the legacy default stream); a caller that times or reads results on
the host synchronises first (``numba.cuda.synchronize()`` or ``stream.synchronize()``).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from numba import cuda
from numba.core import config as numba_config
from numba.np import numpy_support

from convkit.kernels.cuda._report import BOOL, INT, KernelSpec, array, dtype_name
from convkit.kernels.shapes import ceil_div

# Threads per block of the element-wise / grid-stride kernels: a multiple of the 32-thread warp,
# small enough that several blocks share an SM.
THREADS_1D = 256
# Blocks of a grid-stride kernel are capped here (about 32 per SM on a 132-SM H100); each thread
# then loops, which keeps index arithmetic in int64-safe ranges for any tensor size.
MAX_BLOCKS_1D = 4096

_allocator: Optional[Callable] = None


def set_allocator(alloc: Optional[Callable]) -> None:
    """Route output allocation through ``alloc(shape, dtype, stream) -> device array``.

    ``convkit._cuda`` installs torch's caching allocator here so outputs cost no cudaMalloc and
    are stream-ordered like torch's own tensors; ``None`` restores ``numba.cuda.device_array``.
    """
    global _allocator
    _allocator = alloc


def empty(shape: Sequence[int], dtype, stream=0):
    """An uninitialised device array of ``shape`` and ``dtype``, ordered on ``stream``."""
    shape = tuple(int(s) for s in shape)
    if _allocator is not None:
        return _allocator(shape, np.dtype(dtype), stream)
    return cuda.device_array(shape, dtype=dtype, stream=stream)


def zeros(shape: Sequence[int], dtype, stream=0):
    """A zero-filled device array (filled by a kernel on ``stream``, no host copy)."""
    a = empty(shape, dtype, stream)
    if a.size:
        flat = a.reshape(a.size)
        grid, block = launch_config((a.size,))
        _fill_kernel(flat.dtype.char)[grid, block, stream](flat, 0)
    return a


def as_device(a):
    """A numba device array viewing ``a`` (a device array or any ``__cuda_array_interface__``).

    No copy and no synchronisation: the caller launches on the stream that produced ``a``.
    """
    if a is None or cuda.devicearray.is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a, sync=False)
    if isinstance(a, np.ndarray) and numba_config.ENABLE_CUDASIM:
        return cuda.to_device(a)
    raise TypeError(f"expected a CUDA device array (numba device array or an object with "
                    f"__cuda_array_interface__), got {type(a).__name__}")


def flat(a):
    """The 1-D view of a C-contiguous device array."""
    return a.reshape(a.size)


def launch_config(extent: Tuple[int, ...], block: Optional[Tuple[int, ...]] = None,
                  max_blocks: Optional[int] = None) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(grid, block) covering ``extent`` threads, x first (x indexes the contiguous axis).

    ``extent`` has one entry per block dimension plus optionally a last entry for grid z, which
    counts blocks directly. A 1-D extent with no block gives a grid-stride launch of THREADS_1D
    threads capped at MAX_BLOCKS_1D blocks. Cached: the same conv shape on every training step
    costs one dict lookup.
    """
    if block is None:
        block = (THREADS_1D,)
    return _launch_config(tuple(extent), tuple(block),
                          MAX_BLOCKS_1D if max_blocks is None else max_blocks)


@functools.lru_cache(maxsize=4096)
def _launch_config(extent, block, max_blocks):
    if len(block) == 1 and len(extent) == 1:
        return (max(1, min(ceil_div(extent[0], block[0]), max_blocks)),), block
    grid = tuple(max(1, ceil_div(e, b)) for e, b in zip(extent, block))
    if len(extent) > len(block):
        grid += (max(1, extent[len(block)]),)
    return grid, block


def numba_type(dtype):
    """The numba scalar type of a numpy dtype (or dtype character)."""
    return numpy_support.from_dtype(np.dtype(dtype))


def specialise(factory: Callable) -> Callable:
    """Cache a kernel factory per dtype character: shared/local arrays need a compile-time type."""
    return functools.lru_cache(maxsize=None)(factory)


@specialise
def _fill_kernel(dtype_char):
    @cuda.jit
    def fill(a, value):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, a.size, step):
            a[i] = value
    return fill


@specialise
def _sum_splits_kernel(dtype_char):
    @cuda.jit
    def sum_splits(part, S, out, accumulate):
        """out[e] (+)= sum_{s < S} part[s*E + e], s in order: deterministic."""
        E = out.size
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, E, step):
            acc = part[e]
            for s in range(1, S):
                acc += part[s * E + e]
            if accumulate:
                out[e] += acc
            else:
                out[e] = acc
    return sum_splits


def sum_splits(part, S: int, out, accumulate: bool, stream=0) -> None:
    """out (+)= part.reshape(S, -1).sum(0) in a fixed order (flat device arrays)."""
    grid, block = launch_config((out.size,))
    _sum_splits_kernel(out.dtype.char)[grid, block, stream](part, S, out, accumulate)


def kernel_specs(dtype) -> list:
    """The two utility kernels at their launch signatures (see ``_report``)."""
    a, name = array(dtype), dtype_name(dtype)
    return [
        KernelSpec(f"fill_{name}", _fill_kernel(np.dtype(dtype).char), (a, INT), THREADS_1D, 0,
                   "memory"),
        KernelSpec(f"sum_splits_{name}", _sum_splits_kernel(np.dtype(dtype).char),
                   (a, INT, a, BOOL), THREADS_1D, 0, "memory"),
    ]


@functools.lru_cache(maxsize=None)
def _dummy_cache(dtype_char):
    return cuda.device_array(1, dtype=np.dtype(dtype_char))


def dummy(dtype):
    """A 1-element device array standing in for an absent optional argument (bias=None)."""
    return _dummy_cache(np.dtype(dtype).char)


def split_count(N: int, blocks_per_split: int, target_blocks: int) -> Tuple[int, int]:
    """(S, per): split N items into S chunks of ``per`` so S*blocks_per_split ~ target_blocks."""
    S = max(1, min(N, math.ceil(target_blocks / max(1, blocks_per_split))))
    per = ceil_div(N, S)
    return ceil_div(N, per), per


__all__ = ["THREADS_1D", "MAX_BLOCKS_1D", "set_allocator", "empty", "zeros",
           "as_device", "flat", "launch_config", "numba_type", "specialise", "sum_splits",
           "dummy", "split_count", "ceil_div", "kernel_specs"]
