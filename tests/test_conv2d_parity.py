"""conv2d outputs and all three gradients against torch.nn.functional.conv2d.

The grid is drawn (seeded) from the ranges of the issue: batch 1-4, channels 1-8, sizes 1-17
(non-square), kernels 1-5 (non-square), stride 1-3, padding 0-2 / 'same' / 'valid', dilation 1-2,
groups 1 / 2 / depthwise, bias on/off; each case runs for both algorithms and both dtypes, with a
non-contiguous input every third case. The reference is torch in float64.
"""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import draw_conv_geometry

import convkit.functional as CF


def _draw_cases(n_cases, seed=2026):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n_cases:
        N, C, H, W, K, G, KH, KW = draw_conv_geometry(rng)
        dil = (rng.randint(1, 2), rng.randint(1, 2))
        pad_kind = rng.choice(["int", "int", "pair", "same", "valid"])
        stride = (1, 1) if pad_kind == "same" else (rng.randint(1, 3), rng.randint(1, 3))
        if pad_kind == "int":
            padding = rng.randint(0, 2)
            pads = (padding, padding)
        elif pad_kind == "pair":
            padding = (rng.randint(0, 2), rng.randint(0, 2))
            pads = padding
        else:
            padding = pad_kind
            pads = (dil[0] * (KH - 1), dil[1] * (KW - 1)) if pad_kind == "same" else (0, 0)
            pads = (pads[0] // 2 + pads[0] % 2, pads[1] // 2 + pads[1] % 2) \
                if pad_kind == "same" else pads
        # the padded input must hold the dilated kernel
        if H + 2 * pads[0] < dil[0] * (KH - 1) + 1 or W + 2 * pads[1] < dil[1] * (KW - 1) + 1:
            continue
        if pad_kind == "same" and (H + dil[0] * (KH - 1) < dil[0] * (KH - 1) + 1):
            continue
        cases.append(dict(N=N, C=C, H=H, W=W, K=K, KH=KH, KW=KW, stride=stride,
                          padding=padding, dilation=dil, groups=G, bias=rng.random() < 0.6,
                          noncontig=len(cases) % 3 == 0))
    return cases


EDGE_CASES = [
    # 1x1 input, 1x1 kernel; kernel exactly the padded input; SimpleCNN-like layers; depthwise
    # with channel multiplier; big stride leaving most input unread; even kernel 'same'.
    dict(N=1, C=1, H=1, W=1, K=1, KH=1, KW=1, stride=(1, 1), padding=0, dilation=(1, 1),
         groups=1, bias=True, noncontig=False),
    dict(N=2, C=3, H=3, W=2, K=2, KH=5, KW=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         groups=1, bias=False, noncontig=False),
    dict(N=4, C=1, H=28, W=28, K=8, KH=3, KW=3, stride=(1, 1), padding=1, dilation=(1, 1),
         groups=1, bias=True, noncontig=False),
    dict(N=2, C=8, H=14, W=14, K=16, KH=3, KW=3, stride=(1, 1), padding=1, dilation=(1, 1),
         groups=1, bias=True, noncontig=True),
    dict(N=2, C=4, H=9, W=7, K=12, KH=3, KW=3, stride=(2, 2), padding=1, dilation=(1, 1),
         groups=4, bias=True, noncontig=False),
    dict(N=1, C=2, H=17, W=16, K=2, KH=2, KW=2, stride=(3, 3), padding=0, dilation=(1, 1),
         groups=1, bias=False, noncontig=False),
    dict(N=2, C=2, H=8, W=9, K=3, KH=4, KW=2, stride=(1, 1), padding="same", dilation=(1, 2),
         groups=1, bias=True, noncontig=False),
    dict(N=3, C=6, H=11, W=13, K=6, KH=5, KW=5, stride=(1, 2), padding=2, dilation=(2, 2),
         groups=3, bias=True, noncontig=True),
    # >= 8 channels per group on both sides: the direct kernel's channel-inner loop order, and
    # its stride-1 backward-input as a flipped-filter forward (incl. padding beyond the kernel
    # extent, which falls back to the plane loop order)
    dict(N=2, C=16, H=9, W=10, K=32, KH=3, KW=2, stride=(1, 1), padding=(1, 2),
         dilation=(2, 1), groups=2, bias=True, noncontig=False),
    dict(N=2, C=8, H=12, W=11, K=16, KH=3, KW=3, stride=(2, 3), padding=(2, 1),
         dilation=(1, 2), groups=1, bias=True, noncontig=True),
    dict(N=1, C=9, H=7, W=6, K=8, KH=1, KW=2, stride=(1, 1), padding=(1, 2), dilation=(1, 1),
         groups=1, bias=False, noncontig=False),
    dict(N=2, C=8, H=6, W=6, K=8, KH=5, KW=5, stride=(1, 1), padding="same", dilation=(1, 1),
         groups=1, bias=True, noncontig=False),
    # strided backward-input with >= 8 channels per group: the row-gathering channel-inner kernel
    dict(N=2, C=16, H=9, W=8, K=16, KH=3, KW=3, stride=(2, 2), padding=1, dilation=(1, 1),
         groups=2, bias=False, noncontig=False),
    # ... and with few input but >= 8 output channels per group (a network's stem): dot products
    # over the output channels
    dict(N=2, C=3, H=13, W=12, K=16, KH=5, KW=5, stride=(2, 2), padding=2, dilation=(1, 1),
         groups=1, bias=True, noncontig=False),
    dict(N=2, C=4, H=9, W=10, K=16, KH=3, KW=2, stride=(1, 2), padding=(0, 1),
         dilation=(2, 1), groups=2, bias=False, noncontig=True),
]

CASES = _draw_cases(110) + EDGE_CASES


def _case_id(c):
    pad = c["padding"] if isinstance(c["padding"], str) else c["padding"]
    return (f"N{c['N']}C{c['C']}x{c['H']}x{c['W']}-K{c['K']}k{c['KH']}x{c['KW']}-s{c['stride']}"
            f"-p{pad}-d{c['dilation']}-g{c['groups']}-b{int(c['bias'])}"
            f"{'-nc' if c['noncontig'] else ''}").replace(" ", "")


def _make(c, dtype):
    if c["noncontig"]:  # a transposed view: same values, strides (.., 1, W) swapped
        x = torch.randn(c["N"], c["C"], c["W"], c["H"], dtype=dtype).transpose(2, 3)
    else:
        x = torch.randn(c["N"], c["C"], c["H"], c["W"], dtype=dtype)
    w = torch.randn(c["K"], c["C"] // c["groups"], c["KH"], c["KW"], dtype=dtype)
    b = torch.randn(c["K"], dtype=dtype) if c["bias"] else None
    return x, w, b


def _grads(fn, x, w, b, gy_seed):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = fn(x, w, b)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(gy_seed),
                     dtype=torch.float64).to(y.dtype)
    y.backward(gy)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_conv2d_matches_torch(case, algorithm, dtype):
    x, w, b = _make(case, dtype)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    ours = _grads(lambda x, w, b: CF.conv2d(x, w, b, *args, algorithm=algorithm), x, w, b, 1)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, *args),
                 x.double(), w.double(), None if b is None else b.double(), 1)
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    for name, o, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        if r is None:
            assert o is None
            continue
        assert o.dtype == dtype and o.shape == r.shape, name
        torch.testing.assert_close(o, r.to(dtype), **tol, msg=lambda m, n=name: f"{n}: {m}")


