"""Numba's threading layer for convkit's parallel kernels.

Numba's 'omp' layer spin-waits after each parallel region, and so does torch's own OpenMP pool;
on a 2-core machine the two steal each other's cores (measured here: SimpleCNN's training step
107 ms with 'omp', 72 ms with 'workqueue', torch's own ops unaffected). So on the first parallel
kernel launch convkit selects the 'workqueue' layer, unless NUMBA_THREADING_LAYER is set, or
CONVKIT_WORKQUEUE=0, or Numba already started its threads (a layer chosen by the host program
is kept). workqueue does not allow two parallel regions at once, so launches are serialised with
``PARALLEL_LOCK`` (a second Python thread waits instead of aborting the process). Where torch
runs on OpenMP, convkit then points Numba's parallel loops at torch's pool (``openmp``):
workqueue keeps only the bookkeeping (thread counts, scheduling).
"""
import os
import threading

import numba

PARALLEL_LOCK = threading.Lock()


def _threads_started() -> bool:
    from numba.np.ufunc import parallel
    return bool(getattr(parallel, "_is_initialized", False))


def select_layer() -> bool:
    """Select 'workqueue' if nobody chose a layer yet; True if convkit set it."""
    if "NUMBA_THREADING_LAYER" in os.environ or os.environ.get("CONVKIT_WORKQUEUE") == "0":
        return False
    if _threads_started():
        return False
    numba.config.THREADING_LAYER = "workqueue"
    return True
