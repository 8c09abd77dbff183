"""CPU process plumbing for convkit's Numba kernels: threads, BLAS, memory. Torch-free.

Each mechanism here changes something that belongs to the whole process, so none of it happens
at import: :func:`setup` runs once, on the first parallel CPU kernel launch (``jit.parallel_call``),
and each mechanism has one environment switch that turns it off:

- threading layer (``threads``): Numba's 'omp' pool spin-waits next to torch's (SimpleCNN step
  107 ms on 'omp', 72 ms on 'workqueue'), so 'workqueue' is selected.
  Off: CONVKIT_WORKQUEUE=0, or NUMBA_THREADING_LAYER set by the host.
- OpenMP routing (``openmp``): Numba's parallel loops on torch's own libgomp pool instead of a
  second pool (step 43-59 ms vs 71-77 ms). Off: CONVKIT_OPENMP=0.
- BLAS threads (``blas``): numpy's OpenBLAS at 1 thread while a convkit GEMM batch runs, restored
  after (step 144 -> 53 ms). Off: CONVKIT_BLAS_ONE_THREAD=0.
- branch-free compile (``jit``): two LLVM rewrites off while a max-pool kernel compiles, restored
  after (pool forward 3.8 -> 1.7 ms). Off: CONVKIT_BRANCHLESS=0 (read at import of the kernels).
- result-buffer cache (``memory``): recycled result buffers, no page faults.
  Off: CONVKIT_CPU_CACHE_MB=0 (and always off where reference counts are not exact).

The OpenMP routing needs the path of the process's OpenMP runtime (torch's libgomp); the engine
(``convkit.engine.cpu``), which knows torch, registers it with :func:`use_openmp` before its
first kernel call. Kernels called directly (without the engine) get the other mechanisms only.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

_lock = threading.RLock()
_done = False
_openmp_library: Optional[str] = None


def enabled(switch: str) -> bool:
    """False when the environment variable ``switch`` is set to "0" (a mechanism's off-switch)."""
    return os.environ.get(switch, "1") != "0"


def use_openmp(path: Optional[str]) -> None:
    """Name the OpenMP runtime (a libgomp path) whose pool should run Numba's parallel loops;
    takes effect at :func:`setup` (or at once when setup already ran)."""
    global _openmp_library
    with _lock:
        _openmp_library = path
        if _done:
            _install_openmp()


def _install_openmp() -> None:
    from convkit.runtime import openmp
    if _openmp_library is not None and enabled("CONVKIT_OPENMP"):
        openmp.install(_openmp_library)


def setup() -> None:
    """Apply the process-wide mechanisms (once; later calls return at once). Called by the first
    parallel kernel launch, before Numba starts its threads."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        from convkit.runtime import threads
        threads.select_layer()
        _install_openmp()
        _done = True


def is_set_up() -> bool:
    """Whether :func:`setup` has run in this process."""
    return _done