def _cblas_or_skip(pipeline):
    from convkit.kernels.cpu.conv_im2col import cblas_workers

    if pipeline == "cblas" and not cblas_workers.available(np.float64):
        pytest.skip("numpy's BLAS has no ILP64 OpenBLAS cblas here")


def test_conv2d_im2col_cblas_pipeline_covers_both_dtypes(monkeypatch):
    # where numpy's OpenBLAS exposes cblas, float32 and float64 both take the cblas-worker
    # pipeline by default (the other parity tests then exercise it; the numpy one below)
    from convkit.kernels.cpu import conv_im2col
    from convkit.kernels.cpu.conv_im2col import cblas_workers

    _cblas_or_skip("cblas")
    monkeypatch.delenv(conv_im2col.PIPELINE_ENV, raising=False)
    for dtype in (np.float32, np.float64):
        assert conv_im2col.pipeline_for(dtype, 1, 1, 1, 1) is cblas_workers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES[::6], ids=[_case_id(c) for c in CASES[::6]])
def test_conv2d_im2col_numpy_pipeline(monkeypatch, case, dtype):
    # CONVKIT_IM2COL_PIPELINE=numpy: im2col's GEMMs run as numpy.matmul on convkit's own threads
    # (what runs where numpy's BLAS exposes no cblas): same numbers
    from convkit.kernels.cpu import conv_im2col
    from convkit.kernels.cpu.conv_im2col import numpy_matmul

    monkeypatch.setenv(conv_im2col.PIPELINE_ENV, "numpy")
    assert conv_im2col.pipeline_for(np.float32, 1, 1, 1, 1) is numpy_matmul
    test_conv2d_matches_torch(case, "im2col", dtype)


