"""convkit.runtime: nothing changes in the host process at import; on the first CPU kernel call
the threading layer is chosen and Numba's parallel loops run on torch's OpenMP pool; each
mechanism has an off-switch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numba import njit, prange

import convkit.functional as CF
from convkit.runtime import openmp

TORCH_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()

# a child process: the state before and after `import convkit, convkit.nn`, then after one
# CPU kernel call (a relu large enough to run the parallel kernel)
_PROBE = r"""
import json, sys, ctypes
import numpy, numba, torch
import llvmlite.binding as llvm
from numba.np.ufunc import parallel

def openblas_threads():
    from convkit.runtime import blas  # reads /proc/self/maps only; calls nothing
    get, _ = blas._openblas_threads()
    return None if get is None else get()

def state():
    return {"layer": numba.config.THREADING_LAYER, "numba_started": parallel._is_initialized,
            "numba_threads_config": numba.config.NUMBA_NUM_THREADS,
            "torch_threads": torch.get_num_threads()}

before = state()
import convkit, convkit.nn
after_import = state()
import convkit.runtime as runtime
from convkit.runtime import openmp
after_import["set_up"] = runtime.is_set_up()
after_import["openmp"] = openmp.installed()
after_import["openblas_threads"] = openblas_threads()
import convkit.functional as CF
CF.relu(torch.randn(1 << 21))
after_call = state()
after_call["set_up"] = runtime.is_set_up()
after_call["openmp"] = openmp.installed()
after_call["openblas_threads"] = openblas_threads()
after_call["numba_layer_in_use"] = numba.threading_layer()
print(json.dumps({"before": before, "after_import": after_import, "after_call": after_call}))
"""


def _probe(**env):
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("CONVKIT_OPENMP", "CONVKIT_WORKQUEUE", "NUMBA_THREADING_LAYER")}
    run_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=run_env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_changes_nothing_and_first_call_sets_up():
    r = _probe()
    before, imported, called = r["before"], r["after_import"], r["after_call"]
    # import: Numba's config, its pool, torch's threads and OpenBLAS' threads untouched
    for k in before:
        assert imported[k] == before[k], k
    assert imported["set_up"] is False and imported["openmp"] is None
    # first CPU kernel call: workqueue layer, torch's libgomp where torch runs on OpenMP
    assert called["set_up"] is True
    assert called["layer"] == "workqueue" and called["numba_layer_in_use"] == "workqueue"
    assert called["torch_threads"] == before["torch_threads"]
    assert called["openblas_threads"] == imported["openblas_threads"]  # restored after GEMMs
    if TORCH_OPENMP:
        assert called["openmp"] is not None and "libgomp" in os.path.basename(called["openmp"])


def test_off_switches():
    r = _probe(CONVKIT_OPENMP="0", CONVKIT_WORKQUEUE="0")
    assert r["after_call"]["set_up"] is True
    assert r["after_call"]["openmp"] is None
    assert r["after_call"]["layer"] == r["before"]["layer"]  # Numba's own default kept


def test_host_chosen_threading_layer_is_kept():
    r = _probe(NUMBA_THREADING_LAYER="omp")
    assert r["after_call"]["numba_layer_in_use"] == "omp"


@pytest.mark.skipif(not TORCH_OPENMP, reason="torch's parallel backend is not OpenMP")
def test_numba_loops_use_torchs_libgomp():
    CF.relu(torch.randn(1 << 21))  # the first CPU kernel call sets the runtime up
    path = openmp.installed()
    assert path is not None and "libgomp" in os.path.basename(path)
    assert path == openmp.find_openmp_runtime(prefer="torch")


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
    CF.relu(torch.randn(1 << 21))
    a = np.random.default_rng(n).standard_normal(n)
    s, m = _reduce(a)
    assert s == pytest.approx(a.sum(), rel=1e-12, abs=1e-9)
    assert m == a.max()


def test_parallel_loop_writes_every_element():
    from convkit.kernels.cpu import relu
    from convkit.runtime.jit import parallel_call

    x = np.random.default_rng(0).standard_normal(3_000_001).astype(np.float32)
    y = np.full_like(x, np.nan)
    parallel_call(relu._relu_forward.parallel, x, y)
    assert np.array_equal(y, np.maximum(x, 0))
