"""Twin kernels (convkit/runtime/jit.py): branch-free twins compile each new argument type
branch-free and never through Numba's implicit compile. autograd.call_function: Functions called
plainly when nothing needs a graph give the same results as recorded ones."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import prange

import convkit.functional as CF
from convkit.kernels.cpu import pool
from convkit.runtime.jit import PARALLEL_MIN_WORK, twin


def test_branchless_twin_compiles_each_type_once_then_refuses_implicit_compiles():
    @twin(branchless=True)
    def clip_max(x, out):
        for i in prange(x.size):
            v = x[i]
            out[i] = v if v > 0 else 0

    for dtype in (np.float32, np.float64, np.float32, np.int64):
        x = np.arange(-3, 4).astype(dtype)
        out = np.empty_like(x)
        clip_max(x.size, x, out)
        np.testing.assert_array_equal(out, np.maximum(x, 0))
    # small work: only the serial twin ran, so only it compiled
    assert len(clip_max.serial.signatures) == 3 and not clip_max.parallel.signatures
    clip_max(PARALLEL_MIN_WORK, x, out)  # the parallel twin, compiled on its first launch
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert len(clip_max.parallel.signatures) == 1
    for dispatcher in (clip_max.serial, clip_max.parallel):
        assert not dispatcher._can_compile  # a new type goes through Twin._compile


def test_pool_forward_both_dtypes_in_one_process():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float32):
        x = torch.randn(2, 3, 9, 9, generator=gen, dtype=dtype)
        x[0, 0, 0, :3] = float("nan")
        y, i = CF.max_pool2d(x, 3, 2, padding=1, return_indices=True)
        ry, ri = F.max_pool2d(x, 3, 2, padding=1, return_indices=True)
        torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(i, ri)
    assert not pool._max_pool2d_forward.serial._can_compile


def test_plain_backward_calls_match_recorded_ones():
    """create_graph=True records the backward's sub-Functions; plain backward calls them as
    functions: the first-order gradients agree exactly."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def loss():
        y = CF.max_pool2d(CF.relu(CF.conv2d(x, w, b, padding=1)), 2)
        return (y * y).sum()

    plain = torch.autograd.grad(loss(), (x, w, b))
    recorded = torch.autograd.grad(loss(), (x, w, b), create_graph=True)
    assert all(g.grad_fn is not None for g in recorded)
    for p, r in zip(plain, recorded):
        torch.testing.assert_close(p, r.detach(), rtol=0, atol=0)


def test_calls_without_grad_skip_the_graph_with_grad_record_it():
    x = torch.randn(2, 3, 6, 6)
    w = torch.randn(4, 3, 3, 3)
    for fn, ref in ((lambda a, b: CF.conv2d(a, b, padding=1),
                     lambda a, b: F.conv2d(a, b, padding=1)),
                    (lambda a, b: CF.relu(a), lambda a, b: F.relu(a)),
                    (lambda a, b: CF.max_pool2d(a, 2), lambda a, b: F.max_pool2d(a, 2))):
        y = fn(x, w)
        assert y.grad_fn is None and not y.requires_grad
        torch.testing.assert_close(y, ref(x, w))
        wg = w.clone().requires_grad_()
        xg = x.clone().requires_grad_()
        assert fn(xg, wg).grad_fn is not None
        with torch.no_grad():
            assert fn(xg, wg).grad_fn is None


def test_inplace_relu_on_a_saved_tensor_is_caught_as_in_torch():
    """relu_ bumps the version counter even on a tensor that needs no grad, so autograd sees
    that a saved input changed (torch raises the same error)."""
    for conv, relu_ in ((CF.conv2d, CF.relu_), (F.conv2d, F.relu_)):
        x = torch.randn(1, 2, 5, 5)
        w = torch.randn(3, 2, 3, 3, requires_grad=True)
        y = conv(x, w)  # saves x for the weight gradient
        relu_(x)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
