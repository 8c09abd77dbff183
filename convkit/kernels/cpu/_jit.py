"""Compile a CPU kernel twice: a parallel version and a serial one for small problems.

Waking Numba's thread pool costs microseconds when the machine is idle and far more when its
cores are busy; below PARALLEL_MIN_WORK inner-loop steps the serial twin is faster. The twin is a
copy of the function under another name, so each keeps its own on-disk cache entry.
"""
import types

from numba import njit

# inner-loop iterations (multiply-adds or element copies) below which the serial twin runs
PARALLEL_MIN_WORK = 1 << 15


class Twin:
    """``twin(work, *args)`` runs the parallel kernel when ``work >= PARALLEL_MIN_WORK``."""

    def __init__(self, fn, **options):
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                    fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "_serial"
        self.parallel = njit(parallel=True, cache=True, **options)(fn)
        self.serial = njit(cache=True, **options)(serial)
        self.__doc__ = fn.__doc__

    def __call__(self, work, *args):
        return (self.parallel if work >= PARALLEL_MIN_WORK else self.serial)(*args)


def twin(fn=None, **options):
    """Decorator form of :class:`Twin`; options go to both ``njit`` calls."""
    if fn is None:
        return lambda f: Twin(f, **options)
    return Twin(fn, **options)
