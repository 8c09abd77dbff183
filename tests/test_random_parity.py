"""Seeded random sweeps over torch's whole argument space, against torch itself.

The hand-picked parity tests cover the shapes we thought of; these draw argument combinations
nobody listed (odd strides per axis, dilation with 'same', groups, unbatched and channels-last
inputs, empty batches, windows that lie wholly in the padding, NaN/-inf and ties in pooling).
Each case must either match torch (values, indices, gradients) or raise where torch raises.
"""
import random
import warnings

import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

import convkit.functional as CF
from convkit import nn as cnn

SEED = 20261130


def _tol(dtype):
    """(atol, rtol) of the forward; reduced precision: a few units in the last place at ~10."""
    return {torch.float32: (1e-4, 1e-4), torch.float64: (1e-10, 1e-10),
            torch.float16: (3e-2, 5e-3), torch.bfloat16: (2.5e-1, 4e-2)}[dtype]


def _grad_tol(dtype):
    atol, rtol = _tol(dtype)
    return (10 * atol, 10 * rtol) if dtype in (torch.float32, torch.float64) else (atol, rtol)


def _outcome(fn):
    """(result, None) or (None, exception) of calling fn."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's 'same'-padding copy warning
            return fn(), None
    except (RuntimeError, ValueError, TypeError) as e:
        return None, e


def _same_outcome(ref, got, desc):
    """Both computed (True), or both raised (False): convkit an exception of torch's type whose
    message contains torch's (convkit may add detail after it)."""
    rerr, gerr = ref[1], got[1]
    assert (rerr is None) == (gerr is None), f"{desc}: torch raised {rerr!r}, convkit {gerr!r}"
    if rerr is not None:
        assert isinstance(gerr, type(rerr)), \
            f"{desc}: torch raised {type(rerr).__name__}, convkit {type(gerr).__name__}: {gerr}"
        assert str(rerr) in str(gerr), \
            f"{desc}: convkit's message {str(gerr)!r} does not contain torch's {str(rerr)!r}"
    return rerr is None


def _conv_cases(n):
    rng = random.Random(SEED)
    for i in range(n):
        g = rng.choice([1, 1, 2, 3])
        stride = rng.choice([1, 2, (1, 2), (3, 1)])
        padding = rng.choice([0, 1, 2, (1, 0), (0, 2), "same", "valid"])
        yield pytest.param(dict(
            dtype=rng.choice([torch.float32, torch.float64] * 3 + [torch.float16, torch.bfloat16]),
            groups=g, cin=g * rng.randint(1, 3), cout=g * rng.randint(1, 3),
            kernel=(rng.randint(1, 4), rng.randint(1, 4)),
            size=(rng.randint(1, 9), rng.randint(1, 9)), batch=rng.choice([0, 1, 2, 3]),
            stride=1 if padding == "same" else stride, padding=padding,
            dilation=rng.choice([1, 2, (2, 1)]), bias=rng.random() < 0.6,
            layout=rng.choice(["contiguous"] * 3 + ["transposed", "channels_last", "unbatched"]),
            algorithm=rng.choice(["auto", "direct", "im2col"]), seed=i), id=f"conv{i}")


@pytest.mark.parametrize("case", list(_conv_cases(150)))
def test_conv2d_random_arguments_match_torch(case):
    c = case
    torch.manual_seed(c["seed"])
    N, (H, W), dtype = c["batch"], c["size"], c["dtype"]
    x = torch.randn(N, c["cin"], H, W).to(dtype)
    if c["layout"] == "transposed":
        x = torch.randn(N, c["cin"], W, H).to(dtype).transpose(2, 3)
    elif c["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif c["layout"] == "unbatched":
        x = torch.randn(c["cin"], H, W).to(dtype)
    w = torch.randn(c["cout"], c["cin"] // c["groups"], *c["kernel"]).to(dtype)
    b = torch.randn(c["cout"]).to(dtype) if c["bias"] else None
    args = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                groups=c["groups"])
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    mine = [t.detach().clone().requires_grad_() for t in leaves]
    ref = _outcome(lambda: F.conv2d(*leaves, **args))
    got = _outcome(lambda: CF.conv2d(*mine, **args, algorithm=c["algorithm"]))
    if not _same_outcome(ref, got, c):
        return
    ref, got = ref[0], got[0]
    atol, rtol = _tol(dtype)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)
    if ref.numel() == 0:
        return
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad)
    atol, rtol = _grad_tol(dtype)
    for a, e in zip(mine, leaves):
        torch.testing.assert_close(a.grad, e.grad, atol=atol, rtol=rtol)