def test_im2col_pipeline_choice(monkeypatch):
    from convkit.kernels.cpu import conv_im2col
    from convkit.kernels.cpu.conv_im2col import cblas_workers, numpy_matmul
    from convkit.runtime import blas

    env = conv_im2col.PIPELINE_ENV
    choose = conv_im2col.pipeline_for
    monkeypatch.delenv(env, raising=False)
    auto = cblas_workers if cblas_workers.available(np.float32) else numpy_matmul
    assert choose(np.float32, 2, 3, 4, 5) is auto
    assert choose(np.float32, 0, 3, 4, 5) is numpy_matmul  # no GEMM to run
    assert choose(np.float32, 2, 3, 4, 5, pipeline="numpy") is numpy_matmul
    monkeypatch.setenv(env, "numpy")
    assert choose(np.float32, 2, 3, 4, 5) is numpy_matmul
    assert choose(np.float32, 2, 3, 4, 5, pipeline="auto") is auto  # the keyword wins
    monkeypatch.setenv(env, "fast")
    with pytest.raises(ValueError, match=f"{env} must be 'auto', 'cblas' or 'numpy', got 'fast'"):
        choose(np.float32, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="pipeline must be .* got 'gpu'"):
        choose(np.float32, 2, 3, 4, 5, pipeline="gpu")
    # a numpy whose BLAS has no cblas: auto falls back, an explicit cblas says why it cannot
    monkeypatch.delenv(env)
    monkeypatch.setattr(blas, "gemm_address", lambda char: None)
    assert choose(np.float64, 2, 3, 4, 5) is numpy_matmul
    with pytest.raises(ValueError, match="no ILP64 cblas_.gemm for float64"):
        choose(np.float64, 2, 3, 4, 5, pipeline="cblas")


@pytest.mark.parametrize("algorithm", ["auto", "direct", "im2col"])
def test_conv2d_unbatched_input(algorithm):
    x, w, b = torch.randn(3, 9, 8), torch.randn(5, 3, 3, 3), torch.randn(5)
    y = CF.conv2d(x, w, b, padding=1, algorithm=algorithm)
    assert y.shape == (5, 9, 8)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_empty_batch(algorithm):
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = CF.conv2d(x, w, algorithm=algorithm)
    assert y.shape == F.conv2d(x, w).shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_hand_computed(algorithm):
    # the tutorial's 5x5 image and 3x3 edge kernel; each value worked by hand, e.g. the top-left
    # window 1 2 3 / 4 5 6 / 7 8 9 gives 8*5 - (45 - 5) = 0.
    x = torch.tensor([[1, 2, 3, 0, 1], [4, 5, 6, 1, 2], [7, 8, 9, 2, 3], [1, 2, 3, 4, 5],
                      [2, 3, 4, 5, 6]], dtype=torch.float64)[None, None]
    k = -torch.ones(3, 3, dtype=torch.float64)
    k[1, 1] = 8
    y = CF.conv2d(x, k[None, None], algorithm=algorithm)[0, 0]
    expected = torch.tensor([[0, 18, -18], [27, 41, -17], [-21, -13, -5]], dtype=torch.float64)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_nan_and_inf_propagate(algorithm):
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 5, 5] = float("inf")
    w = torch.randn(3, 2, 3, 3)
    ref = F.conv2d(x, w, padding=1)
    y = CF.conv2d(x, w, padding=1, algorithm=algorithm)
    torch.testing.assert_close(y, ref, equal_nan=True, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pipeline", ["cblas", "numpy"])
def test_conv2d_im2col_blocks_and_workers(monkeypatch, pipeline):
    # a block budget of one image and three GEMM workers: one GEMM per image, images handed out
    # to whichever thread asks first, per-block partial weight gradients summed; results must
    # not change
    from convkit.kernels.cpu import conv_im2col
    from convkit.kernels.cpu.conv_im2col import unfold
    from convkit.runtime import blas

    _cblas_or_skip(pipeline)
    monkeypatch.setenv(conv_im2col.PIPELINE_ENV, pipeline)
    x, w, b = torch.randn(5, 3, 9, 9, dtype=torch.float64), \
        torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    monkeypatch.setattr(unfold, "IM2COL_BLOCK_BYTES", 1)
    monkeypatch.setattr(blas, "workers", lambda flops: 3)
    ours = _grads(lambda x, w, b: CF.conv2d(x, w, b, padding=1, algorithm="im2col"), x, w, b, 3)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, 3)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r)


