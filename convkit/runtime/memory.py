"""Memory the CPU kernels keep between calls: scratch buffers and a cache of result buffers.

A fresh multi-megabyte array comes from fresh pages, and touching them costs page faults (the
kernel zeroes each page on first touch). glibc hands large freed blocks back to the OS, so in a
training loop every step's activations and gradients came back as fresh pages: measured here
(2-core VM), SimpleCNN's training step took about 1,300 page faults in convkit's kernels per step,
and ReLU backward on conv1's output took 1.5-1.7 ms inside the step against 0.55-0.85 ms on
recycled memory.

- ``scratch``: per-thread buffers (unfolded images, weight-gradient partials) reused by later
  calls, like cuDNN's workspace. They only grow; the largest are bounded by IM2COL_BLOCK_BYTES
  per worker and PARTIALS_BYTES (conv_im2col).
- ``empty``: the arrays kernels return (outputs, gradients, pool indices). Large ones are views of
  cached buffers, each handed out again once nothing refers to it any more: every array (and
  torch tensor, through ``torch.from_numpy``) made from it keeps the buffer referenced, so a
  buffer whose only reference is the cache's own is free (CPython's reference count says so
  exactly). Whenever a new buffer is made, free ones are dropped, least recently used first, so
  that they and the new one stay within CACHE_MAX_FREE_BYTES; ``empty_cache`` drops them all.
  Buffers in use are never capped (they are the caller's results); beyond CACHE_MAX_RECORDS
  buffers of one size alive at once, further results are plain arrays the cache does not track.
  The "only reference" test is sound on CPython with the GIL only: on free-threaded CPython
  (3.13t/3.14t) reference counts of shared objects are deferred and biased, and PyPy has none,
  so there the cache is off (``CACHE_SOUND``) and ``empty`` is ``numpy.empty``.
"""
import os
import sys
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


def refcount_is_exact() -> bool:
    """True where ``sys.getrefcount`` tells exactly who holds an object: CPython with the GIL."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return sys.implementation.name == "cpython" and gil


CACHE_SOUND = refcount_is_exact()

# results of fewer bytes come straight from numpy.empty (small blocks are recycled by malloc)
CACHE_MIN_BYTES = 1 << 18
# free result buffers kept at most (CONVKIT_CPU_CACHE_MB; 0 turns the cache off)
CACHE_MAX_FREE_BYTES = int(os.environ.get("CONVKIT_CPU_CACHE_MB", "256")) << 20

# buffers of one size the cache tracks at most: a caller that keeps many results alive (say,
# features of a whole dataset) gets plain arrays beyond this, so a lookup never scans more
CACHE_MAX_RECORDS = 64

_cache_lock = threading.Lock()
_cache = {}    # nbytes -> list of [buffer, last use]; the record holds the buffer's only cache ref
_tick = [0]
_FREE_REFS = 2  # a free buffer is referenced by its record and by getrefcount's argument


def empty(shape, dtype) -> np.ndarray:
    """A new uninitialised C-contiguous array for a kernel's result (from the cache when large)."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes < CACHE_MIN_BYTES or CACHE_MAX_FREE_BYTES <= 0 or not CACHE_SOUND:
        return np.empty(shape, dtype=dtype)
    with _cache_lock:
        _tick[0] += 1
        records = _cache.setdefault(nbytes, [])
        for record in records:
            if sys.getrefcount(record[0]) == _FREE_REFS:
                record[1] = _tick[0]
                return record[0].view(dtype).reshape(shape)
        if len(records) >= CACHE_MAX_RECORDS:  # all in use: not tracked
            return np.empty(shape, dtype=dtype)
        record = [np.empty(nbytes, dtype=np.uint8), _tick[0]]
        records.append(record)
        out = record[0].view(dtype).reshape(shape)
        # a new buffer: bound the free ones, counting this one as free (it will be)
        _trim(CACHE_MAX_FREE_BYTES - nbytes)
        return out


def _trim(limit: int) -> None:
    """Drop free buffers, least recently used first, until at most ``limit`` bytes are free."""
    free = [(record[1], nbytes, record) for nbytes, records in _cache.items()
            for record in records if sys.getrefcount(record[0]) == _FREE_REFS]
    total = sum(nbytes for _, nbytes, _ in free)
    dropped = set()
    for _, nbytes, record in sorted(free, key=lambda f: f[0]):
        if total <= limit:
            break
        dropped.add(id(record))
        total -= nbytes
    if dropped:
        for nbytes in list(_cache):
            _cache[nbytes] = [r for r in _cache[nbytes] if id(r) not in dropped]
            if not _cache[nbytes]:
                del _cache[nbytes]


def cached_bytes() -> tuple:
    """(bytes of cached result buffers in use, bytes free), over all cached buffers."""
    with _cache_lock:
        used = free = 0
        for nbytes, records in _cache.items():
            for record in records:
                if sys.getrefcount(record[0]) == _FREE_REFS:
                    free += nbytes
                else:
                    used += nbytes
        return used, free


def empty_cache() -> None:
    """Give every free cached result buffer back (buffers in use stay until released)."""
    with _cache_lock:
        _trim(0)
