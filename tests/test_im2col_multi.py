"""The multi-image workers of im2col's cblas pipeline (forward and backward-input of small output
planes, P < MULTI_MAX_P: a block of images side by side, one GEMM of nb*P columns per group)
against torch in float64, over output planes from 1x1 to 9x8, batches of one, of several blocks
and of a block and a remainder; and bitwise the same whatever the number of workers.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convkit.kernels.cpu import conv_im2col
from convkit.kernels.cpu.conv_im2col import cblas_workers as CW

if not CW.available(np.float64):  # pragma: no cover - numpy without an ILP64 OpenBLAS cblas
    pytest.skip("numpy's BLAS has no ILP64 OpenBLAS cblas here", allow_module_level=True)

# (N, C, H, W, K, groups, KH, KW, stride, padding, dilation); output plane in the comment
GEOMETRIES = [
    (1, 8, 7, 7, 6, 1, 3, 3, (1, 1), (1, 1), (1, 1)),  # 7x7, one image
    (13, 6, 7, 7, 10, 1, 3, 3, (1, 1), (1, 1), (1, 1)),  # 7x7: blocks of 4, remainder 1
    (5, 6, 14, 14, 8, 2, 1, 1, (2, 2), (0, 0), (1, 1)),  # 7x7, 1x1 stride 2, groups
    (7, 4, 9, 9, 6, 2, 3, 3, (2, 2), (1, 1), (1, 1)),  # 5x5, stride 2, groups
    (3, 4, 9, 8, 4, 4, 3, 3, (1, 1), (2, 2), (2, 2)),  # 9x8, depthwise, dilation
    (6, 3, 3, 3, 5, 1, 3, 3, (1, 1), (0, 0), (1, 1)),  # 1x1: all images in one GEMM
    (4, 5, 4, 6, 7, 1, 2, 3, (1, 2), (1, 1), (1, 1)),  # 5x3, even KH, stride 2 along W
    (9, 2, 2, 2, 3, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 2x2, 1x1 filter, K > C
    (2, 3, 5, 4, 2, 1, 3, 3, (1, 1), (2, 2), (1, 1)),  # 7x6, output larger than the input
]


def _ids(g):
    N, C, H, W, K, G, KH, KW, s, p, d = g
    return f"N{N}C{C}x{H}x{W}-K{K}g{G}-k{KH}x{KW}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


def _problem(geometry, seed):
    """float64 x, w, b, grad_output and torch's y, grad_input for the geometry."""
    N, C, H, W, K, G, KH, KW, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // G, KH, KW, generator=gen, dtype=torch.float64)
    b = torch.randn(K, generator=gen, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    y = F.conv2d(xr, w, b, stride, padding, dilation, G)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, xr, gy)
    return x, w, b, gy, y.detach(), gx


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[_ids(g) for g in GEOMETRIES])
def test_multi_image_forward_and_backward_input_match_torch(geometry, dtype):
    N, C, H, W, K, G, KH, KW, stride, padding, dilation = geometry
    x, w, b, gy, y, gx = _problem(geometry, N * 1000 + C * 100 + KH * 10 + KW)
    P = y.shape[2] * y.shape[3]
    assert P < CW.MULTI_MAX_P  # the multi-image workers run every case here
    conf = (stride, padding, dilation, G)
    xa, wa, ba, gya = (t.numpy().astype(dtype) for t in (x, w, b, gy))
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == np.float32 else dict(atol=1e-10, rtol=1e-10)

    def check(got, ref):
        assert got.dtype == dtype and got.shape == tuple(ref.shape)
        torch.testing.assert_close(torch.from_numpy(got).double(), ref, **tol)

    out_hw = tuple(y.shape[2:])
    check(CW.forward(xa, wa, ba, *conf, out_hw), y)
    check(CW.forward(xa, wa, None, *conf, out_hw), y - b[:, None, None])
    check(CW.forward(xa, wa, ba, *conf, out_hw, relu=True), torch.relu(y))
    check(CW.backward_input(gya, wa, xa.shape, *conf), gx)  # GEMM + col2im from column blocks
    # the package's choice: stride 1 with K <= C takes the transposed forward (multi-image too)
    check(conv_im2col.backward_input(gya, wa, xa.shape, *conf, pipeline="cblas"), gx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[2]], ids=_ids)
def test_multi_image_passes_are_deterministic_over_workers(monkeypatch, geometry, dtype):
    # blocks are chosen by the shape alone and taken by whichever worker asks first, each block
    # written by one GEMM into its own images: 1, 2, 3 or 4 workers give the same bits
    from convkit.runtime import blas

    N, C, H, W, K, G, KH, KW, stride, padding, dilation = geometry
    x, w, b, gy, y, gx = _problem(geometry, 7)
    assert CW.multi_images(N, y.shape[2] * y.shape[3]) < N  # several blocks
    conf = (stride, padding, dilation, G)
    xa, wa, ba, gya = (t.numpy().astype(dtype) for t in (x, w, b, gy))
    results = []
    for threads in (1, 3, 2, 4, 3):
        monkeypatch.setattr(blas, "workers", lambda flops, t=threads: t)
        results.append((CW.forward(xa, wa, ba, *conf, tuple(y.shape[2:]), relu=True),
                        CW.backward_input(gya, wa, xa.shape, *conf)))
    for fwd, bwd in results[1:]:
        assert fwd.tobytes() == results[0][0].tobytes()
        assert bwd.tobytes() == results[0][1].tobytes()


def test_multi_image_blocks():
    # ceil(MULTI_COLS / P) images, at most half the batch (rounded up): ResNet-18 layer4 (N8,
    # 7x7) -> 2 blocks of 4; N4 and N2 -> 2 blocks too (one block would leave a worker idle)
    assert CW.MULTI_COLS == 192 and CW.MULTI_MAX_P == 128 and CW.MULTI_MIN_BLOCKS == 2
    assert CW.multi_images(8, 49) == 4
    assert CW.multi_images(4, 49) == 2
    assert CW.multi_images(2, 49) == 1
    assert CW.multi_images(1, 49) == 1
    assert CW.multi_images(1000, 1) == 192
    assert CW.multi_images(16, 127) == 2
    assert CW.multi_images(3, 64) == 2
