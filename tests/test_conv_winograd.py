"""Winograd F(2x2,3x3) / F(4x4,3x3) (convkit.kernels.cpu.conv_winograd): against torch and the
textbook one-tile reference, gradients through convkit.functional.conv2d(algorithm="winograd"),
the same bits for any thread count, a workspace bounded whatever the batch, the errors for
convs it cannot compute, and where ``auto`` picks it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF
from convkit.engine import algorithm
from convkit.kernels import reference as R
from convkit.kernels.cpu import conv_winograd as W

TILES = (2, 4)
DTYPES = (torch.float32, torch.float64)
# (N, C, H, W, K, padding, groups): odd and tiny planes, planes not a multiple of the tile,
# padding past the 3x3 window (backward-input then crops grad_output), groups, depthwise
CASES = [
    (1, 1, 3, 3, 1, 0, 1),
    (2, 3, 7, 9, 4, 1, 1),
    (1, 4, 5, 5, 6, 0, 2),
    (3, 8, 11, 6, 8, 2, 1),
    (2, 6, 9, 9, 6, 3, 3),
    (2, 5, 16, 13, 7, 1, 1),
    (1, 4, 10, 10, 4, 1, 4),
    (1, 32, 8, 8, 64, 1, 2),   # one chunk: the forward splits each group's 32 filters in two
]


def _tol(dtype, tile):
    if dtype == torch.float64:
        return dict(atol=1e-10, rtol=1e-10)
    # F(4,3)'s transforms reach coefficients of 8 and 1/24 (docs/algorithms-winograd.md)
    return dict(atol=2e-4, rtol=2e-4) if tile == 4 else dict(atol=5e-5, rtol=5e-5)


def _operands(case, dtype, bias=True):
    N, C, H, Wd, K, p, G = case
    g = torch.Generator().manual_seed(sum(case))
    x = torch.randn(N, C, H, Wd, generator=g, dtype=dtype)
    w = torch.randn(K, C // G, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(K, generator=g, dtype=dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_kernels_match_torch(case, dtype, tile):
    """Forward (bias, ReLU epilogue), backward-input and weight gradient of each tile size."""
    x, w, b = _operands(case, dtype)
    p, G = case[5], case[6]
    y_ref = F.conv2d(x, w, b, padding=p, groups=G)
    gy = torch.randn_like(y_ref)
    pads, one = (p, p), (1, 1)
    y = W.forward(x.numpy(), w.numpy(), b.numpy(), one, pads, one, G, y_ref.shape[2:], tile=tile)
    y_relu = W.forward(x.numpy(), w.numpy(), b.numpy(), one, pads, one, G, y_ref.shape[2:],
                       relu=True, tile=tile)
    gx = W.backward_input(gy.numpy(), w.numpy(), x.shape, one, pads, one, G, tile=tile)
    gw = W.backward_weight(x.numpy(), gy.numpy(), w.shape, one, pads, one, G, tile=tile)
    tol = _tol(dtype, tile)
    torch.testing.assert_close(torch.from_numpy(y), y_ref, **tol)
    torch.testing.assert_close(torch.from_numpy(y_relu), torch.relu(y_ref), **tol)
    torch.testing.assert_close(torch.from_numpy(gx),
                               torch.nn.grad.conv2d_input(x.shape, w, gy, padding=p, groups=G),
                               **tol)
    torch.testing.assert_close(torch.from_numpy(gw),
                               torch.nn.grad.conv2d_weight(x, w.shape, gy, padding=p, groups=G),
                               **tol)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES[:5])
def test_kernels_match_the_reference(case, tile):
    """The fast kernels against the textbook tile-by-tile Winograd (kernels.reference) and the
    reference loop nests of the backward passes, in float64."""
    x, w, b = (t.numpy() for t in _operands(case, torch.float64))
    p, G = case[5], case[6]
    y_ref = R.conv2d_forward_winograd(x, w, b, (p, p), G, tile)
    y = W.forward(x, w, b, (1, 1), (p, p), (1, 1), G, y_ref.shape[2:], tile=tile)
    np.testing.assert_allclose(y, y_ref, atol=1e-11, rtol=1e-11)
    gy = np.random.default_rng(0).standard_normal(y.shape)
    np.testing.assert_allclose(
        W.backward_input(gy, w, x.shape, (1, 1), (p, p), (1, 1), G, tile=tile),
        R.conv2d_backward_input(gy, w, x.shape, (1, 1), (p, p), (1, 1), G), atol=1e-11)
    np.testing.assert_allclose(
        W.backward_weight(x, gy, w.shape, (1, 1), (p, p), (1, 1), G, tile=tile),
        R.conv2d_backward_weight(x, gy, w.shape, (1, 1), (p, p), (1, 1), G), atol=1e-10)


@pytest.mark.parametrize("m", TILES)
def test_reference_tile_is_the_direct_sum(m):
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    direct = [[(d[i:i + 3, j:j + 3] * g).sum() for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(R.winograd_tile(d, g, m), direct, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_functional_conv2d_matches_torch(case, dtype):
    """y and all three gradients through convkit.functional.conv2d(algorithm="winograd")."""
    x, w, b = (t.requires_grad_() for t in _operands(case, dtype))
    p, G = case[5], case[6]
    y = CF.conv2d(x, w, b, 1, p, 1, G, algorithm="winograd")
    y_ref = F.conv2d(x, w, b, 1, p, 1, G)
    gy = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, (x, w, b), gy)
    want = torch.autograd.grad(y_ref, (x, w, b), gy)
    tol = _tol(dtype, 4)
    torch.testing.assert_close(y, y_ref, **tol)
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bias"), got, want):
        torch.testing.assert_close(a, e, **tol, msg=lambda msg, n=name: f"{n}: {msg}")


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4]], ids=["pad1", "groups2", "pad3"])
def test_gradcheck_and_gradgradcheck(case):
    """float64 gradcheck and gradgradcheck (batched gradients through vmap too) on every
    Winograd path: forward, backward-input (cropped with padding 3), weight gradient."""
    x, w, b = (t.requires_grad_() for t in _operands(case, torch.float64))
    x, w = x[:2, :, :7, :7].detach().requires_grad_(), w.detach().requires_grad_()
    p, G = case[5], case[6]

    def conv(x, w, b):
        return CF.conv2d(x, w, b, 1, p, 1, G, algorithm="winograd")

    assert torch.autograd.gradcheck(conv, (x, w, b))
    assert torch.autograd.gradgradcheck(conv, (x, w, b), check_batched_grad=True)


def test_same_bits_for_any_thread_count(monkeypatch):
    """Chunks depend on the shape only and every sum has a fixed order: 1 and 2 threads give
    identical results, over several chunks (a small workspace forces them)."""
    monkeypatch.setattr(W, "WORKSPACE_BYTES", 1 << 15)
    monkeypatch.setattr(W, "MIN_TILES", 8)
    monkeypatch.setattr("convkit.runtime.jit.PARALLEL_MIN_WORK", 0)
    x, w, b = _operands((4, 16, 20, 20, 16, 1, 1), torch.float32)
    gy = torch.randn(4, 16, 20, 20)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append((CF.conv2d(x, w, b, padding=1, algorithm="winograd"),
                            torch.ops.convkit.conv2d_backward_input(
                                gy, w, list(x.shape), [1, 1], [1, 1], [1, 1], 1, "winograd"),
                            torch.ops.convkit.conv2d_backward_weight(
                                x, gy, list(w.shape), [1, 1], [1, 1], [1, 1], 1, "winograd")))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


@pytest.mark.parametrize("tile", TILES)
def test_workspace_is_bounded_whatever_the_batch(tile):
    """A chunk's transforms fit WORKSPACE_BYTES (or MIN_TILES tiles), the same for 8 or 8192
    images: the batch is never transformed at once."""
    C = K = 64
    alpha2 = (tile + 2) ** 2
    for N in (8, 8192):
        rows, ntmax = W._plan(N, C, K, (56, 56), tile, 4)
        assert alpha2 * (C + K) * ntmax * 4 <= max(W.WORKSPACE_BYTES,
                                                   alpha2 * (C + K) * 4 * (W.MIN_TILES + 56))
    assert W._plan(8, C, K, (56, 56), tile, 4) == W._plan(8192, C, K, (56, 56), tile, 4)


@pytest.mark.parametrize("stride, dilation, kernel", [(2, 1, 3), (1, 2, 3), (1, 1, 5)])
def test_convs_winograd_cannot_compute_raise(stride, dilation, kernel):
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 2, kernel, kernel)
    with pytest.raises(ValueError, match="winograd.*3x3 kernel, stride 1 and dilation 1"):
        CF.conv2d(x, w, stride=stride, dilation=dilation, algorithm="winograd")


def test_auto_picks_winograd_only_where_it_qualifies():
    def pick(x_shape, w_shape, stride=1, groups=1, device="cpu", pass_name="forward"):
        return CF.select_algorithm(x_shape, w_shape, (stride,) * 2, (1, 1), (1, 1), groups,
                                   torch.float32, device, pass_name)
    resnet = ((8, 64, 56, 56), (64, 64, 3, 3))
    assert {pick(*resnet, pass_name=p) for p in algorithm.PASSES} == {"winograd"}
    assert pick(*resnet, device="cuda") == "im2col"           # no CUDA Winograd
    assert pick(*resnet, stride=2) != "winograd"
    assert pick((8, 64, 56, 56), (64, 1, 3, 3), groups=64) == "direct"   # depthwise
    assert pick((8, 64, 56, 56), (64, 64, 1, 1)) == "im2col"
    assert pick((1, 128, 28, 28), (128, 128, 3, 3)) == "winograd"    # N=1 ResNet-18 layer 2
    assert pick((1, 64, 14, 14), (64, 64, 3, 3)) == "im2col"         # too little work
    assert pick((8, 512, 7, 7), (512, 512, 3, 3)) == "im2col"        # 7x7: forward stays
    assert pick((8, 512, 7, 7), (512, 512, 3, 3), pass_name="backward_weight") == "winograd"
    assert pick((8, 32, 14, 14), (64, 32, 3, 3)) == "im2col"         # 32 input channels


def test_auto_runs_the_winograd_kernel_bit_for_bit():
    x = torch.randn(32, 64, 28, 28)
    w = torch.randn(64, 64, 3, 3)
    assert CF.select_algorithm(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1) == "winograd"
    assert torch.equal(CF.conv2d(x, w, padding=1), CF.conv2d(x, w, padding=1,
                                                            algorithm="winograd"))
