"""convkit's CPU parallel loops run on torch's OpenMP pool (kernels/cpu/_openmp.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numba import njit, prange

import convkit.autograd  # noqa: F401  (installs the OpenMP launcher when torch uses OpenMP)
from convkit.kernels.cpu import _openmp

TORCH_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.mark.skipif(not TORCH_OPENMP, reason="torch's parallel backend is not OpenMP")
def test_numba_loops_use_torchs_libgomp():
    path = _openmp.installed()
    assert path is not None and "libgomp" in os.path.basename(path)
    assert path == _openmp.find_openmp_runtime(prefer="torch")


@njit(parallel=True)
def _reduce(a):
    s = 0.0
    m = -np.inf
    for i in prange(a.size):
        s += a[i]
        m = max(m, a[i])
    return s, m


@pytest.mark.parametrize("n", [1, 7, 1000, 1_000_003])
def test_parallel_reduction_matches_numpy(n):
    # prange reductions keep one partial per thread (Numba asks get_thread_id): they must
    # still be exact whichever pool runs them
    a = np.random.default_rng(n).standard_normal(n)
    s, m = _reduce(a)
    assert s == pytest.approx(a.sum(), rel=1e-12, abs=1e-9)
    assert m == a.max()


def test_parallel_loop_writes_every_element():
    from convkit.kernels.cpu import relu

    x = np.random.default_rng(0).standard_normal(3_000_001).astype(np.float32)
    y = np.full_like(x, np.nan)
    relu._relu_forward.parallel(x, y)
    assert np.array_equal(y, np.maximum(x, 0))


def test_convkit_openmp_0_keeps_numbas_own_pool():
    code = ("import convkit.autograd; from convkit.kernels.cpu import _openmp; "
            "print(_openmp.installed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, CONVKIT_OPENMP="0"), check=True)
    assert out.stdout.strip() == "None"
