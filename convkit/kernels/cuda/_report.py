"""What every CUDA kernel module declares about its launches, for ``convkit gpu-report``.

Each kernel module defines ``kernel_specs(dtype) -> list[KernelSpec]``: every kernel it launches,
at every argument signature its launch code uses for that dtype, with the block size and
dynamic shared memory it is launched with. The report compiles each spec ahead of time
(``numba.cuda.compile_ptx``) for a chosen architecture, so the machine code can be judged with no
GPU; a simulator test checks that every launch the parity tests make is listed here.

Torch-free; importing this module compiles nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.core import types
from numba.np import numpy_support

KINDS = ("compute", "memory")


class KernelSpec(NamedTuple):
    """One kernel at one launch signature."""

    name: str  # report name, unique; every GEMM kernel has "gemm" in its name
    kernel: object  # the numba.cuda dispatcher as launched (its .py_func is compiled)
    argtypes: tuple  # numba types exactly as the launch code passes them
    threads: int  # threads per block as launched
    dynamic_smem: int  # dynamic shared memory bytes as launched (0 if none)
    kind: str  # "compute" (conv/GEMM multiply-adds, fallbacks included) or "memory"


# Python scalars as a launch passes them: numba types a Python int as int64, a bool as boolean.
INT = types.int64
BOOL = types.boolean


def array(dtype, ndim: int = 1) -> types.Array:
    """The numba type of a C-contiguous device array of ``dtype`` with ``ndim`` dimensions."""
    return types.Array(numpy_support.from_dtype(np.dtype(dtype)), ndim, "C")


def scalar(dtype) -> types.Type:
    """The numba scalar type of a numpy dtype."""
    return numpy_support.from_dtype(np.dtype(dtype))


def dtype_name(dtype) -> str:
    """'float32' or 'float64'."""
    return np.dtype(dtype).name


__all__ = ["KernelSpec", "KINDS", "INT", "BOOL", "array", "scalar", "dtype_name"]
