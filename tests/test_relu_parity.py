"""relu forward/backward (and in-place) against torch.relu, any shape from 0-D up."""
import pytest
import torch

import convkit.functional as CF

SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (2, 3, 5, 6), (1, 2, 3, 4, 5), (0, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_matches_torch(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    if x.numel() > 2:
        x.view(-1)[0] = float("nan")
        x.view(-1)[1] = 0.0
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yr = CF.relu(xo), torch.relu(xr)
    torch.testing.assert_close(y, yr, equal_nan=True)
    gy = torch.randn_like(yr)
    y.backward(gy)
    yr.backward(gy)
    torch.testing.assert_close(xo.grad, xr.grad, equal_nan=True)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_relu_special_values_bitwise(dtype, inplace):
    """Bit for bit as torch: NaN propagates, -0.0 stays -0.0 (clamp_min), -inf -> 0, inf kept;
    the gradient is 0 at -0.0 and 0.0 and passes at NaN (threshold_backward)."""
    x = torch.tensor([float("nan"), -0.0, 0.0, float("-inf"), float("inf"), -1.5, 2.5] * 40,
                     dtype=dtype)  # long enough for the vector loop, plus a remainder
    y = CF.relu(x.clone(), inplace=inplace)
    ref = torch.relu(x.clone())
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    # NaN payloads are not compared: torch's own vector and scalar loops give different ones
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y[~y.isnan()].view(bits), ref[~ref.isnan()].view(bits))
    if dtype in (torch.float32, torch.float64) and not inplace:
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        gy = torch.randn(x.shape, dtype=dtype)
        CF.relu(xo).backward(gy)
        torch.relu(xr).backward(gy)
        assert torch.equal(xo.grad, xr.grad)


@pytest.mark.parametrize("contiguous", [True, False])
def test_relu_inplace(contiguous):
    base = torch.randn(4, 6)
    x = base.clone() if contiguous else base.clone().t()
    ref = torch.relu(x.clone())
    a = x.clone().requires_grad_()
    h = a * 2  # a non-leaf, so in-place is allowed as in torch
    out = CF.relu(h, inplace=True)
    assert out is h
    torch.testing.assert_close(h, torch.relu(x * 2))
    out.sum().backward()
    torch.testing.assert_close(a.grad, 2.0 * (x > 0).to(x.dtype))
    xi = x.clone()
    assert CF.relu_(xi) is xi
    torch.testing.assert_close(xi, ref)


def test_relu_inplace_on_leaf_requiring_grad_is_refused_like_torch():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        torch.relu_(x)
    with pytest.raises(RuntimeError, match="leaf"):
        CF.relu(x, inplace=True)
