"""max_pool2d values, indices and gradients against torch.nn.functional.max_pool2d."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF

# (kernel, stride, padding, dilation): padding at most half the effective kernel, as torch needs
POOL_ARGS = [
    (2, None, 0, 1), (3, 2, 1, 1), (3, 1, 1, 1), ((3, 2), (2, 1), (1, 0), 1), (2, 1, 0, 2),
    ((2, 3), (1, 2), (1, 1), (2, 1)), (4, 3, 2, 1), (1, 1, 0, 1), (5, 2, 2, 1), (3, 3, 0, 2),
]
SHAPES = [(1, 1, 5, 5), (2, 3, 8, 7), (3, 2, 13, 17), (1, 4, 9, 16)]


def _cases():
    for (k, s, p, d), shape, ceil in itertools.product(POOL_ARGS, SHAPES, [False, True]):
        kh, kw = (k, k) if isinstance(k, int) else k
        dh, dw = (d, d) if isinstance(d, int) else d
        if (kh - 1) * dh + 1 > shape[2] + 2 * (p if isinstance(p, int) else p[0]):
            continue
        if (kw - 1) * dw + 1 > shape[3] + 2 * (p if isinstance(p, int) else p[1]):
            continue
        yield k, s, p, d, shape, ceil


CASES = list(_cases())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("k,s,p,d,shape,ceil", CASES)
def test_max_pool2d_matches_torch(k, s, p, d, shape, ceil, dtype):
    # values drawn from a small set so ties are common: the index choice is tested too
    x = torch.randint(-3, 4, shape).to(dtype)
    if shape[0] == 3:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, i = CF.max_pool2d(xo, k, s, p, d, ceil, return_indices=True)
    yr, ir = F.max_pool2d(xr, k, s, p, d, ceil, return_indices=True)
    assert torch.equal(i, ir) and i.dtype == torch.int64
    assert torch.equal(y, yr)
    gy = torch.randn_like(yr)
    y.backward(gy)
    yr.backward(gy)
    torch.testing.assert_close(xo.grad, xr.grad)


@pytest.mark.parametrize("ceil", [False, True])
def test_max_pool2d_nan_and_inf_as_torch(ceil):
    x = torch.randn(2, 2, 7, 7)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")
    x[1, 1, 3, 3] = float("inf")
    x[1, 0] = float("-inf")
    y, i = CF.max_pool2d(x, 3, 2, 1, ceil_mode=ceil, return_indices=True)
    yr, ir = F.max_pool2d(x, 3, 2, 1, ceil_mode=ceil, return_indices=True)
    torch.testing.assert_close(y, yr, equal_nan=True)
    assert torch.equal(i, ir)


def test_max_pool2d_unbatched_and_module():
    x = torch.randn(3, 10, 9)
    y, i = CF.max_pool2d(x, 2, return_indices=True)
    yr, ir = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(i, ir)
    assert torch.equal(CF.max_pool2d(x, 3, stride=[]), F.max_pool2d(x, 3, stride=[]))


def test_max_pool2d_empty_batch():
    x = torch.randn(0, 3, 6, 6)
    assert CF.max_pool2d(x, 2).shape == F.max_pool2d(x, 2).shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(3, 7, 28, 28), (2, 5, 9, 14), (1, 1, 2, 2), (4, 3, 6, 4)])
@pytest.mark.parametrize("ceil", [False, True])
def test_max_pool2d_2x2_stride2_special_values_bitwise(shape, ceil, dtype):
    """The pairwise 2x2 / stride-2 kernel: ties, NaN (last one wins), +-inf and -0.0 vs 0.0
    (first wins, its sign kept), bit for bit as torch; planes not a multiple of a work item."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(-2, 3, shape, generator=gen).to(dtype)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 0.0], dtype=dtype)
    pick = torch.randint(0, 8, shape, generator=gen)
    x = torch.where(pick < 5, specials[pick.clamp(max=4)], x)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, i = CF.max_pool2d(xo, 2, ceil_mode=ceil, return_indices=True)
    yr, ir = F.max_pool2d(xr, 2, ceil_mode=ceil, return_indices=True)
    assert torch.equal(i, ir)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(y.view(bits), yr.view(bits))
    gy = torch.randn(yr.shape, generator=gen, dtype=dtype)
    y.backward(gy)
    yr.backward(gy)
    assert torch.equal(xo.grad, xr.grad)
