"""Scratch buffers kept between calls, one set per Python thread (like cuDNN's workspace).

A fresh multi-megabyte numpy array comes from fresh pages, and touching them costs page faults:
measured here, SimpleCNN's conv2 forward + backward took ~28-30 ms with its unfold buffers and
weight-gradient partials allocated per call and noticeably less with them reused (the whole
training step 60 -> 50 ms when nothing is handed back to the OS). Buffers only grow; the largest
are bounded by IM2COL_BLOCK_BYTES per worker and PARTIALS_BYTES.
"""
import threading

import numpy as np

_local = threading.local()


def _numpy_empty(shape, dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


# allocator of the arrays kernels return (outputs, gradients, pool indices); see
# set_output_allocator
_output_empty = _numpy_empty


def empty(shape, dtype) -> np.ndarray:
    """A new uninitialised C-contiguous array for a kernel's result, from the output allocator."""
    return _output_empty(shape, np.dtype(dtype))


def set_output_allocator(fn=None) -> None:
    """Allocate kernel results with ``fn(shape: tuple, dtype: numpy.dtype) -> ndarray`` (a new
    C-contiguous array each call); None restores ``numpy.empty``.

    ``convkit.autograd`` installs torch's CPU allocator here. Numpy marks arrays of 4 MiB and
    more MADV_HUGEPAGE, and in a training step those pages come back fresh every time:
    measured here, ReLU forward on SimpleCNN's conv1 output took 1.9-2.9 ms inside the step on
    numpy's arrays (about 500 page faults a call) and 0.55-0.74 ms on torch's, whose freed blocks
    glibc hands out again (0.2 ms when its memory is warm).
    """
    global _output_empty
    _output_empty = _numpy_empty if fn is None else fn


def scratch(name: str, n: int, dtype) -> np.ndarray:
    """A 1-D array of ``n`` elements of ``dtype``, reused by later calls with the same ``name``
    from this thread (contents undefined)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (name, np.dtype(dtype))
    buf = buffers.get(key)
    if buf is None or buf.size < n:
        buf = buffers[key] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n]


def release() -> None:
    """Drop this thread's buffers."""
    _local.__dict__.pop("buffers", None)
