"""conv2d outputs and all three gradients against torch.nn.functional.conv2d.

The grid is drawn (seeded) from the ranges of the issue: batch 1-4, channels 1-8, sizes 1-17
(non-square), kernels 1-5 (non-square), stride 1-3, padding 0-2 / 'same' / 'valid', dilation 1-2,
groups 1 / 2 / depthwise, bias on/off; each case runs for both algorithms and both dtypes, with a
non-contiguous input every third case. The reference is torch in float64.
"""
import random

import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF


def _draw_cases(n_cases, seed=2026):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n_cases:
        groups_kind = rng.choice(["1", "2", "depthwise"])
        if groups_kind == "1":
            G, C, K = 1, rng.randint(1, 8), rng.randint(1, 8)
        elif groups_kind == "2":
            G, C, K = 2, 2 * rng.randint(1, 4), 2 * rng.randint(1, 4)
        else:
            C = rng.randint(1, 8)
            G, K = C, C * rng.choice([1, 2])
        N, H, W = rng.randint(1, 4), rng.randint(1, 17), rng.randint(1, 17)
        KH, KW = rng.randint(1, 5), rng.randint(1, 5)
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


def test_conv2d_im2col_native_path_covers_both_dtypes():
    # where numpy's OpenBLAS exposes cblas, float32 and float64 both take the Numba-worker path
    # (the other parity tests then exercise it; the fallback is tested below)
    import numpy as np

    from convkit.kernels.cpu import conv_im2col
    from convkit.runtime import blas

    if blas.gemm_address("f") is None:
        pytest.skip("numpy's BLAS has no ILP64 OpenBLAS cblas here")
    for dtype in (np.float32, np.float64):
        assert conv_im2col._native_ok(dtype, 1, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES[::6], ids=[_case_id(c) for c in CASES[::6]])
def test_conv2d_im2col_numpy_gemm_fallback(monkeypatch, case, dtype):
    # where numpy's BLAS exposes no cblas (not OpenBLAS), im2col runs its GEMMs with
    # numpy.matmul on convkit's own threads: same numbers
    from convkit.runtime import blas

    monkeypatch.setattr(blas, "gemm_address", lambda char: None)
    test_conv2d_matches_torch(case, "im2col", dtype)


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


def test_conv2d_im2col_blocks_and_workers(monkeypatch):
    # a block budget of one image and three GEMM workers: one GEMM per image, images handed out
    # to whichever thread asks first, per-block partial weight gradients summed; results must
    # not change
    from convkit.kernels.cpu import conv_im2col
    from convkit.runtime import blas

    x, w, b = torch.randn(5, 3, 9, 9, dtype=torch.float64), \
        torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    monkeypatch.setattr(conv_im2col, "IM2COL_BLOCK_BYTES", 1)
    monkeypatch.setattr(blas, "workers", lambda flops: 3)
    ours = _grads(lambda x, w, b: CF.conv2d(x, w, b, padding=1, algorithm="im2col"), x, w, b, 3)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, 3)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_im2col_weight_gradient_is_deterministic(monkeypatch, dtype):
    # blocks go to whichever worker is free, so the reduction order must not follow the
    # workers: 1 or 3 workers, bitwise the same weight gradient every time
    from convkit.kernels.cpu import conv_im2col
    from convkit.runtime import blas

    x = torch.randn(9, 4, 11, 11, dtype=dtype).numpy()
    gy = torch.randn(9, 6, 11, 11, dtype=dtype).numpy()
    monkeypatch.setattr(conv_im2col, "IM2COL_BLOCK_BYTES", 1)
    results = []
    for threads in (1, 3, 3, 2):
        monkeypatch.setattr(blas, "workers", lambda flops, t=threads: t)
        results.append(conv_im2col.backward_weight(x, gy, (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1))
    for r in results[1:]:
        assert r.tobytes() == results[0].tobytes()
    gw = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (6, 4, 3, 3),
                                     torch.from_numpy(gy).double(), padding=1)
    torch.testing.assert_close(torch.from_numpy(results[0]).double(), gw,
                               atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-5)


def test_conv2d_output_shares_memory_with_kernel_result():
    # the autograd layer wraps the kernel's numpy result without a copy
    x = torch.randn(1, 1, 5, 5)
    y = CF.conv2d(x, torch.randn(1, 1, 3, 3), algorithm="direct")
    assert y.is_contiguous() and y.numpy().flags["OWNDATA"] is False or y.numpy().base is not None


# (x shape, w shape, padding, dilation, groups, takes the forward pipeline)
BWD_INPUT_ROUTES = [
    ((2, 8, 9, 10), (8, 8, 3, 3), (1, 1), (1, 1), 1, True),  # K == C
    ((2, 12, 9, 10), (6, 6, 3, 2), (2, 0), (1, 2), 2, True),  # K < C, groups, dilation
    ((2, 8, 9, 10), (8, 8, 3, 3), (3, 0), (1, 1), 1, False),  # padding past d*(k-1)
    ((2, 4, 9, 10), (8, 4, 3, 3), (1, 1), (1, 1), 1, False),  # more output channels
    ((2, 8, 9, 10), (8, 8, 1, 1), (0, 0), (1, 1), 1, False),  # 1x1: col2im is a copy
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("route", BWD_INPUT_ROUTES)
def test_im2col_backward_input_routes(monkeypatch, route, dtype):
    """Stride-1 im2col backward-input with K <= C runs the forward pipeline on grad_output with
    the transposed filter; every route matches torch's input gradient."""
    from convkit.kernels.cpu import conv_im2col

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
