"""``convkit warm-cache``: compile every CPU kernel signature ahead of time into Numba's cache.

A process's first call of each kernel compiles it (seconds to a minute each with an empty cache)
or loads it from Numba's on-disk cache (milliseconds). This command compiles, without running,
every kernel that ``convkit.kernels.cpu.isa_specs`` lists (the registry ``python -m
convkit.runtime.isa`` also reads), at the argument types its Python wrapper passes, for float32
and float64: both twins of each parallel/serial pair, the im2col BLAS workers, and the OpenMP
team functions. Run it once where the cache lives (a Docker image's build step, a cluster's
shared disk with NUMBA_CACHE_DIR pointing at it); later processes load instead of compiling.

Numba keys cached code by the CPU it was compiled for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES,
default: this host): warm the cache on the CPU model that will run the jobs, or set
NUMBA_CPU_NAME=generic both when warming and when running (portable code, slower kernels).
"""
from __future__ import annotations

import fnmatch
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

DTYPES = ("float32", "float64")


def cache_location() -> str:
    """Where Numba writes its cache in this process: NUMBA_CACHE_DIR, or the ``__pycache__``
    folders beside convkit's sources (Numba falls back to a user cache folder when those are not
    writable)."""
    from numba.core import config

    if config.CACHE_DIR:
        return config.CACHE_DIR
    return "__pycache__ folders beside convkit's kernel sources"


def kernel_names() -> List[str]:
    """The registry's kernel names (the same for every dtype)."""
    from convkit.kernels.cpu.isa_specs import kernel_specs

    return [name for name, _, _ in kernel_specs(DTYPES[0])]


def warm_cache(patterns: Optional[Sequence[str]] = None, dtypes: Sequence[str] = DTYPES,
               report: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Compile (or load) every registry kernel matching ``patterns`` (shell wildcards; all when
    None) for ``dtypes``; one record per kernel and dtype: name, dtype, twins compiled, seconds.
    ``report`` gets one progress line per kernel. Raises ValueError for a pattern matching
    nothing."""
    from convkit.engine import cpu as cpu_engine
    from convkit.kernels.cpu.isa_specs import kernel_specs
    from convkit.runtime.isa import compile_kernel

    names = kernel_names()
    if patterns:
        unknown = [p for p in patterns if not fnmatch.filter(names, p)]
        if unknown:
            raise ValueError(f"kernels {unknown} match none of: {', '.join(names)}")
    # what a process's first kernel call sets up, the OpenMP team functions (cached cfuncs)
    # included
    cpu_engine._cpu_launch_kwargs()
    todo = [(dtype, name, kernel, args) for dtype in dtypes
            for name, kernel, args in kernel_specs(dtype)
            if not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    records = []
    for i, (dtype, name, kernel, args) in enumerate(todo, 1):
        t = time.perf_counter()
        twins = [which for which, _, _ in compile_kernel(kernel, args)]
        seconds = time.perf_counter() - t
        records.append({"kernel": name, "dtype": dtype, "twins": twins, "seconds": seconds})
        if report is not None:
            report(f"[{i:>{len(str(len(todo)))}}/{len(todo)}] {name} {dtype} "
                   f"({', '.join(twins)}): {seconds:.1f} s")
    return records


def add_arguments(p):
    """``convkit warm-cache``'s options."""
    p.add_argument("--kernels", nargs="+", metavar="NAME",
                   help="only these kernels (shell wildcards: 'conv_direct.*'; see --list)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--list", action="store_true", help="print the kernel names and exit")
    return p


def run(args) -> int:
    """``convkit warm-cache``: compile with one progress line per kernel, then a total."""
    if args.list:
        print("\n".join(kernel_names()))
        return 0
    print(f"convkit warm-cache: Numba cache in {cache_location()}", flush=True)
    t = time.perf_counter()
    try:
        records = warm_cache(args.kernels, args.dtypes,
                             report=lambda line: print(line, flush=True))
    except ValueError as e:
        print(f"convkit warm-cache: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(records)} kernel signatures compiled or loaded in {time.perf_counter() - t:.1f} s"
          f" (NUMBA_CPU_NAME={os.environ.get('NUMBA_CPU_NAME', 'host')})")
    return 0


DESCRIPTION = __doc__.split("\n\n")[1].replace("\n", " ")
