"""``convkit warm-cache`` (convkit/precompile.py): compiles the registry's kernels into the Numba
cache it is pointed at, and a later process's real calls load exactly those entries (no cache
miss, nothing compiled). A small subset on a temporary NUMBA_CACHE_DIR keeps it short."""
import json
import os
import subprocess
import sys

from convkit import precompile
from convkit.kernels.cpu.isa_specs import kernel_specs

SUBSET = ["relu.relu_forward", "pool.max_pool2d_2x2"]

# a fresh process on the warmed cache: the wrappers' real calls (serial and parallel twin each),
# then each dispatcher's cache statistics
_CALLS = """
import json
import numpy as np
from convkit.engine import cpu
from convkit.kernels import cpu as K
from convkit.kernels.cpu import pool, relu

cpu._cpu_launch_kwargs()
from convkit.runtime import _gomp_team  # bound to torch's libgomp by now
for shape in [(2, 4, 8, 8), (8, 64, 64, 64)]:  # below and above the parallel threshold
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    K.relu_forward(x)
    K.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
stats = {}
for name, kernel in [("relu", relu._relu_forward), ("pool2x2", pool._max_pool2d_2x2)]:
    for which in ("parallel", "serial"):
        s = getattr(kernel, which).stats
        stats[f"{name}.{which}"] = {"hits": sum(s.cache_hits.values()),
                                    "misses": sum(s.cache_misses.values())}
stats["gomp_team"] = {"hits": _gomp_team.team_member.cache_hits, "misses": 0}
print(json.dumps(stats))
"""


def _env(cache):
    return dict(os.environ, NUMBA_CACHE_DIR=str(cache))


def _warm(cache, *args):
    return subprocess.run([sys.executable, "-m", "convkit", "warm-cache", *args],
                          env=_env(cache), capture_output=True, text=True, timeout=900)


def test_list_is_the_registry():
    assert precompile.kernel_names() == [name for name, _, _ in kernel_specs("float32")]
    # every kernel the im2col BLAS pipeline and the direct backward-input run is in it
    assert {"conv_im2col.cblas_forward_rows", "conv_im2col.cblas_backward_input_multi",
            "conv_common.transposed_filter"} <= set(precompile.kernel_names())


def test_unknown_kernel_is_refused(tmp_path):
    proc = _warm(tmp_path, "--kernels", "relu.no_such")
    assert proc.returncode == 2
    assert "relu.no_such" in proc.stderr


def test_warmed_cache_serves_the_real_calls(tmp_path):
    cache = tmp_path / "numba-cache"
    proc = _warm(cache, "--kernels", *SUBSET, "--dtypes", "float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert str(cache) in lines[0]
    progress = sorted(line.split(":")[0] for line in lines if line.startswith("["))
    assert progress == ["[1/2] pool.max_pool2d_2x2 float32 (parallel, serial)",
                        "[2/2] relu.relu_forward float32 (parallel, serial)"], lines
    assert "2 kernel signatures compiled or loaded" in lines[-1]
    assert list(cache.rglob("relu._relu_forward_serial-*.nbc"))

    calls = subprocess.run([sys.executable, "-c", _CALLS], env=_env(cache),
                           capture_output=True, text=True, timeout=900)
    assert calls.returncode == 0, calls.stderr[-3000:]
    stats = json.loads(calls.stdout.strip().splitlines()[-1])
    for name, s in stats.items():
        assert s == {"hits": 1, "misses": 0}, (name, stats)


def test_second_run_loads_instead_of_compiling(tmp_path):
    cache = tmp_path / "numba-cache"
    assert _warm(cache, "--kernels", "relu.relu_backward", "--dtypes", "float64").returncode == 0
    before = sorted(p.name for p in cache.rglob("*.nbc"))
    again = _warm(cache, "--kernels", "relu.relu_backward", "--dtypes", "float64")
    assert again.returncode == 0
    assert sorted(p.name for p in cache.rglob("*.nbc")) == before


def test_records():
    """In-process API: one record per kernel and dtype, the twins named as the isa tool names
    them (a Twin's two; a parallel team's one, "parallel")."""
    records = precompile.warm_cache(["relu.relu_forward", "conv_im2col.cblas_forward"],
                                    ["float32"])
    assert [(r["kernel"], r["twins"]) for r in records] == [
        ("conv_im2col.cblas_forward", ["parallel"]), ("relu.relu_forward", ["parallel", "serial"])]
