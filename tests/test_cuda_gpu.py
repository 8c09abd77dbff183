"""convkit on real CUDA tensors, checked against torch's CUDA ops (cuDNN, TF32 off).

Marked ``gpu`` and skipped unless torch sees a CUDA device (and numba.cuda can use it). One extra
test needs no GPU, only numba-cuda with NVVM (``pip install 'numba-cuda[cu12]'``): it compiles
every kernel for sm_90 and, when ptxas is installed, checks that no kernel spills registers.
"""
import copy
import os
import shutil
import subprocess
import tempfile

import pytest
import torch
import torch.nn.functional as F

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
HAS_GPU = torch.cuda.is_available() and not SIMULATOR
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU visible to torch")


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(autouse=True)
def _no_tf32():
    if not HAS_GPU:
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# (N, C, H, W, K, KH, KW, stride, padding, dilation, groups, bias)
CONV_CASES = [
    (8, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, True),  # SimpleCNN conv2 at batch 8
    (4, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, True),  # SimpleCNN conv1
    (3, 6, 17, 23, 10, 5, 3, (2, 1), (2, 0), (1, 2), 2, False),
    (2, 16, 20, 20, 16, 3, 3, 2, 1, 1, 16, True),  # depthwise
    (2, 8, 70, 70, 130, 3, 3, 1, 0, 1, 1, True),  # several GEMM tiles in every dimension
    (2, 3, 30, 40, 4, 9, 9, 3, 4, 2, 1, True),  # window larger than the shared tiles
    (2, 9, 17, 17, 9, 3, 3, 1, 1, 1, 1, True),  # direct tile + 1 pixel, channel block + 1
    (1, 3, 15, 16, 129, 3, 3, 1, 1, 1, 1, False),  # GEMM: M = tile + 1, N = P = 240
    (2, 4, 40, 50, 4, 9, 9, 1, 4, 1, 1, True),  # 81 taps: direct stages a filter row at a time
    (2, 4, 20, 60, 6, 3, 5, (1, 3), (1, 2), (1, 2), 2, True),  # stride 3: columns one by one
    (3, 8, 9, 9, 8, 5, 5, 2, 2, 1, 8, False),  # depthwise 5x5 stride 2: several tap groups
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_matches_cudnn(case, algorithm, dtype):
    import convkit.functional as CF

    N, C, H, W, K, KH, KW, stride, padding, dilation, G, has_bias = CONV_CASES[case]
    dev = torch.device("cuda")
    x = torch.randn(N, C, H, W, dtype=dtype, device=dev, requires_grad=True)
    w = torch.randn(K, C // G, KH, KW, dtype=dtype, device=dev, requires_grad=True)
    b = torch.randn(K, dtype=dtype, device=dev, requires_grad=True) if has_bias else None
    y_ref = F.conv2d(x, w, b, stride, padding, dilation, G)
    gy = torch.randn_like(y_ref)
    refs = torch.autograd.grad(y_ref, [t for t in (x, w, b) if t is not None], gy)
    y = CF.conv2d(x, w, b, stride, padding, dilation, G, algorithm=algorithm)
    assert y.device == dev and y.dtype == dtype
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    torch.testing.assert_close(y, y_ref, **tol(dtype))
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), got, refs):
        torch.testing.assert_close(g, r, **tol(dtype), msg=name)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_results_are_deterministic(algorithm):
    import convkit.functional as CF

    x = torch.randn(16, 32, 14, 14, device="cuda", requires_grad=True)
    w = torch.randn(64, 32, 3, 3, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        y = CF.conv2d(x, w, None, 1, 1, algorithm=algorithm)
        runs.append((y, *torch.autograd.grad(y.square().sum(), (x, w))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("args", [(3, 2, 1, 1, True), (2, None, 0, 1, False),
                                  ((3, 2), (2, 1), (1, 0), (2, 1), False)])
def test_max_pool2d_and_relu_match_torch(args, dtype):
    import convkit.functional as CF

    x = torch.randn(4, 8, 21, 19, dtype=dtype, device="cuda", requires_grad=True)
    y_ref, i_ref = F.max_pool2d(x, *args[:4], ceil_mode=args[4], return_indices=True)
    y, i = CF.max_pool2d(x, *args[:4], ceil_mode=args[4], return_indices=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    assert torch.equal(i, i_ref)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0],
                               torch.autograd.grad(y_ref, x, gy)[0], **tol(dtype))
    r_ref, r = torch.relu(x), CF.relu(x)
    torch.testing.assert_close(r, r_ref, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(r, x, gy.new_ones(r.shape))[0],
                               torch.autograd.grad(r_ref, x, gy.new_ones(r.shape))[0])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simple_cnn_converted_matches_torch(algorithm, dtype):
    import convkit
    from convkit.models import SimpleCNN

    torch.manual_seed(0)
    model = SimpleCNN("torch", seed=0).to("cuda", dtype).eval()  # eval: no dropout to match
    ours = convkit.convert(copy.deepcopy(model), algorithm=algorithm)
    assert not any(type(m) in (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d)
                   for m in ours.modules()), "convert() left a torch layer in place"
    x = torch.randn(16, 1, 28, 28, dtype=dtype, device="cuda")
    target = torch.randint(0, 10, (16,), device="cuda")
    loss_ref = F.cross_entropy(model(x), target)
    loss_ref.backward()
    loss = F.cross_entropy(ours(x), target)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, **tol(dtype))
    for (name, p), q in zip(model.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **tol(dtype), msg=name)


@gpu
@pytest.mark.gpu
def test_runs_on_a_side_stream_without_host_sync():
    """Ops enqueue on torch's current stream: results are right after that stream syncs."""
    import convkit.functional as CF

    x = torch.randn(8, 16, 32, 32, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = CF.max_pool2d(CF.relu(CF.conv2d(x, w, None, 1, 1, algorithm="im2col")), 2)
    s.synchronize()
    torch.testing.assert_close(y, F.max_pool2d(F.relu(F.conv2d(x, w, None, 1, 1)), 2),
                               **tol(torch.float32))


def _kernel_signatures():
    """Every kernel at every launch signature, as the package declares them (kernel_specs)."""
    import numpy as np

    from convkit.kernels.cuda import kernel_specs

    for dtype in (np.float32, np.float64):
        for spec in kernel_specs(dtype):
            yield f"{spec.name} ({np.dtype(dtype).name})", spec.kernel, spec.argtypes


def _ptxas():
    try:
        import nvidia.cuda_nvcc  # noqa: F401  (the pip CUDA toolkit of numba-cuda[cu12])
        path = os.path.join(list(nvidia.cuda_nvcc.__path__)[0], "bin", "ptxas")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("ptxas")


try:  # numba-cuda without its [cu12] wheels cannot find NVRTC/NVVM: nothing to compile with
    from cuda.pathfinder import DynamicLibNotFoundError as _LibraryNotFound
except ImportError:
    _LibraryNotFound = OSError


@pytest.mark.skipif(SIMULATOR, reason="compiles real PTX; not under the simulator")
def test_every_kernel_compiles_for_sm90_without_spills():
    from numba import cuda
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    ptxas = _ptxas()
    compiled = []
    for name, kernel, sig in _kernel_signatures():
        try:
            bounds = (getattr(kernel, "targetoptions", {}) or {}).get("launch_bounds")
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0), launch_bounds=bounds)
        except (CudaSupportError, NvvmSupportError, OSError, _LibraryNotFound) as e:
            pytest.skip(f"numba.cuda cannot compile PTX here (no NVVM/toolkit: {e!s:.80})")
        compiled.append((name, ptx))
    assert compiled, "no CUDA kernel signatures to compile"
    if ptxas is None:
        pytest.skip(f"all {len(compiled)} kernels compiled to sm_90 PTX; spills not checked: "
                    "ptxas not found (pip install nvidia-cuda-nvcc-cu12, or the CUDA toolkit)")
    for name, ptx in compiled:
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            r = subprocess.run([ptxas, "-arch=sm_90", "-v", src, "-o", os.devnull],
                               capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: ptxas failed\n{r.stderr[-2000:]}"
        assert "0 bytes spill stores" in r.stderr, f"{name} spills registers:\n{r.stderr}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_on_the_gpu(algorithm, dtype):
    """float16 / bfloat16 CUDA tensors: computed in float32 on the GPU, rounded once."""
    import convkit.functional as CF
    from convkit.testing import assert_close_rounded

    dev = torch.device("cuda")
    x = torch.randn(4, 8, 12, 12, device=dev).to(dtype).requires_grad_()
    w = (torch.randn(16, 8, 3, 3, device=dev) * 0.3).to(dtype).requires_grad_()
    y = CF.conv2d(x, w, padding=1, algorithm=algorithm)
    assert y.dtype == dtype and y.device == dev
    # the float32 computation on the same (rounded) values, rounded once: output and gradients
    x32 = x.detach().float().requires_grad_()
    w32 = w.detach().float().requires_grad_()
    y32 = F.conv2d(x32, w32, padding=1)
    assert_close_rounded(y, y32, what="output")
    grad = torch.randn_like(y)
    y.backward(grad)
    y32.backward(grad.float())
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert_close_rounded(x.grad, x32.grad, what="grad_input")
    assert_close_rounded(w.grad, w32.grad, what="grad_weight")
    p, i = CF.max_pool2d(CF.relu(x.detach()), 2, return_indices=True)
    rp, ri = F.max_pool2d(F.relu(x.detach()), 2, return_indices=True)
    assert p.dtype == dtype and torch.equal(p, rp) and torch.equal(i, ri)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_edge_tiles_match_torch(dtype):
    """convkit's GEMM at M, N, K of 1, tile-1, tile and tile+1 (fp32 tiles 128, fp64 64)."""
    from convkit.kernels.cuda import gemm
    from convkit.kernels.cuda.tiled_gemm import GEMM_TILES

    t = GEMM_TILES["f" if dtype == torch.float32 else "d"].TM
    sizes = (1, t - 1, t, t + 1)
    for M in sizes:
        for N in sizes:
            for K in (1, 7, 9, t + 1):
                a = torch.randn(M, K, dtype=dtype, device="cuda")
                b = torch.randn(K, N, dtype=dtype, device="cuda")
                out = torch.empty(M, N, dtype=dtype, device="cuda")
                gemm(a, b, out)
                torch.cuda.synchronize()
                torch.testing.assert_close(out, a @ b, **tol(dtype), msg=f"{M}x{K}x{N}")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_relu_epilogue_on_the_gpu(algorithm, dtype):
    """conv2d_relu: bias and ReLU applied as the conv kernels store y, bit for bit
    torch.relu of convkit's own conv2d (NaN kept, negatives -> +0.0), and cuDNN's within
    rounding."""
    import convkit.functional as CF

    x = torch.randn(4, 6, 19, 21, dtype=dtype, device="cuda")
    x[1, 2, 5, 5] = float("nan")
    w = torch.randn(10, 3, 3, 3, dtype=dtype, device="cuda")
    b = torch.randn(10, dtype=dtype, device="cuda")
    args = (b, (2, 1), 1, 1, 2)
    fused = CF.conv2d_relu(x, w, *args, algorithm=algorithm)
    plain = CF.conv2d(x, w, *args, algorithm=algorithm)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(fused.view(bits), torch.relu(plain).view(bits))
    torch.testing.assert_close(fused, torch.relu(F.conv2d(x, w, *args)), equal_nan=True,
                               **tol(dtype))

