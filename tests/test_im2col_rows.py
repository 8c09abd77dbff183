"""The row-shift workers of im2col's cblas pipeline (forward and weight gradient of convs that are
stride 1 along H) against torch in float64, over geometries the threshold alone would rarely pick
for them: the threshold is lowered to 1, so every case with stride 1 along H and KH > 1 runs them.
Also the weight gradient's three paths (row-shift, per-image GEMMs, one long GEMM per block):
bitwise the same whatever the number of workers.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convkit.kernels.cpu.conv_im2col import cblas_workers as CW
from convkit.kernels.cpu.conv_im2col import unfold

if not CW.available(np.float64):  # pragma: no cover - numpy without an ILP64 OpenBLAS cblas
    pytest.skip("numpy's BLAS has no ILP64 OpenBLAS cblas here", allow_module_level=True)

# (N, C, H, W, K, groups, KH, KW, stride, padding, dilation)
GEOMETRIES = [
    (64, 32, 14, 14, 64, 1, 3, 3, (1, 1), (1, 1), (1, 1)),  # SimpleCNN conv2
    (1, 5, 9, 7, 3, 1, 3, 3, (1, 1), (1, 1), (1, 1)),  # one image
    (3, 4, 8, 9, 6, 2, 3, 2, (1, 1), (0, 1), (1, 1)),  # odd batch, groups, no vertical padding
    (5, 6, 7, 11, 6, 3, 2, 3, (1, 2), (1, 1), (1, 1)),  # stride 2 along W, even KH
    (2, 4, 10, 10, 8, 1, 3, 3, (1, 3), (2, 0), (2, 2)),  # dilation, stride 3 along W
    (2, 3, 6, 5, 4, 1, 5, 3, (1, 1), (3, 2), (1, 1)),  # padding past the kernel, 'same' width
    (2, 4, 6, 6, 4, 4, 3, 3, (1, 1), (1, 1), (1, 1)),  # depthwise
    (3, 2, 4, 9, 5, 1, 4, 1, (1, 1), (0, 0), (1, 1)),  # KW = 1
    (2, 3, 5, 5, 2, 1, 3, 3, (1, 1), (2, 2), (1, 1)),  # output larger than the input
]


def _ids(g):
    N, C, H, W, K, G, KH, KW, s, p, d = g
    return f"N{N}C{C}x{H}x{W}-K{K}g{G}-k{KH}x{KW}-s{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


@pytest.fixture
def rows_everywhere(monkeypatch):
    # and no multi-image forward for small planes (tests/test_im2col_multi.py), which would
    # take the forward of most geometries here
    monkeypatch.setattr(CW, "ROWS_MIN_DEPTH", 1)
    monkeypatch.setattr(CW, "MULTI_MAX_P", 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[_ids(g) for g in GEOMETRIES])
def test_row_shift_forward_and_weight_gradient_match_torch(rows_everywhere, geometry, dtype):
    N, C, H, W, K, G, KH, KW, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(N * 1000 + C * 100 + KH * 10 + KW)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // G, KH, KW, generator=gen, dtype=torch.float64)
    b = torch.randn(K, generator=gen, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xr, wr, b, stride, padding, dilation, G)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (xr, wr), gy)
    assert CW.uses_rows(w.shape, stride)
    conf = (stride, padding, dilation, G)
    xa, wa, ba, gya = (t.numpy().astype(dtype) for t in (x, w, b, gy))
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == np.float32 else dict(atol=1e-10, rtol=1e-10)

    def check(got, ref):
        assert got.dtype == dtype and got.shape == tuple(ref.shape)
        torch.testing.assert_close(torch.from_numpy(got).double(), ref.detach(), **tol)

    out_hw = tuple(y.shape[2:])
    check(CW.forward(xa, wa, ba, *conf, out_hw), y)
    check(CW.forward(xa, wa, None, *conf, out_hw, relu=True), torch.relu(y - b[:, None, None]))
    check(CW.backward_weight(xa, gya, wa.shape, *conf), gw)
    check(CW.backward_input(gya, wa, xa.shape, *conf), gx)  # GEMM + col2im, unchanged


@pytest.mark.parametrize("block_bytes", [1, 100000], ids=["1image", "2images"])
@pytest.mark.parametrize("path", ["rows", "per-image", "long"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_weight_gradient_paths_are_deterministic(monkeypatch, dtype, path, block_bytes):
    # blocks taken by whichever worker asks first: each block's partial (row-shift, per-image
    # GEMMs accumulating, or one long GEMM) is summed in block order, so 1, 2 or 3 workers give
    # the same bits; all three paths match torch
    from convkit.runtime import blas

    monkeypatch.setattr(CW, "ROWS_MIN_DEPTH", 1 if path == "rows" else 1 << 30)
    monkeypatch.setattr(CW, "BW_IMAGE_MIN_P", 1 << 30 if path == "long" else 128)
    x = np.random.default_rng(1).standard_normal((7, 6, 13, 12)).astype(dtype)  # P = 156
    gy = np.random.default_rng(2).standard_normal((7, 5, 13, 12)).astype(dtype)
    monkeypatch.setattr(unfold, "IM2COL_BLOCK_BYTES", block_bytes)
    results = []
    for threads in (1, 3, 2, 3):
        monkeypatch.setattr(blas, "workers", lambda flops, t=threads: t)
        results.append(CW.backward_weight(x, gy, (5, 6, 3, 3), (1, 1), (1, 1), (1, 1), 1))
    assert all(r.tobytes() == results[0].tobytes() for r in results[1:])
    ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (5, 6, 3, 3),
                                      torch.from_numpy(gy).double(), padding=1)
    torch.testing.assert_close(torch.from_numpy(results[0]).double(), ref,
                               atol=1e-4 if dtype == np.float32 else 1e-10, rtol=1e-5)


def test_row_shift_choice():
    # SimpleCNN conv2 (depth Cg*KW = 96) and ResNet 3x3 take it; conv1 (depth 3), strided rows,
    # 1x1 filters and shallow groups keep im2col
    assert CW.uses_rows((64, 32, 3, 3), (1, 1))
    assert CW.uses_rows((64, 64, 3, 3), (1, 2))
    assert not CW.uses_rows((32, 1, 3, 3), (1, 1))
    assert not CW.uses_rows((64, 32, 3, 3), (2, 1))
    assert not CW.uses_rows((64, 64, 1, 1), (1, 1))
    assert not CW.uses_rows((64, 8, 3, 3), (1, 1))
