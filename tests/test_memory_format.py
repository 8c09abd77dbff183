"""Results keep torch's memory format: channels-last in gives channels-last out (conv2d when the
input or the weight is channels-last, max_pool2d values and indices), and relu returns its
input's stride order for any layout. Values and gradients match torch's too."""
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF

CL = torch.channels_last


def _layout(t):
    return t.stride() if t.numel() else None


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("which", ["input", "weight", "both", "neither"])
def test_conv2d_keeps_torch_memory_format(which, algorithm):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, 9, 8), torch.randn(4, 6, 3, 3), torch.randn(4)
    if which in ("input", "both"):
        x = x.contiguous(memory_format=CL)
    if which in ("weight", "both"):
        w = w.contiguous(memory_format=CL)
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = F.conv2d(xr, w, b, padding=1)
    got = CF.conv2d(xs, w, b, padding=1, algorithm=algorithm)
    assert got.stride() == ref.stride()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(ref)
    ref.backward(gy)
    got.backward(gy)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_conv2d_relu_and_module_keep_channels_last():
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=CL)
    w = torch.randn(5, 3, 3, 3)
    assert CF.conv2d_relu(x, w).stride() == F.relu(F.conv2d(x, w)).stride()
    from convkit import nn as cnn
    m = cnn.Conv2d(3, 5, 3).to(memory_format=CL)
    ref = torch.nn.Conv2d(3, 5, 3).to(memory_format=CL)
    ref.load_state_dict(m.state_dict())
    assert m(x).stride() == ref(x).stride()


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool2d_keeps_torch_memory_format(channels_last):
    x = torch.randn(2, 3, 9, 8)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    ry, ri = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    gy, gi = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert gy.stride() == ry.stride() and gi.stride() == ri.stride()
    assert torch.equal(gy, ry) and torch.equal(gi, ri)


LAYOUTS = {
    "contiguous": lambda: torch.randn(2, 3, 4, 5),
    "channels_last": lambda: torch.randn(2, 3, 4, 5).contiguous(memory_format=CL),
    "transposed": lambda: torch.randn(5, 6).t(),
    "sliced": lambda: torch.randn(2, 6, 4, 5).contiguous(memory_format=CL)[:, ::2],
    "expanded": lambda: torch.randn(1, 4).expand(3, 4),
    "0-d": lambda: torch.tensor(-1.5),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_relu_keeps_the_stride_order(layout):
    x = LAYOUTS[layout]()
    ref, got = F.relu(x), CF.relu(x)
    assert got.stride() == ref.stride()
    assert torch.equal(got, ref)
    if layout != "expanded":  # torch refuses in-place ops on overlapping memory
        xi = LAYOUTS[layout]().copy_(x)  # the same layout (a clone of a slice is dense)
        before = xi.stride()
        assert CF.relu(xi, inplace=True) is xi
        assert xi.stride() == before and torch.equal(xi, ref)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_relu_in_place_on_a_permuted_view_keeps_autograd_right(layout):
    a = torch.randn(2, 3, 4, 5, requires_grad=True) if layout == "channels_last" else \
        torch.randn(5, 6, requires_grad=True)
    for fn in (F.relu, CF.relu):
        b = a * 1
        b = b.contiguous(memory_format=CL) if layout == "channels_last" else b.t()
        out = fn(b, inplace=True)
        (out * torch.arange(out.numel()).view(out.shape)).sum().backward()
    # both backward passes accumulated into a.grad: equal halves
    grad = a.grad.clone()
    a.grad = None
    b = a * 1
    b = b.contiguous(memory_format=CL) if layout == "channels_last" else b.t()
    (F.relu(b) * torch.arange(b.numel()).view(b.shape)).sum().backward()
    torch.testing.assert_close(grad, 2 * a.grad)