def _pool_cases(n):
    rng = random.Random(SEED + 1)
    for i in range(n):
        kernel = rng.choice([1, 2, 3, (2, 3), (1, 4), (3, 5)])
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        # mostly padding torch allows (at most half the kernel), sometimes more
        padding = (rng.choice([(0, 0), (1, 2), (2, 0)]) if rng.random() < 0.15 else
                   (rng.randint(0, kh // 2), rng.randint(0, kw // 2)))
        yield pytest.param(dict(
            dtype=rng.choice([torch.float32, torch.float64]), kernel=kernel,
            stride=rng.choice([None, 1, 2, (1, 2), 3]), padding=padding,
            dilation=rng.choice([1, 1, 2, (1, 2)]), ceil_mode=rng.random() < 0.5,
            shape=(rng.choice([0, 1, 2, 2]), rng.choice([0, 1, 2, 3, 3]), rng.randint(1, 9),
                   rng.randint(1, 9)),
            values=rng.choice(["normal", "ties", "nan", "-inf"]),
            layout=rng.choice(["contiguous"] * 3 + ["channels_last", "unbatched"]), seed=i),
            id=f"pool{i}")


@pytest.mark.parametrize("case", list(_pool_cases(200)))
def test_max_pool2d_random_arguments_match_torch(case):
    c = case
    torch.manual_seed(c["seed"])
    shape, dtype = c["shape"], c["dtype"]
    x = (torch.randint(-2, 3, shape).to(dtype) if c["values"] != "normal"
         else torch.randn(shape, dtype=dtype))
    if x.numel() and c["values"] in ("nan", "-inf"):
        x.view(-1)[torch.randint(x.numel(), (2,))] = float(c["values"])
    if c["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif c["layout"] == "unbatched":
        x = x[0] if shape[0] else torch.randn(shape[1:], dtype=dtype)
    args = (c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"], True)
    xs = x.clone().requires_grad_()
    ref = _outcome(lambda: F.max_pool2d(x, *args))
    got = _outcome(lambda: CF.max_pool2d(xs, *args))
    if not _same_outcome(ref, got, c):
        return
    (ry, ri), (gy, gi) = ref[0], got[0]
    torch.testing.assert_close(gy, ry, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(gi, ri)
    if gy.numel() == 0:
        return
    grad = torch.randn_like(ry)
    gy.backward(grad)
    plane = x.shape[-1] * x.shape[-2]
    outside = (ri < 0) | (ri >= plane)
    if outside.any():
        # a window wholly inside the padding: torch gives -inf and an index past the plane,
        # and its own backward would write there; convkit's drops that gradient
        assert torch.isneginf(gy[outside]).all()
        grad = grad.masked_fill(outside, 0)
    xr = x.clone().requires_grad_()
    F.max_pool2d(xr, *args)[0].backward(grad)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-6, rtol=1e-6)


def _module_cases(n):
    rng = random.Random(SEED + 2)
    for i in range(n):
        g = rng.choice([1, 1, 2])
        yield pytest.param(dict(
            dtype=rng.choice([torch.float32, torch.float64]), groups=g,
            cin=g * rng.randint(1, 3), cout=g * rng.randint(1, 3),
            kernel=rng.choice([1, 2, 3, (2, 3), (3, 1)]), stride=rng.choice([1, 2, (2, 1)]),
            padding=rng.choice([0, 1, 2, (1, 2), "same", "valid"]), dilation=rng.choice([1, 2]),
            padding_mode=rng.choice(["zeros", "reflect", "replicate", "circular"]),
            bias=rng.random() < 0.5, size=(rng.randint(1, 8), rng.randint(1, 8)),
            batch=rng.choice([None, 1, 2]), seed=i), id=f"module{i}")


@pytest.mark.parametrize("case", list(_module_cases(60)))
def test_conv2d_module_random_arguments_match_torch(case):
    c = case
    torch.manual_seed(c["seed"])
    stride = 1 if c["padding"] == "same" else c["stride"]
    ctor = (c["cin"], c["cout"], c["kernel"], stride, c["padding"], c["dilation"], c["groups"],
            c["bias"], c["padding_mode"])
    ref_mod = _outcome(lambda: tnn.Conv2d(*ctor, dtype=c["dtype"]))
    my_mod = _outcome(lambda: cnn.Conv2d(*ctor, dtype=c["dtype"]))
    if not _same_outcome(ref_mod, my_mod, c):
        return
    ref_mod, my_mod = ref_mod[0], my_mod[0]
    my_mod.load_state_dict(ref_mod.state_dict())
    assert repr(my_mod) == repr(ref_mod)
    shape = (c["cin"], *c["size"]) if c["batch"] is None else (c["batch"], c["cin"], *c["size"])
    x = torch.randn(shape, dtype=c["dtype"])
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = _outcome(lambda: ref_mod(xr))
    got = _outcome(lambda: my_mod(xs))
    if not _same_outcome(ref, got, c):
        return
    atol, rtol = _tol(c["dtype"])
    torch.testing.assert_close(got[0], ref[0], atol=atol, rtol=rtol)
    grad = torch.randn_like(ref[0])
    ref[0].backward(grad)
    got[0].backward(grad)
    torch.testing.assert_close(xs.grad, xr.grad, atol=10 * atol, rtol=10 * rtol)
    torch.testing.assert_close(my_mod.weight.grad, ref_mod.weight.grad, atol=10 * atol,
                               rtol=10 * rtol)
