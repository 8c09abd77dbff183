"""convkit.kernels.cuda under numba's CUDA simulator, checked against torch CPU ops.

Runs only in its own process with the simulator switched on before numba.cuda is imported:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py

The simulator runs every GPU thread as a Python thread, so shapes are tiny. To make tiny shapes
span several tiles (edge tiles, partial blocks, several k-slices, batch splits and chunks), most
cases run with every tile constant shrunk ("small" tiles: the kernels are written in terms of
the constants only); a subset runs with the shipped constants.
"""
import copy
import os
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# CONVKIT_SIM_TESTS_ON_GPU=1 runs this file on a real GPU instead (benchmarks/gpu_check.sh):
# shipped tiles only, since tile sizes are compile-time constants of a real kernel.
ON_GPU = os.environ.get("CONVKIT_SIM_TESTS_ON_GPU") == "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and not ON_GPU:
    pytest.skip("CUDA simulator tests: run `NUMBA_ENABLE_CUDASIM=1 python -m pytest "
                "tests/test_cuda_sim.py` in a process of their own", allow_module_level=True)

from numba import cuda  # noqa: E402
from numba.core import types as numba_types  # noqa: E402
from numba.np import numpy_support  # noqa: E402

import convkit.kernels.cuda as K  # noqa: E402
from convkit.kernels.cuda import _common, conv_direct, conv_im2col, tiled_gemm  # noqa: E402

pytestmark = pytest.mark.cudasim

SMALL_TILES = {
    _common: dict(THREADS_1D=32, MAX_BLOCKS_1D=2),
    conv_direct: dict(DIRECT_BW=4, DIRECT_BH=2, DIRECT_PB=2, DIRECT_KB=2, DIRECT_THREADS=8,
                      DIRECT_MAX_TAPS=9, DIRECT_IN_H=8, DIRECT_IN_W=10, DIRECT_SLAB=80,
                      BIAS_THREADS=8, WGRAD_BW=4, WGRAD_BH=2, WGRAD_THREADS=8,
                      WGRAD_KB={"f": 2, "d": 2}, WGRAD_TAPS=4, WGRAD_CW=8, WGRAD_TILE=16,
                      WGRAD_IN_H=8, WGRAD_IN_W=16, WGRAD_IN_HW=128, WGRAD_TARGET_BLOCKS=8),
    # 8x8 block tiles of 2x2 per thread (16 threads), 4-deep slices
    tiled_gemm: dict(GEMM_TILES={"f": tiled_gemm.GemmTile(8, 8, 4, 1),
                                 "d": tiled_gemm.GemmTile(8, 8, 4, 1)},
                     GEMM_TARGET_BLOCKS=64),
}
# kernel factories that read tile constants when they build a kernel (closure constants, as
# the compiled kernels need): small tiles get kernels of their own, built while they are set
TILE_FACTORIES = {tiled_gemm: ["_gemm"], conv_direct: ["_backward_weight"]}


@pytest.fixture(scope="module", autouse=True)
def _race_free_shared_arrays():
    """numba's simulator creates a block's shared array check-then-set without a lock
    (FakeCUDAShared.array), so two threads of a block can each get their own array and read
    the other's uninitialised one: seen here as rare 1e180 values in conv outputs. The same
    lookup, keyed like the simulator's (caller file and line), under a lock."""
    if ON_GPU:
        yield
        return
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # no per-line lookup on these paths
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, numba_types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    yield
    kernelapi.FakeCUDAShared.array = original


