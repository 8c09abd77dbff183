"""float64 torch.autograd.gradcheck and gradgradcheck for every op and algorithm.

Every convkit backward is built from convkit Functions (conv: transposed conv + correlation;
relu: masked pass-through; max-pool: scatter, whose own backward is a gather), so the second
derivative is checked too.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import convkit.functional as CF

CONV_CASES = [
    # (N, C, H, W, K, KH, KW, stride, padding, dilation, groups, bias)
    (2, 3, 6, 5, 4, 3, 2, 1, 1, 1, 1, True),
    (1, 4, 7, 7, 4, 3, 3, 2, (1, 0), 1, 2, True),
    (2, 2, 8, 6, 4, 2, 3, (1, 2), 0, (2, 1), 2, False),
    (1, 3, 5, 5, 3, 3, 3, 1, "same", 1, 3, True),
    (1, 2, 6, 6, 2, 2, 2, 1, "same", 2, 1, False),
    (2, 1, 4, 4, 2, 4, 4, 1, "valid", 1, 1, True),
    (1, 8, 5, 4, 8, 3, 3, 1, 1, (1, 2), 1, True),  # channel-inner direct kernels
]


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case, algorithm):
    N, C, H, W, K, KH, KW, s, p, d, g, bias = case
    x = torch.randn(N, C, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(K, C // g, KH, KW, dtype=torch.float64, requires_grad=True)
    b = torch.randn(K, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)

    def fn(x, w, b=None):
        return CF.conv2d(x, w, b, s, p, d, g, algorithm=algorithm)

    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("args", [(2, None, 0, 1, False), (3, 2, 1, 1, True),
                                  ((3, 2), (1, 2), (1, 1), (1, 2), False), (2, 1, 1, 2, True)])
def test_max_pool2d_gradcheck(args):
    k, s, p, d, ceil = args
    # distinct values: the max of every window is unique, so finite differences are exact
    x = torch.randperm(2 * 3 * 7 * 8, dtype=torch.float64).view(2, 3, 7, 8).requires_grad_()

    def fn(x):
        return CF.max_pool2d(x, k, s, p, d, ceil)

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_relu_gradcheck():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x = (x + torch.sign(x) * 0.1).requires_grad_()  # keep away from the kink at 0
    assert gradcheck(CF.relu, (x,))
    assert gradgradcheck(CF.relu, (x,))
