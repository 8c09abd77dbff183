"""float16 and bfloat16 inputs: computed in float32, rounded once, as torch's CPU kernels do.

relu and max_pool2d are then exact (values and indices equal torch's bit for bit; gradients are
the exact sum rounded once, which torch's half-precision pool backward only approximates);
conv2d results and gradients are within one or two roundings of torch's own half-precision conv.
"""
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF
from convkit import nn as cnn

DTYPES = [torch.float16, torch.bfloat16]
IDS = ["f16", "bf16"]
# a few units in the last place of outputs of magnitude ~10
TOL = {torch.float16: dict(atol=2e-2, rtol=4e-3), torch.bfloat16: dict(atol=1.5e-1, rtol=3e-2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("shape,wshape,kwargs", [
    ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)),
    ((2, 4, 10, 10), (6, 2, 3, 2), dict(stride=(2, 1), dilation=(1, 2), groups=2)),
    ((3, 7, 7), (2, 3, 2, 2), dict(padding="same")),  # unbatched, even kernel
])
def test_conv2d_reduced_precision_matches_torch(dtype, algorithm, shape, wshape, kwargs):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    w = (torch.randn(wshape) * 0.5).to(dtype)
    b = torch.randn(wshape[0]).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    mine = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = F.conv2d(*leaves, **kwargs)
    got = CF.conv2d(*mine, **kwargs, algorithm=algorithm)
    assert got.dtype == dtype and got.shape == ref.shape
    torch.testing.assert_close(got, ref, **TOL[dtype])
    # the float32 result rounded once (up to float32 summation order)
    exact = F.conv2d(x.float(), w.float(), b.float(), **kwargs).to(dtype)
    torch.testing.assert_close(got, exact, **TOL[dtype])
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad)
    for a, e in zip(mine, leaves):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad, e.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_relu_reduced_precision_is_exact(dtype):
    x = torch.randn(3, 4, 5).to(dtype)
    x[0, 0, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, got = F.relu(xr), CF.relu(xs)
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, atol=0, rtol=0, equal_nan=True)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(xs.grad, xr.grad, atol=0, rtol=0)
    y = x.clone()
    assert CF.relu(y, inplace=True) is y
    torch.testing.assert_close(y, F.relu(x), atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("args", [(2,), (3, 2, 1), ((3, 2), (1, 2), (1, 0), (2, 1), True)])
def test_max_pool2d_reduced_precision_is_exact(dtype, args):
    x = torch.randint(-3, 4, (2, 3, 9, 8)).to(dtype)  # ties: the index rule is tested too
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ry, ri = F.max_pool2d(xr, *args, return_indices=True)
    gy, gi = CF.max_pool2d(xs, *args, return_indices=True)
    assert gy.dtype == dtype
    torch.testing.assert_close(gy, ry, atol=0, rtol=0)
    assert torch.equal(gi, ri)
    grad = torch.randn_like(ry)
    ry.backward(grad)
    gy.backward(grad)
    # where windows overlap torch adds the gradients in half precision, convkit in float32 with
    # one rounding at the end: convkit's is the float64 sum rounded once, torch's is close to it
    xd = x.double().requires_grad_()
    F.max_pool2d(xd, *args).backward(grad.double())
    torch.testing.assert_close(xs.grad, xd.grad.to(dtype), atol=0, rtol=0)
    torch.testing.assert_close(xs.grad, xr.grad, **TOL[dtype])
    if args == (2,):  # no overlap: nothing to add, equal to torch's bit for bit
        torch.testing.assert_close(xs.grad, xr.grad, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_conv2d_module_in_reduced_precision(dtype):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect", dtype=dtype)
    mine = cnn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect", dtype=dtype)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8).to(dtype)
    torch.testing.assert_close(mine(x), ref(x), **TOL[dtype])
    assert mine(x).dtype == dtype
