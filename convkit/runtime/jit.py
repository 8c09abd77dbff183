"""Compile a CPU kernel twice: a parallel version and a serial one for small problems.

Waking Numba's thread pool costs microseconds when the machine is idle and far more when its
cores are busy; below PARALLEL_MIN_WORK inner-loop steps the serial twin is faster. The twin is a
copy of the function under another name, so each keeps its own on-disk cache entry.

Threading layer: Numba's OpenMP pool spin-waits after each parallel region, and so does torch's
own pool; on a 2-core machine the two steal each other's cores (measured here: SimpleCNN's
training step 107 ms with 'omp', 72 ms with 'workqueue', torch's own ops unaffected). So convkit
selects the 'workqueue' layer unless NUMBA_THREADING_LAYER says otherwise. workqueue does not
allow two parallel regions at once, so parallel launches are serialised with a lock (a second
Python thread waits instead of aborting the process). Where torch runs on OpenMP, convkit then
points Numba's parallel loops at torch's own OpenMP pool (``_openmp``): workqueue keeps only the
bookkeeping (thread counts, scheduling).

Branch-free kernels: LLVM's x86 backend turns selects into branches when it guesses them
predictable (CodeGenPrepare's select-to-branch and the x86 cmov converter). For an arg-max over
random data the guess is wrong and every other tap mispredicts (max-pool forward 3.8 ms instead of
1.7 ms on N64 C32 28^2, measured here). ``twin(branchless=True)`` compiles its kernels with both
rewrites switched off; the switch is process-wide in LLVM, so it is set only while convkit
compiles such a kernel (the first call per argument types) and restored right after.
"""
import os
import threading
import types

import llvmlite.binding as llvm
import numba
from numba import njit

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_PARALLEL_LOCK = threading.Lock()

# inner-loop iterations (multiply-adds or element copies) below which the serial twin runs:
# waking the workqueue pool costs ~35 us here, about 2^18 simple loop steps
PARALLEL_MIN_WORK = 1 << 18


# (option, value while compiling a branch-free kernel, LLVM's default)
_BRANCHLESS = (("-x86-cmov-converter", "false", "true"),
               ("-disable-cgp-select2branch", "true", "false"))
_COMPILE_LOCK = threading.Lock()


def _set_llvm_options(which: int) -> None:
    for entry in _BRANCHLESS:
        llvm.set_option("convkit", f"{entry[0]}={entry[which]}")


class Twin:
    """``twin(work, *args)`` runs the parallel kernel when ``work >= PARALLEL_MIN_WORK``."""

    def __init__(self, fn, branchless: bool = False, **options):
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                    fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "_serial"
        self.parallel = njit(parallel=True, cache=True, **options)(fn)
        # nogil: the numpy.matmul fallback of im2col runs serial kernels from several Python
        # threads at once
        self.serial = njit(cache=True, nogil=True, **options)(serial)
        self.__doc__ = fn.__doc__
        self._branchless = branchless
        self._ready = False  # branch-free: compiled once, and Numba's own compiling disabled

    def _compile(self, args) -> None:
        """Compile (or load from cache) both twins for these argument types, branch-free."""
        with _COMPILE_LOCK:
            _set_llvm_options(1)
            try:
                for dispatcher in (self.parallel, self.serial):
                    dispatcher.disable_compile(False)
                    try:
                        dispatcher.compile(tuple(numba.typeof(a) for a in args))
                    finally:
                        dispatcher.disable_compile(len(dispatcher.signatures) > 0)
            finally:
                _set_llvm_options(2)
            self._ready = True

    def _launch(self, work, args):
        if work < PARALLEL_MIN_WORK:
            return self.serial(*args)
        with _PARALLEL_LOCK:
            return self.parallel(*args)

    def __call__(self, work, *args):
        if not self._branchless:
            return self._launch(work, args)
        if not self._ready:
            self._compile(args)
        try:
            return self._launch(work, args)
        except TypeError:
            # compilation is disabled on branch-free twins, so Numba refuses argument types not
            # compiled yet (rather than compiling them with the default options): compile them
            # branch-free and call again
            self._compile(args)
            return self._launch(work, args)


def twin(fn=None, **options):
    """Decorator form of :class:`Twin`; options go to both ``njit`` calls."""
    if fn is None:
        return lambda f: Twin(f, **options)
    return Twin(fn, **options)