@pytest.fixture(scope="module", autouse=True)
def _fast_thread_switching():
    """The simulator's threads wait on each other at every syncthreads(); switching the GIL
    every 0.1 ms instead of 5 ms makes the run several times faster."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


# Every (kernel, argument types, threads per block, dynamic smem) launched by any test here; the
# launch-coverage check below and gpu-report both rely on kernel_specs listing all of them.
LAUNCHES = set()


def _launch_type(arg):
    import numba

    return numba.typeof(getattr(arg, "_ary", arg))  # a simulator device array wraps a numpy one


@pytest.fixture(autouse=True)
def _launches_are_declared(monkeypatch):
    """Each kernel launch a test makes must be listed by its module's kernel_specs (checked at
    launch time, so with the tile constants of that moment): gpu-report compiles only what is
    listed, so an unlisted signature would never be judged on sm_90."""
    if ON_GPU:  # launches are recorded through the simulator's kernel class
        yield
        return
    import importlib

    from numba.cuda.simulator.kernel import FakeCUDAKernel

    original = FakeCUDAKernel.__call__
    undeclared = []

    def call(self, *args):
        if not self._device:
            threads = int(np.prod(tuple(self.block_dim)))
            launch = (self, tuple(_launch_type(a) for a in args), threads,
                      int(self.dynshared_size))
            module = importlib.import_module(self.fn.__module__)
            declare = getattr(module, "kernel_specs", None)
            LAUNCHES.add((self.fn.__module__, self.fn.__name__) + launch[1:])
            if declare is not None:
                specs = {(sp.kernel, tuple(sp.argtypes), sp.threads, sp.dynamic_smem)
                         for dt in (np.float32, np.float64) for sp in declare(dt)}
                if launch not in specs:
                    undeclared.append(f"{self.fn.__module__}.{self.fn.__name__}"
                                      f"{launch[1]} threads={threads} smem={launch[3]}")
        return original(self, *args)

    monkeypatch.setattr(FakeCUDAKernel, "__call__", call)
    yield
    assert not undeclared, "launches missing from kernel_specs:\n" + "\n".join(undeclared)


def use_small_tiles(monkeypatch):
    if ON_GPU:
        pytest.skip("small tiles: simulator only (tile sizes are compiled into real kernels)")
    for module, values in SMALL_TILES.items():
        for name, value in values.items():
            monkeypatch.setattr(module, name, value)
    for module, names in TILE_FACTORIES.items():
        for name in names:
            factory = getattr(module, name)
            monkeypatch.setattr(module, name, _common.specialise(factory.__wrapped__))
    # two images per unfold chunk: a 3-image batch runs a full and a partial chunk
    monkeypatch.setattr(conv_im2col, "_chunk", lambda N, *_: min(N, 2))


@pytest.fixture(params=["small", "shipped"])
def tiles(request, monkeypatch):
    if request.param == "small":
        use_small_tiles(monkeypatch)
    return request.param


def dev(t: torch.Tensor):
    return cuda.to_device(t.detach().numpy())


def host(a) -> torch.Tensor:
    return torch.from_numpy(a.copy_to_host())


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


# (N, C, H, W, K, KH, KW, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "pad1": (2, 3, 7, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),
    "stride2-groups2": (2, 4, 8, 7, 6, 3, 3, (2, 2), (0, 0), (1, 1), 2, False),
    "dilation-asym-n1": (1, 2, 9, 10, 3, 3, 2, (1, 2), (2, 1), (2, 1), 1, True),
    "depthwise": (2, 4, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 4, True),
    "depthwise-x2": (2, 3, 5, 7, 6, 3, 3, (2, 1), (1, 0), (1, 2), 3, False),
    "1x1": (3, 5, 4, 5, 7, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),
    "5x5-pad2": (2, 2, 9, 9, 3, 5, 5, (1, 1), (2, 2), (1, 1), 1, True),
    "stride3-wide": (2, 2, 6, 11, 3, 2, 3, (1, 3), (0, 1), (1, 1), 1, False),
    "out1x1": (3, 2, 3, 3, 2, 3, 3, (1, 1), (0, 0), (1, 1), 1, True),
}
SHIPPED_CASES = {"pad1", "stride3-wide", "5x5-pad2"}  # tiled and plain paths at shipped sizes


def _conv_reference(x, w, b, stride, padding, dilation, groups, gy):
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if b is not None else None
    y = F.conv2d(xr, wr, br, stride, padding, dilation, groups)
    y.backward(gy)
    return y.detach(), xr.grad, wr.grad, br.grad if b is not None else None


FLOAT32_CASES = {"pad1", "stride2-groups2", "depthwise"}  # float64 covers every case
CONV_PARAMS = ([("small", c, torch.float64) for c in sorted(CONV_CASES)]
               + [("small", c, torch.float32) for c in sorted(FLOAT32_CASES)]
               + [("shipped", c, torch.float64) for c in sorted(SHIPPED_CASES)])


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("tiles,case,dtype", CONV_PARAMS, indirect=["tiles"])
def test_conv2d_matches_torch(case, algorithm, dtype, tiles):
    N, C, H, W, Kc, KH, KW, stride, padding, dilation, G, has_bias = CONV_CASES[case]
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(Kc, C // G, KH, KW, dtype=dtype)
    b = torch.randn(Kc, dtype=dtype) if has_bias else None
    OH = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    gy = torch.randn(N, Kc, OH, OW, dtype=dtype)
    y_ref, gx_ref, gw_ref, gb_ref = _conv_reference(x, w, b, stride, padding, dilation, G, gy)
    args = (stride, padding, dilation, G, algorithm)

    y = K.conv2d_forward(dev(x), dev(w), dev(b) if has_bias else None, *args)
    gx = K.conv2d_backward_input(dev(gy), dev(w), x.shape, *args)
    gw = K.conv2d_backward_weight(dev(x), dev(gy), w.shape, *args)
    for name, got, ref in [("y", y, y_ref), ("grad_input", gx, gx_ref),
                           ("grad_weight", gw, gw_ref)]:
        got = host(got)
        assert got.dtype == dtype and got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, **tol(dtype),
                                   msg=lambda m, n=name: f"{n} differs: {m}")
    if has_bias:
        torch.testing.assert_close(host(K.conv2d_backward_bias(dev(gy))), gb_ref, **tol(dtype))


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_forward_relu_flag(algorithm):
    """conv2d_forward(..., relu=True), what conv2d_relu calls: relu(conv2d) on the same stream."""
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    args = ((1, 1), (1, 1), (1, 1), 1, algorithm)
    y = host(K.conv2d_forward(dev(x), dev(w), dev(b), *args, True))
    torch.testing.assert_close(y, torch.relu(F.conv2d(x, w, b, padding=1)), **tol(torch.float64))
    assert (y == 0).any()


def test_direct_staging_modes_are_taken(monkeypatch):
    """The shape table reaches every way the direct kernels stage a window: the whole filter
    window, one filter row (column) at a time, and, for the weight gradient, one tap alone."""
    use_small_tiles(monkeypatch)
    seen = {"window": set(), "wgrad": set()}
    for name, key in (("_window_modes", "window"), ("_wgrad_mode", "wgrad")):
        real = getattr(conv_direct, name)
        monkeypatch.setattr(conv_direct, name,
                            lambda *a, _real=real, _key=key: seen[_key].add(
                                (a[:2],) + (_real(*a),)) or _real(*a))
    for case in ("pad1", "5x5-pad2", "stride3-wide"):
        N, C, H, W, Kc, KH, KW, stride, padding, dilation, G, _ = CONV_CASES[case]
        x = dev(torch.randn(N, C, H, W, dtype=torch.float64))
        w = dev(torch.randn(Kc, C // G, KH, KW, dtype=torch.float64))
        y = K.conv2d_forward(x, w, None, stride, padding, dilation, G, "direct")
        K.conv2d_backward_weight(x, y, w.shape, stride, padding, dilation, G, "direct")
    windows = {((TR, TS), (TRC, TSC)) for (TR, TS), (TRC, TSC, _, _) in seen["window"]}
    assert ((3, 3), (3, 3)) in windows  # pad1: whole window
    assert ((5, 5), (1, 5)) in windows  # 5x5 > 9 small-tile taps: a filter row at a time
    assert ((2, 3), (2, 1)) in windows  # stride 3 too wide for a slab: a filter column
    assert {mode[0] for _, mode in seen["wgrad"]} == {1, conv_direct.WGRAD_TAPS}


@pytest.mark.parametrize("tiles,shape", [("small", (5, 7, 9)), ("small", (17, 33, 10)),
                                          ("small", (1, 1, 1)), ("shipped", (17, 33, 10))],
                         indirect=["tiles"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy(shape, dtype, tiles):
    M, KR, NC = shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((M, KR)).astype(dtype), rng.standard_normal((KR, NC)).astype(dtype)
    got = K.gemm(cuda.to_device(a), cuda.to_device(b)).copy_to_host()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=rtol, atol=rtol)


# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    ((2, 3, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 2, 9, 9), (3, 2), (2, 1), (1, 0), (2, 1), False),
    ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 1, 5, 7), (3, 3), (1, 1), (1, 1), (1, 1), False),  # up to 9 windows share a maximum
    ((1, 2, 6, 5), (2, 3), (3, 2), (1, 1), (1, 2), True),
]


@pytest.mark.parametrize("tiles,case", [("small", i) for i in range(len(POOL_CASES))]
                         + [("shipped", 0)], indirect=["tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool2d_matches_torch(case, dtype, tiles):
    shape, kernel, stride, padding, dilation, ceil_mode = POOL_CASES[case]
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[::7] = x.view(-1)[1]  # ties: the first maximum in scan order wins
    xr = x.clone().requires_grad_()
    y_ref, i_ref = F.max_pool2d(xr, kernel, stride, padding, dilation, ceil_mode,
                                return_indices=True)
    gy = torch.randn_like(y_ref)
    y_ref.backward(gy)
    y, i = K.max_pool2d_forward(dev(x), kernel, stride, padding, dilation, ceil_mode)
    torch.testing.assert_close(host(y), y_ref.detach(), rtol=0, atol=0)
    assert torch.equal(host(i), i_ref)
    gx = K.max_pool2d_backward(dev(gy), i, x.shape)
    torch.testing.assert_close(host(gx), xr.grad, **tol(dtype))


def test_max_pool2d_nan_and_inf_follow_torch_cpu():
    x = torch.tensor([[[[1.0, float("nan"), 3.0, -float("inf")],
                        [float("nan"), 0.5, -float("inf"), -float("inf")],
                        [2.0, 2.0, 7.0, float("nan")]]]], dtype=torch.float64)
    for args in [((2, 2), (2, 2), (0, 0), (1, 1), True), ((2, 2), (1, 1), (1, 1), (1, 1), False)]:
        y_ref, i_ref = F.max_pool2d(x, *args, return_indices=True)
        y, i = K.max_pool2d_forward(dev(x), *args)
        torch.testing.assert_close(host(y), y_ref, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(host(i), i_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_matches_torch(dtype, tiles):
    x = torch.randn(3, 2, 5, 7, dtype=dtype)
    x.view(-1)[::5] = 0.0
    x.view(-1)[3] = float("nan")
    xr = x.clone().requires_grad_()
    y_ref = torch.relu(xr)
    gy = torch.randn_like(y_ref)
    y_ref.backward(gy)
    y = K.relu_forward(dev(x))
    torch.testing.assert_close(host(y), y_ref.detach(), equal_nan=True, rtol=0, atol=0)
    gx = host(K.relu_backward(dev(gy), y))
    torch.testing.assert_close(gx, xr.grad, rtol=0, atol=0, equal_nan=True)
    xd = dev(x)
    K.relu_forward(xd, xd)
    torch.testing.assert_close(host(xd), y_ref.detach(), equal_nan=True, rtol=0, atol=0)


def test_stream_keyword_is_accepted():
    """Every public kernel takes ``stream=`` (the simulator runs synchronously on any stream)."""
    stream = cuda.stream()
    x = dev(torch.randn(1, 2, 4, 4, dtype=torch.float64))
    w = dev(torch.randn(2, 2, 3, 3, dtype=torch.float64))
    y = K.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1, "im2col", stream=stream)
    K.conv2d_backward_input(y, w, x.shape, (1, 1), (1, 1), (1, 1), 1, "direct", stream=stream)
    K.conv2d_backward_weight(x, y, w.shape, (1, 1), (1, 1), (1, 1), 1, "direct", stream=stream)
    K.conv2d_backward_bias(y, stream=stream)
    r = K.relu_forward(y, stream=stream)
    K.relu_backward(r, r, stream=stream)
    p, i = K.max_pool2d_forward(r, (2, 2), (2, 2), (0, 0), (1, 1), False, stream=stream)
    gx = K.max_pool2d_backward(p, i, r.shape, stream=stream)
    stream.synchronize()
    assert gx.shape == r.shape


@pytest.fixture
def sim_engine(monkeypatch):
    """Route convkit's CPU tensors through the CUDA kernels (copied to the simulator): the ops
    (``convkit.autograd.ops``) get a CUDA-kernel engine from ``engine_for``."""
    import convkit.autograd.ops as ops
    from convkit.engine import KernelEngine

    calls = []

    def launch_kwargs():
        calls.append(1)
        return {"stream": 0}

    engine = KernelEngine("cuda", K, lambda t: dev(t.detach().contiguous()),
                          lambda a: torch.from_numpy(a.copy_to_host()), launch_kwargs)
    monkeypatch.setattr(ops, "engine_for", lambda device: engine)
    return calls


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_functional_and_convert_run_on_cuda_kernels(sim_engine, algorithm):
    """A SimpleCNN-shaped model, converted, matches torch through autograd and the CUDA kernels."""
    import convkit

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5), torch.nn.ReLU(),
        torch.nn.Linear(5, 3)).double()
    ours = convkit.convert(copy.deepcopy(model), algorithm=algorithm)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    ref = model(x)
    ref.sum().backward()
    out = ours(x)
    out.sum().backward()
    assert sim_engine, "the CUDA kernel engine was not used"
    torch.testing.assert_close(out, ref, **tol(torch.float64))
    for (name, p), q in zip(model.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **tol(torch.float64), msg=name)


# --- convkit.kernels.reference as the oracle (plain loop nests, float64 accumulation) ----------

@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("case,dtype", [("stride2-groups2", np.float64),
                                        ("dilation-asym-n1", np.float64),
                                        ("depthwise-x2", np.float32)])
def test_conv2d_matches_reference(case, dtype, algorithm, monkeypatch):
    from convkit.kernels import reference as ref

    use_small_tiles(monkeypatch)  # several tiles per shape, and fewer simulator threads
    N, C, H, W, Kc, KH, KW, stride, padding, dilation, G, has_bias = CONV_CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Kc, C // G, KH, KW)).astype(dtype)
    b = rng.standard_normal(Kc).astype(dtype) if has_bias else None
    conf = (stride, padding, dilation, G)
    y_ref = ref.conv2d_forward(x, w, b, *conf, relu=True)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    bd = cuda.to_device(b) if has_bias else None
    got = {"y": K.conv2d_forward(cuda.to_device(x), cuda.to_device(w), bd, *conf, algorithm,
                                 relu=True),
           "grad_input": K.conv2d_backward_input(cuda.to_device(gy), cuda.to_device(w), x.shape,
                                                 *conf, algorithm),
           "grad_weight": K.conv2d_backward_weight(cuda.to_device(x), cuda.to_device(gy),
                                                   w.shape, *conf, algorithm),
           "grad_bias": K.conv2d_backward_bias(cuda.to_device(gy))}
    expected = {"y": y_ref, "grad_input": ref.conv2d_backward_input(gy, w, x.shape, *conf),
                "grad_weight": ref.conv2d_backward_weight(x, gy, w.shape, *conf),
                "grad_bias": ref.conv2d_backward_bias(gy)}
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for name, value in got.items():
        value = value.copy_to_host()
        assert value.dtype == dtype and value.shape == expected[name].shape, name
        np.testing.assert_allclose(value, expected[name], rtol=rtol, atol=rtol, err_msg=name)


@pytest.mark.parametrize("case", [0, 4])
def test_max_pool2d_matches_reference(case):
    from convkit.kernels import reference as ref

    shape, *args = POOL_CASES[case]
    rng = np.random.default_rng(case)
    x = rng.integers(-2, 3, shape).astype(np.float32)  # ties in most windows
    x.reshape(-1)[::5] = np.nan
    y_ref, i_ref = ref.max_pool2d_forward(x, *args)
    y, i = K.max_pool2d_forward(cuda.to_device(x), *args)
    np.testing.assert_array_equal(i.copy_to_host(), i_ref)
    np.testing.assert_array_equal(y.copy_to_host().view(np.int32), y_ref.view(np.int32))
    gy = rng.standard_normal(y_ref.shape).astype(np.float32)
    gx = K.max_pool2d_backward(cuda.to_device(gy), i, x.shape).copy_to_host()
    np.testing.assert_allclose(gx, ref.max_pool2d_backward(gy, i_ref, x.shape), rtol=1e-6)


# --- special values bit for bit, and the launch list gpu-report compiles ----------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_special_values_bitwise(dtype, tiles):
    """NaN propagates, -0.0 stays -0.0, -inf -> +0.0; the gradient is 0 at y <= 0 (also -0.0)
    and passes at NaN, as torch's clamp_min / threshold_backward, for the dtype-typed zero."""
    x = torch.tensor([float("nan"), -0.0, 0.0, float("-inf"), float("inf"), -1.5, 2.5, -1e-40]
                     * 9, dtype=dtype)
    xr = x.clone().requires_grad_()
    y_ref = torch.relu(xr)
    gy = torch.randn_like(x)
    y_ref.backward(gy)
    y = K.relu_forward(dev(x))
    assert torch.equal(_bits(host(y)), _bits(y_ref.detach()))
    assert torch.equal(_bits(host(K.relu_backward(dev(gy), y))), _bits(xr.grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool2d_special_values_and_large_planes(dtype, tiles):
    """Planes larger than a grid-stride step (small tiles: 64 threads), so the carried
    (plane, oh, ow) wraps rows and planes; NaN, +-inf and -0.0 / 0.0 ties, bit for bit."""
    x = torch.randint(-2, 3, (2, 3, 11, 13)).to(dtype)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 0.0], dtype=dtype)
    x.view(-1)[::7] = specials.repeat(x.numel() // 35 + 1)[:len(x.view(-1)[::7])]
    for args in [((2, 2), (1, 1), (0, 0), (1, 1), False), ((3, 2), (2, 1), (1, 1), (1, 2), True)]:
        xr = x.clone().requires_grad_()
        y_ref, i_ref = F.max_pool2d(xr, *args, return_indices=True)
        gy = torch.randn_like(y_ref)
        y_ref.backward(gy)
        y, i = K.max_pool2d_forward(dev(x), *args)
        assert torch.equal(host(i), i_ref)
        assert torch.equal(_bits(host(y)), _bits(y_ref.detach()))
        gx = host(K.max_pool2d_backward(dev(gy), i, x.shape))
        torch.testing.assert_close(gx, xr.grad, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_specs_cover_every_launch(dtype, monkeypatch):
    """Every public kernel function once, both conv algorithms, tiled and fallback direct
    paths (small tiles): _launches_are_declared checks each launch against its module's
    kernel_specs (the list gpu-report compiles); here, that launches were seen at all."""
    use_small_tiles(monkeypatch)
    LAUNCHES.clear()
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal((3, 4, 6, 7)).astype(dtype))
    b = cuda.to_device(rng.standard_normal(6).astype(dtype))
    for KH, KW in ((3, 3), (5, 5)):  # 5x5 exceeds the small tiles' 9 taps: direct's fallback
        w = cuda.to_device(rng.standard_normal((6, 2, KH, KW)).astype(dtype))
        for algorithm in ("direct", "im2col"):
            for stride, dilation in (((1, 1), (1, 1)), ((2, 1), (1, 2))):
                conf = (stride, (1, 1), dilation, 2, algorithm)
                y = K.conv2d_forward(x, w, b, *conf, relu=True)
                K.conv2d_forward(x, w, None, *conf)
                K.conv2d_backward_input(y, w, x.shape, *conf)
                K.conv2d_backward_weight(x, y, w.shape, *conf)
    K.conv2d_backward_bias(y)
    K.gemm(cuda.to_device(rng.standard_normal((5, 9)).astype(dtype)),
           cuda.to_device(rng.standard_normal((9, 4)).astype(dtype)))
    r = K.relu_forward(x)
    K.relu_backward(r, r)
    p, i = K.max_pool2d_forward(r, (2, 2), (2, 2), (0, 0), (1, 1), True)
    K.max_pool2d_backward(p, i, r.shape)
    launched = {m for m, *_ in LAUNCHES}
    assert {"convkit.kernels.cuda.pool", "convkit.kernels.cuda.relu"} <= launched
    assert len({(m, name) for m, name, *_ in LAUNCHES}) >= 8


# --- tile edges, the GEMM layouts and the fused ReLU epilogue ---------------------------------

@pytest.mark.parametrize("layout", ["nn", "tn", "nt"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_edge_tiles_every_layout(layout, dtype, monkeypatch):
    """M, N, K of 1, tile-1 and tile+1 (small tiles: 8x8 blocks, 4-deep slices) with each
    operand layout launch_gemm runs: A k- or row-contiguous, B column- or k-contiguous."""
    use_small_tiles(monkeypatch)
    rng = np.random.default_rng(1)
    sizes = (1, 7, 9)  # 1, tile-1, tile+1 for M and N (tile 8) and two slices for K (4)
    for M, NC, KR in [(m, n, k) for m in sizes for n in sizes for k in (1, 3, 5, 9)]:
        a = rng.standard_normal((M, KR)).astype(dtype)
        b = rng.standard_normal((KR, NC)).astype(dtype)
        # stored as the layout says; the strides make the kernel read a and b
        a_buf = a.T.copy() if layout == "tn" else a  # tn: A row-contiguous (W^T)
        b_buf = b.T.copy() if layout == "nt" else b  # nt: B k-contiguous (cols^T)
        a_strides = (0, 0, 1, M) if layout == "tn" else (0, 0, KR, 1)
        b_strides = (0, 0, 1, KR) if layout == "nt" else (0, 0, NC, 1)
        out = cuda.to_device(np.full((M, NC), np.nan, dtype))
        tiled_gemm.launch_gemm(cuda.to_device(a_buf.ravel()), cuda.to_device(b_buf.ravel()),
                               out.reshape(M * NC), M, NC, KR, 1, a=a_strides, b=b_strides,
                               c=(0, NC))
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out.copy_to_host(), a.astype(np.float64) @ b, rtol=rtol,
                                   atol=rtol, err_msg=f"{layout} M={M} N={NC} K={KR}")


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("out_hw,channels", [((1, 1), (1, 1)), ((3, 3), (3, 1)),
                                             ((5, 5), (1, 3)), ((5, 3), (3, 3))])
def test_conv2d_tile_edges(out_hw, channels, algorithm, monkeypatch):
    """Outputs of 1, tile-1 and tile+1 pixels a side (small tiles: 4x4 direct tiles of 2x2 per
    thread, 8x8 GEMM tiles) and channel counts of 1 and channel block + 1, all three passes."""
    use_small_tiles(monkeypatch)
    (OH, OW), (C, Kc) = out_hw, channels
    x = torch.randn(2, C, OH, OW, dtype=torch.float64)
    w = torch.randn(Kc, C, 3, 3, dtype=torch.float64)
    b = torch.randn(Kc, dtype=torch.float64)
    gy = torch.randn(2, Kc, OH, OW, dtype=torch.float64)
    y_ref, gx_ref, gw_ref, _ = _conv_reference(x, w, b, (1, 1), (1, 1), (1, 1), 1, gy)
    args = ((1, 1), (1, 1), (1, 1), 1, algorithm)
    torch.testing.assert_close(host(K.conv2d_forward(dev(x), dev(w), dev(b), *args)), y_ref,
                               **tol(torch.float64))
    torch.testing.assert_close(host(K.conv2d_backward_input(dev(gy), dev(w), x.shape, *args)),
                               gx_ref, **tol(torch.float64))
    torch.testing.assert_close(host(K.conv2d_backward_weight(dev(x), dev(gy), w.shape, *args)),
                               gw_ref, **tol(torch.float64))


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_relu_epilogue_bitwise(algorithm, dtype, bias, monkeypatch):
    """relu=True applies bias and ReLU in the conv kernels as y is stored: bit for bit
    torch.relu of the same kernels' plain output (NaN kept, negatives -> +0.0), groups and
    strides included, and torch's relu(conv2d) within rounding."""
    use_small_tiles(monkeypatch)
    x = torch.randn(2, 4, 7, 6, dtype=dtype)
    x[0, 1, 2, 3] = float("nan")  # NaN outputs around it
    w = torch.randn(6, 2, 3, 3, dtype=dtype)
    b = torch.randn(6, dtype=dtype) if bias else None
    args = ((2, 1), (1, 1), (1, 1), 2, algorithm)
    db = dev(b) if bias else None
    plain = host(K.conv2d_forward(dev(x), dev(w), db, *args))
    fused = host(K.conv2d_forward(dev(x), dev(w), db, *args, relu=True))
    assert torch.equal(_bits(fused), _bits(torch.relu(plain)))
    assert fused.isnan().any() and (plain < 0).any() and not torch.signbit(fused[plain < 0]).any()
    ref = torch.relu(F.conv2d(x, w, b, (2, 1), (1, 1), (1, 1), 2))
    torch.testing.assert_close(fused, ref, equal_nan=True, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_epilogue_relu_value_special_values(dtype):
    """The device-side ReLU rule of the conv epilogues, bit for bit as torch.relu: NaN kept,
    -0.0 kept, -inf and negatives -> +0.0 of the dtype."""
    from convkit.kernels.cuda.epilogue import relu_value

    zero_type = numpy_support.from_dtype(np.dtype(dtype))

    @cuda.jit
    def apply(a, out):
        i = cuda.grid(1)
        if i < a.size:
            out[i] = relu_value(a[i], zero_type(0))

    values = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -1.5, 2.5, -1e-40], dtype)
    out = cuda.to_device(np.zeros_like(values))
    apply[1, 8](cuda.to_device(values), out)
    ref = torch.relu(torch.from_numpy(values))
    assert torch.equal(_bits(torch.from_numpy(out.copy_to_host())), _bits(ref))

