"""Compile a CPU kernel twice: a parallel version and a serial one for small problems.

Waking Numba's thread pool costs microseconds when the machine is idle and far more when its
cores are busy; below PARALLEL_MIN_WORK inner-loop steps the serial twin is faster. The twin is a
copy of the function under another name, so each keeps its own on-disk cache entry.

Every parallel launch goes through :func:`parallel_call`: it runs ``convkit.runtime.setup()`` the
first time (threading layer, OpenMP routing: see ``threads`` and ``openmp``) and serialises
launches (the workqueue layer allows one parallel region at a time).

Branch-free kernels: LLVM's x86 backend turns selects into branches when it guesses them
predictable (CodeGenPrepare's select-to-branch and the x86 cmov converter). For an arg-max over
random data the guess is wrong and every other tap mispredicts (max-pool forward 3.8 ms instead of
1.7 ms on N64 C32 28^2, measured here). ``twin(branchless=True)`` compiles its kernels with both
rewrites switched off; the switch is process-wide in LLVM, so it is set only while convkit
compiles such a kernel (the first call per argument types, for the twin that call runs) and
restored right after.
CONVKIT_BRANCHLESS=0 compiles them with LLVM's defaults instead.
"""
import threading
import types

import llvmlite.binding as llvm
import numba
from numba import njit

import convkit.runtime as runtime
from convkit.runtime.threads import PARALLEL_LOCK

# inner-loop iterations (multiply-adds or element copies) below which the serial twin runs:
# waking the workqueue pool costs ~35 us here, about 2^18 simple loop steps
PARALLEL_MIN_WORK = 1 << 18


# (option, value while compiling a branch-free kernel, LLVM's default)
_BRANCHLESS = (("-x86-cmov-converter", "false", "true"),
               ("-disable-cgp-select2branch", "true", "false"))
_COMPILE_LOCK = threading.Lock()


def parallel_call(dispatcher, *args):
    """``dispatcher(*args)`` for a ``parallel=True`` kernel: process setup on the first launch,
    one parallel region at a time."""
    runtime.setup()
    with PARALLEL_LOCK:
        return dispatcher(*args)


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
        self._branchless = branchless and runtime.enabled("CONVKIT_BRANCHLESS")
        # branch-free twins compiled through _compile at least once, and from then on with
        # Numba's own compiling disabled (Numba refuses that on a dispatcher with no signature)
        self._ready = set()

    def _compile(self, args, dispatchers=None) -> None:
        """Compile (or load from cache) the twins for these argument types, branch-free: both,
        or only ``dispatchers`` (a call compiles just the twin it runs: compiling the other
        costs as much again, and a problem size may never need it)."""
        with _COMPILE_LOCK:
            _set_llvm_options(1)
            try:
                for dispatcher in dispatchers or (self.parallel, self.serial):
                    dispatcher.disable_compile(False)
                    try:
                        dispatcher.compile(tuple(numba.typeof(a) for a in args))
                    finally:
                        dispatcher.disable_compile(len(dispatcher.signatures) > 0)
                    self._ready.add(dispatcher)
            finally:
                _set_llvm_options(2)

    def __call__(self, work, *args):
        serial = work < PARALLEL_MIN_WORK  # the common case inline: a tiny call's frames add up
        if not self._branchless:
            return self.serial(*args) if serial else parallel_call(self.parallel, *args)
        dispatcher = self.serial if serial else self.parallel
        if dispatcher not in self._ready:
            self._compile(args, (dispatcher,))
        try:
            return self.serial(*args) if serial else parallel_call(self.parallel, *args)
        except TypeError:
            # Numba refuses argument types not compiled yet (its own compiling is off):
            # compile them branch-free, for the twin this call runs, and call again
            self._compile(args, (dispatcher,))
            return self.serial(*args) if serial else parallel_call(self.parallel, *args)


def twin(fn=None, **options):
    """Decorator form of :class:`Twin`; options go to both ``njit`` calls."""
    if fn is None:
        return lambda f: Twin(f, **options)
    return Twin(fn, **options)
