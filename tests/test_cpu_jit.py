"""Twin kernels (kernels/cpu/_jit.py): branch-free twins compile each new argument type
branch-free and never through Numba's implicit compile; backward sub-Functions called plainly
still give the same gradients as recorded ones."""
import numpy as np
import torch
import torch.nn.functional as F

import convkit.functional as CF
from convkit.kernels.cpu import pool
from convkit.kernels.cpu._jit import twin


def test_branchless_twin_compiles_each_type_once_then_refuses_implicit_compiles():
    @twin(branchless=True)
    def clip_max(x, out):
        for i in range(x.size):
            v = x[i]
            out[i] = v if v > 0 else 0

    for dtype in (np.float32, np.float64, np.float32, np.int64):
        x = np.arange(-3, 4).astype(dtype)
        out = np.empty_like(x)
        clip_max(x.size, x, out)
        np.testing.assert_array_equal(out, np.maximum(x, 0))
    for dispatcher in (clip_max.serial, clip_max.parallel):
        assert len(dispatcher.signatures) == 3
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