@pytest.mark.parametrize("pipeline", ["cblas", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_im2col_weight_gradient_is_deterministic(monkeypatch, dtype, pipeline):
    # blocks go to whichever worker is free, so the reduction order must not follow the
    # workers: 1 or 3 workers, bitwise the same weight gradient every time
    from convkit.kernels.cpu import conv_im2col
    from convkit.kernels.cpu.conv_im2col import unfold
    from convkit.runtime import blas

    _cblas_or_skip(pipeline)
    x = torch.randn(9, 4, 11, 11, dtype=dtype).numpy()
    gy = torch.randn(9, 6, 11, 11, dtype=dtype).numpy()
    monkeypatch.setattr(unfold, "IM2COL_BLOCK_BYTES", 1)
    results = []
    for threads in (1, 3, 3, 2):
        monkeypatch.setattr(blas, "workers", lambda flops, t=threads: t)
        results.append(conv_im2col.backward_weight(x, gy, (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1,
                                                   pipeline=pipeline))
    for r in results[1:]:
        assert r.tobytes() == results[0].tobytes()
    gw = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (6, 4, 3, 3),
                                     torch.from_numpy(gy).double(), padding=1)
    torch.testing.assert_close(torch.from_numpy(results[0]).double(), gw,
                               atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-5)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_conv2d_output_shares_memory_with_kernel_result(monkeypatch, requires_grad):
    # the layers above the kernel (engine, autograd) wrap its numpy result without a copy:
    # the output tensor's data is the very buffer the kernel returned
    from convkit.engine.cpu import CPU_ENGINE

    results = []
    kernel = CPU_ENGINE._conv_kernels["forward"]

    def recording_kernel(*args, **kwargs):
        results.append(kernel(*args, **kwargs))
        return results[-1]

    monkeypatch.setitem(CPU_ENGINE._conv_kernels, "forward", recording_kernel)
    x = torch.randn(2, 3, 5, 5, requires_grad=requires_grad)
    w = torch.randn(4, 3, 3, 3, requires_grad=requires_grad)
    y = CF.conv2d(x, w, algorithm="direct")
    assert len(results) == 1 and isinstance(results[0], np.ndarray)
    out = results[0]
    assert y.data_ptr() == out.ctypes.data
    assert tuple(y.shape) == out.shape
    assert tuple(s * y.element_size() for s in y.stride()) == out.strides
    assert np.shares_memory(y.detach().numpy(), out)


# (x shape, w shape, padding, dilation, groups, takes the forward pipeline)
BWD_INPUT_ROUTES = [
    ((2, 8, 9, 10), (8, 8, 3, 3), (1, 1), (1, 1), 1, True),  # K == C
    ((2, 12, 9, 10), (6, 6, 3, 2), (2, 0), (1, 2), 2, True),  # K < C, groups, dilation
    ((2, 8, 9, 10), (8, 8, 3, 3), (3, 0), (1, 1), 1, False),  # padding past d*(k-1)
    ((2, 4, 9, 10), (8, 4, 3, 3), (1, 1), (1, 1), 1, False),  # more output channels
    ((2, 8, 9, 10), (8, 8, 1, 1), (0, 0), (1, 1), 1, False),  # 1x1: col2im is a copy
]


@pytest.mark.parametrize("pipeline", ["cblas", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("route", BWD_INPUT_ROUTES)
def test_im2col_backward_input_routes(monkeypatch, route, dtype, pipeline):
    """Stride-1 im2col backward-input with K <= C runs the forward pipeline on grad_output with
    the transposed filter; every route matches torch's input gradient."""
    from convkit.kernels.cpu import conv_im2col

    _cblas_or_skip(pipeline)
    monkeypatch.setenv(conv_im2col.PIPELINE_ENV, pipeline)
    xs, ws, padding, dilation, groups, forward_route = route
    taken = []
    real = conv_im2col.forward
    monkeypatch.setattr(conv_im2col, "forward",
                        lambda *a, **k: taken.append(1) or real(*a, **k))
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    w = torch.randn(ws, dtype=dtype)
    y = CF.conv2d(x, w, None, 1, padding, dilation, groups, algorithm="im2col")
    taken.clear()
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    assert bool(taken) == forward_route
    xr = x.detach().requires_grad_()
    (ref,) = torch.autograd.grad(F.conv2d(xr, w, None, 1, padding, dilation, groups), xr, gy)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gx, ref, **tol)


# --- every direct version and both im2col pipelines called on their own ------------------------
# (not only on the shapes the dispatch tables pick them for): each has its pass's signature

def _numpy_case(case, dtype):
    """(x, w, b, gy, conf) as contiguous numpy arrays, conf = (stride, padding, dilation, groups)
    with the case's padding resolved to its symmetric part; None if that leaves no output."""
    from convkit.kernels.shapes import conv2d_padding, conv_output_size

    x, w, b = _make(case, dtype)
    pads, _ = conv2d_padding(case["padding"], (case["KH"], case["KW"]), case["stride"],
                             case["dilation"])
    out_hw = [conv_output_size(x.shape[2 + i], w.shape[2 + i], case["stride"][i], pads[i],
                               case["dilation"][i]) for i in range(2)]
    if min(out_hw) < 1:
        return None
    gy = torch.randn((case["N"], case["K"], *out_hw), dtype=dtype)
    arrays = [None if t is None else t.contiguous().numpy() for t in (x, w, b, gy)]
    return (*arrays, (case["stride"], pads, case["dilation"], case["groups"]))


def _torch_pass_results(x, w, b, gy, conf):
    """torch in float64: y, relu(y), grad_input, grad_weight."""
    stride, padding, dilation, groups = conf
    xt, wt = (torch.from_numpy(a).double().requires_grad_() for a in (x, w))
    bt = None if b is None else torch.from_numpy(b).double()
    y = F.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    gx, gw = torch.autograd.grad(y, (xt, wt), torch.from_numpy(gy).double())
    return y.detach(), torch.relu(y.detach()), gx, gw


def _direct_versions(w_shape, conf):
    """Every direct version that applies to this problem, by pass."""
    from convkit.kernels.cpu import conv_direct as D
    from convkit.kernels.cpu.conv_common import transposed_padding

    stride, padding, dilation, _ = conf
    forward = [D.forward_plane.forward, D.forward_kinner.forward]
    backward_input = [D.backward_input_plane.backward_input, D.backward_input_cinner.backward_input,
                      D.backward_input_kdot.backward_input]
    if tuple(stride) == (1, 1):
        forward.append(D.forward_shifted.forward)
        if min(transposed_padding(w_shape, padding, dilation)) >= 0:
            backward_input += [D.forward_kinner.backward_input, D.forward_shifted.backward_input]
    return dict(forward=forward, backward_input=backward_input,
                backward_weight=[D.backward_weight_plane.backward_weight,
                                 D.backward_weight_kinner.backward_weight])


def _version(fn):
    """'forward_kinner.backward_input' for that function."""
    return f"{fn.__module__.rpartition('.')[2]}.{fn.__name__}"


def _check_pass_functions(versions, case, dtype):
    """Each function ``versions(w.shape, conf)`` lists, by pass, against torch in float64."""
    data = _numpy_case(case, dtype)
    if data is None:
        pytest.skip("no output with the symmetric part of this padding")
    x, w, b, gy, conf = data
    y, y_relu, gx, gw = _torch_pass_results(*data)
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)

    def check(name, fn, got, ref):
        got = torch.from_numpy(got)
        assert got.dtype == dtype and got.shape == ref.shape, (name, _version(fn))
        torch.testing.assert_close(got.double(), ref, **tol,
                                   msg=lambda m: f"{_version(fn)} {name}: {m}")

    fns = versions(w.shape, conf)
    for fn in fns["forward"]:
        check("y", fn, fn(x, w, b, *conf, tuple(y.shape[2:])), y)
        check("relu(y)", fn, fn(x, w, b, *conf, tuple(y.shape[2:]), relu=True), y_relu)
    for fn in fns["backward_input"]:
        check("grad_input", fn, fn(gy, w, x.shape, *conf), gx)
    for fn in fns["backward_weight"]:
        check("grad_weight", fn, fn(x, gy, w.shape, *conf), gw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES[::3], ids=[_case_id(c) for c in CASES[::3]])
def test_direct_every_version_matches_torch(case, dtype):
    _check_pass_functions(_direct_versions, case, dtype)


@pytest.mark.parametrize("pipeline", ["cblas", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES[1::6], ids=[_case_id(c) for c in CASES[1::6]])
def test_im2col_pipeline_modules_match_torch(case, dtype, pipeline):
    from convkit.kernels.cpu.conv_im2col import PIPELINES

    _cblas_or_skip(pipeline)
    module = PIPELINES[pipeline]
    _check_pass_functions(lambda w_shape, conf: dict(forward=[module.forward],
                                                     backward_input=[module.backward_input],
                                                     backward_weight=[module.backward_weight]),
                          case, dtype)


# (filter shape, stride, padding, dilation, groups, forward, backward-input, backward-weight)
DIRECT_TABLE = [
    ((32, 1, 5, 5), (1, 1), (2, 2), (1, 1), 1,  # SimpleCNN conv1
     "forward_shifted", "backward_input_kdot", "backward_weight_kinner"),
    ((64, 32, 5, 5), (1, 1), (2, 2), (1, 1), 1,  # SimpleCNN conv2
     "forward_kinner", "forward_kinner", "backward_weight_kinner"),
    ((32, 1, 3, 3), (1, 1), (1, 1), (1, 1), 32,  # depthwise
     "forward_shifted", "forward_shifted", "backward_weight_plane"),
    ((32, 1, 3, 3), (2, 2), (1, 1), (1, 1), 32,  # strided depthwise
     "forward_plane", "backward_input_plane", "backward_weight_plane"),
    ((128, 64, 3, 3), (2, 2), (1, 1), (1, 1), 1,  # strided ResNet 3x3
     "forward_kinner", "backward_input_cinner", "backward_weight_kinner"),
    ((64, 3, 7, 7), (2, 2), (3, 3), (1, 1), 1,  # stem
     "forward_kinner", "backward_input_kdot", "backward_weight_kinner"),
    ((8, 8, 3, 3), (1, 1), (3, 0), (1, 1), 1,  # padding past the kernel: no transposed forward
     "forward_kinner", "backward_input_cinner", "backward_weight_kinner"),
    ((4, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1,  # 8 in, 4 out channels
     "forward_plane", "forward_kinner", "backward_weight_plane"),
]


@pytest.mark.parametrize("row", DIRECT_TABLE,
                         ids=["w{}x{}x{}x{}-s{}".format(*r[0], r[1][0]) for r in DIRECT_TABLE])
def test_direct_dispatch_table(row):
    """The modules conv_direct's docstring table names for these shapes."""
    from convkit.kernels.cpu import conv_direct as D

    w_shape, stride, padding, dilation, groups, fwd, bwd_in, bwd_w = row
    assert _version(D.forward_version(w_shape, stride, groups)) == f"{fwd}.forward"
    assert (_version(D.backward_input_version(w_shape, stride, padding, dilation, groups))
            == f"{bwd_in}.backward_input")
    assert _version(D.backward_weight_version(w_shape, groups)) == f"{bwd_w}.backward_weight"
