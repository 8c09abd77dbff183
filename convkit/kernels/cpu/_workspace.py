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
