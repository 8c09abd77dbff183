"""Regressions found by running PyTorch's own conv/pool tests with convkit swapped in: each test
is named after what broke, and compares against torch itself."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import convkit
import convkit.functional as CF
from convkit.engine.algorithm import select_algorithm

D = torch.float64


def _leaf(*shape, dtype=D):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


# --- autograd's batched gradients (the legacy vmap over the backward) ---------------------------

BATCHED_CASES = {
    "conv groups stride": (lambda x, w, b: CF.conv2d(x, w, b, stride=2, padding=1, groups=2),
                           lambda: (_leaf(2, 4, 7, 6), _leaf(6, 2, 3, 3), _leaf(6))),
    "conv 1x1": (lambda x, w: CF.conv2d(x, w), lambda: (_leaf(1, 2, 5, 5), _leaf(2, 2, 1, 1))),
    "conv dilated im2col": (
        lambda x, w: CF.conv2d(x, w, padding=2, dilation=2, algorithm="im2col"),
        lambda: (_leaf(2, 3, 6, 6), _leaf(4, 3, 3, 3))),
    "conv direct": (lambda x, w: CF.conv2d(x, w, padding=1, algorithm="direct"),
                    lambda: (_leaf(2, 3, 5, 5), _leaf(4, 3, 3, 3))),
    "conv_relu": (lambda x, w, b: CF.conv2d_relu(x, w, b, padding=1),
                  lambda: (_leaf(2, 3, 5, 5), _leaf(4, 3, 3, 3), _leaf(4))),
    "relu": (CF.relu, lambda: (_leaf(2, 3, 4, 4),)),
    "max_pool2d": (lambda x: CF.max_pool2d(x, 2, 1, 1), lambda: (_leaf(2, 3, 5, 5),)),
    "max_pool2d ceil dilated": (
        lambda x: CF.max_pool2d(x, 3, 2, 1, 2, ceil_mode=True, return_indices=True)[0],
        lambda: (_leaf(1, 2, 9, 8),)),
    "nn.Conv2d": (None, lambda: (_leaf(2, 4, 6, 6),)),
}


@pytest.mark.parametrize("name", list(BATCHED_CASES))
@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["grad", "gradgrad"])
def test_gradcheck_with_batched_grad_did_not_crash_on_detach(name, check):
    fn, make = BATCHED_CASES[name]
    torch.manual_seed(0)
    if fn is None:
        fn = convkit.nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    assert check(fn, make(), check_batched_grad=True)


@pytest.mark.parametrize("name", ["conv groups stride", "relu", "max_pool2d", "conv_relu"])
def test_is_grads_batched_equals_torchs(name):
    torch_ops = {"conv groups stride": lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2),
                 "relu": F.relu, "max_pool2d": lambda x: F.max_pool2d(x, 2, 1, 1),
                 "conv_relu": lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1))}
    fn, make = BATCHED_CASES[name]
    torch.manual_seed(1)
    inputs = make()
    y = fn(*inputs)
    v = torch.randn(3, *y.shape, dtype=D)
    ours = torch.autograd.grad(y, inputs, v, is_grads_batched=True)
    theirs = torch.autograd.grad(torch_ops[name](*inputs), inputs, v, is_grads_batched=True)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_vectorized_jacobian_and_hessian_equal_torchs():
    torch.manual_seed(2)
    w, b = torch.randn(6, 2, 3, 3, dtype=D), torch.randn(6, dtype=D)
    x = torch.randn(1, 4, 6, 6, dtype=D)

    def net(conv, relu, pool):
        return lambda t: pool(relu(conv(t, w, b, 1, 1, 1, 2)), 2)

    ours = torch.autograd.functional.jacobian(net(CF.conv2d, CF.relu, CF.max_pool2d), x,
                                              vectorize=True)
    theirs = torch.autograd.functional.jacobian(net(F.conv2d, F.relu, F.max_pool2d), x,
                                                vectorize=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours = torch.autograd.functional.hessian(lambda t: CF.conv2d(t, w, b, groups=2).pow(2).sum(),
                                             x, vectorize=True)
    theirs = torch.autograd.functional.hessian(lambda t: F.conv2d(t, w, b, groups=2).pow(2).sum(),
                                               x, vectorize=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


# --- output layout: torch's suggested memory format of the actual strides -----------------------

def _layouts(shape):
    x = torch.randn(*shape)
    cl = x.contiguous(memory_format=torch.channels_last)
    yield x
    yield cl
    yield cl[:, ::2]
    yield cl[..., ::2]
    yield x.permute(0, 1, 3, 2)
    yield x[:, :, ::2, ::3]
    yield x.transpose(0, 1).contiguous().transpose(0, 1)
    yield torch.randn(shape[0], 1, 1, 1).expand(*shape)


def test_output_layout_of_channels_last_slices_was_nchw():
    x = torch.randn(4, 8, 10, 10).contiguous(memory_format=torch.channels_last)[:, ::2]
    for ours, theirs in zip(CF.max_pool2d(x, 2, 1, 1, 2, return_indices=True),
                            F.max_pool2d(x, 2, 1, 1, 2, return_indices=True)):
        assert ours.stride() == theirs.stride() == (400, 1, 40, 4)
        assert torch.equal(ours, theirs)
    w = torch.randn(6, 4, 3, 3)
    assert CF.conv2d(x, w).stride() == F.conv2d(x, w).stride() == (384, 1, 48, 6)
    w = torch.nn.Conv2d(1, 8, 3).to(memory_format=torch.channels_last).weight.detach()
    assert w.is_contiguous()  # and channels-last: torch goes by the strides
    x = torch.randn(2, 1, 10, 10)
    assert CF.conv2d(x, w).stride() == F.conv2d(x, w).stride() == (512, 1, 64, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 8, 10, 10), (2, 1, 9, 9), (3, 6, 1, 1), (2, 4, 1, 7)])
def test_output_strides_equal_torchs_for_every_layout(shape, dtype):
    for x in _layouts(shape):
        x = x.to(dtype)
        for ours, theirs in zip(CF.max_pool2d(x, 1, return_indices=True),
                                F.max_pool2d(x, 1, return_indices=True)):
            assert ours.stride() == theirs.stride(), (x.stride(), "pool")
        C = x.shape[1]
        for w in _layouts((6, C, 1, 1)):
            if w.shape != (6, C, 1, 1):
                continue
            w = w.to(dtype)
            for kwargs in ({}, {"padding": 1, "stride": 2}):
                assert CF.conv2d(x, w, **kwargs).stride() == F.conv2d(x, w, **kwargs).stride(), \
                    (x.stride(), w.stride(), kwargs)


# --- messages, integer max-pool, empty spatial input ----------------------------------------------

@pytest.mark.parametrize("call,words", [
    (lambda f: f.conv2d(torch.randn(1, 1, 4, 5, dtype=D), torch.randn(1, 1, 2, 2, dtype=D),
                        dilation=(-1,)), "dilation should be greater than zero"),
    (lambda f: f.conv2d(torch.randn(2, 4, 4), torch.randn(1, 2, 2), padding="same"),
     "Expected 3-dimensional input for 3-dimensional weight[1, 2, 2], but got "
     "4-dimensional input of size [1, 2, 4, 4] instead"),
    (lambda f: f.conv2d(torch.randn(2, 4, 4, dtype=D), torch.randn(3, 2, 3, 3, dtype=D),
                        torch.randn(3, dtype=torch.complex128)), "should be the same"),
    (lambda f: f.conv2d(torch.randn(1, 2, 0, 8), torch.randn(4, 2, 3, 3), padding=2),
     "Only zero batch or zero channel inputs are supported, but got input shape: [1, 2, 0, 8]"),
    (lambda f: f.conv2d(torch.randn(1, 2, 8, 0), torch.randn(4, 2, 3, 3), padding=2),
     "Only zero batch or zero channel inputs are supported, but got input shape: [1, 2, 8, 0]"),
    (lambda f: f.max_pool2d(torch.randn(1, 0, 50, 32), 3, 2),
     "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input"),
    (lambda f: f.max_pool2d(torch.randn(1, 1, 10, 10), 3, padding=5),
     "pad should be at most half of effective kernel size, but got pad=5, kernel_size=3"),
], ids=["dilation -1", "3-D weight", "complex bias", "zero height", "zero width",
        "zero channels pool", "pool padding 5"])
def test_error_message_contains_torchs_words(call, words):
    with pytest.raises(RuntimeError) as theirs:
        call(F)
    with pytest.raises(RuntimeError) as ours:
        call(CF)
    assert words in str(theirs.value)  # the words are torch's
    assert words in str(ours.value)


def test_conv2d_empty_spatial_input_computed_from_padding_alone():
    with pytest.raises(RuntimeError, match="Only zero batch or zero channel inputs are supported"):
        CF.conv2d(torch.randn(1, 2, 0, 8), torch.randn(4, 2, 3, 3), padding=2)
    # zero batch stays valid, as in torch
    y = CF.conv2d(torch.randn(0, 2, 5, 5), torch.randn(4, 2, 3, 3), padding=1)
    assert y.shape == F.conv2d(torch.randn(0, 2, 5, 5), torch.randn(4, 2, 3, 3), padding=1).shape


INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("args", [(2,), (2, 2), (3, 1, 1), (3, 2, 1, 2, True), (2, 1, 1, 3)])
def test_max_pool2d_integer_dtypes_were_refused(dtype, args):
    """Values and indices bit-equal to torch's, ties (first maximum wins) and the extremes of the
    dtype included."""
    info = torch.iinfo(dtype)
    torch.manual_seed(3)
    x = torch.randint(info.min, info.max, (2, 3, 9, 8), dtype=dtype)
    x.view(-1)[::3] = x.view(-1)[0]
    x.view(-1)[::5] = info.max
    x.view(-1)[1::7] = info.min
    kernel, *rest = args
    ceil = rest[4 - 1] if len(rest) == 4 else False
    ours = CF.max_pool2d(x, kernel, *rest[:3], ceil_mode=ceil, return_indices=True)
    theirs = F.max_pool2d(x, kernel, *rest[:3], ceil_mode=ceil, return_indices=True)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(convkit.nn.MaxPool2d(kernel, *rest[:3])(x), F.max_pool2d(x, kernel,
                                                                              *rest[:3]))


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_relu_integer_dtypes_were_refused(dtype):
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (3, 5, 7), dtype=dtype)
    assert torch.equal(CF.relu(x), F.relu(x))
    y = x.clone()
    CF.relu_(y)
    assert torch.equal(y, F.relu(x))


@pytest.mark.parametrize("pass_name", ["forward", "backward_input"])
@pytest.mark.parametrize("w_shape,groups", [((3, 1, 1, 255), 3), ((96, 1, 7, 7), 96),
                                            ((64, 32, 3, 3), 32)])
def test_long_depthwise_kernels_ran_im2col(w_shape, groups, pass_name):
    """PyTorch's test_permute_conv2d_issue_120211 (1x(2r+1) depthwise kernels on 3x1024^2) took
    10x torch's time: auto unfolded every tap for a GEMM of one row. Auto now runs direct for
    K/groups <= 2 (benchmarks/long_kernels.py measures it against torch)."""
    C = w_shape[1] * groups
    assert select_algorithm((1, C, 64, 300), w_shape, (1, 1), (0, 0), (1, 1), groups,
                            pass_name=pass_name) == "direct"
    # a group of 8 output channels keeps the GEMM (measured faster there)
    assert select_algorithm((8, 64, 56, 56), (64, 8, 3, 3), (1, 1), (1, 1), (1, 1), 8,
                            pass_name=pass_name) == "im2col"


def _layout(t):
    """The strides that matter (size-1 dims carry none)."""
    return [s for s, n in zip(t.stride(), t.shape) if n > 1]


@pytest.mark.parametrize("x_cl,w_cl", [(False, False), (True, False), (False, True)])
def test_gradient_layout_was_nchw_for_channels_last_inputs(x_cl, w_cl):
    """torch's conv gradients are channels-last where the forward ran channels-last, max-pool's
    where its input is, relu's where its result is."""
    torch.manual_seed(4)
    x, w = torch.randn(2, 4, 6, 6, dtype=D), torch.randn(5, 4, 3, 3, dtype=D)
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if w_cl:
        w = w.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w.requires_grad_()
    grads = []
    for f in (F, CF):
        y = f.conv2d(x, w, padding=1)
        p = f.max_pool2d(x, 2)
        r = f.relu(x)
        g = [torch.ones(t.shape, dtype=D) for t in (y, p, r)]
        grads.append(torch.autograd.grad(y, (x, w), g[0]) + torch.autograd.grad(p, x, g[1])
                     + torch.autograd.grad(r, x, g[2]))
    for theirs, ours in zip(*grads):
        assert _layout(ours) == _layout(theirs)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
