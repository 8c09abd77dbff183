"""convkit.kernels.reference: the plain loop nests against torch, then used as the oracle.

Part 1 checks the reference against torch (F.conv2d and autograd for its three gradients,
F.relu, F.max_pool2d with return_indices and its backward); part 2 checks convkit's CPU kernels,
both conv algorithms, against the reference on the same grid. The CUDA kernels are checked
against it in tests/test_cuda_sim.py. The reference is slow Python, so shapes are small and each
reference result is computed once per case and dtype (cached) and shared by both parts.
"""
import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convkit.kernels import cpu
from convkit.kernels import reference as ref
from convkit.kernels.shapes import conv_output_size

DTYPES = [np.float32, np.float64]
ALGORITHMS = ["direct", "im2col"]

# (N, C, H, W, K, KH, KW, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "plain-3x3": (2, 3, 6, 7, 4, 3, 3, (1, 1), (0, 0), (1, 1), 1, True),
    "pad1": (1, 2, 5, 5, 3, 3, 3, (1, 1), (1, 1), (1, 1), 1, False),
    "stride2-pad1": (2, 3, 7, 6, 2, 3, 3, (2, 2), (1, 1), (1, 1), 1, True),
    "stride-asym": (1, 2, 7, 9, 3, 2, 3, (1, 3), (0, 2), (1, 1), 1, False),
    "dilation2": (1, 2, 8, 8, 2, 3, 3, (1, 1), (2, 2), (2, 2), 1, True),
    "dilation-asym-stride": (2, 2, 9, 7, 2, 3, 2, (2, 1), (1, 0), (1, 2), 1, True),
    "groups2": (2, 4, 5, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2, True),
    "groups2-stride2-dil2": (1, 4, 8, 7, 4, 2, 2, (2, 2), (1, 1), (2, 2), 2, False),
    "depthwise": (2, 3, 6, 5, 3, 3, 3, (1, 1), (1, 1), (1, 1), 3, True),
    "depthwise-x2-stride2": (1, 2, 7, 7, 4, 3, 3, (2, 2), (1, 1), (1, 1), 2, False),
    "1x1": (2, 4, 3, 4, 3, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),
    "kernel-fills-padded-input": (1, 2, 3, 2, 2, 5, 4, (1, 1), (1, 1), (1, 1), 1, True),
    "stride-skips-input": (1, 1, 8, 8, 2, 2, 2, (3, 3), (0, 0), (1, 1), 1, False),
    "5x5-pad2-1x1-input": (2, 1, 1, 1, 2, 5, 5, (1, 1), (2, 2), (1, 1), 1, True),
    "empty-batch": (0, 2, 4, 4, 2, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),
}


def _tol(dtype):
    """convkit's kernels and torch accumulate in the input dtype, the reference in float64."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@functools.lru_cache(maxsize=None)
def conv_case(case, dtype):
    """Seeded inputs of a conv case and the reference's (y, relu y, grad_input, grad_weight,
    grad_bias); the arrays are shared between tests, so treat them as read-only."""
    N, C, H, W, K, KH, KW, stride, padding, dilation, G, has_bias = CONV_CASES[case]
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // G, KH, KW)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if has_bias else None
    OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    gy = rng.standard_normal((N, K, OH, OW)).astype(dtype)
    conf = (stride, padding, dilation, G)
    outputs = dict(y=ref.conv2d_forward(x, w, b, *conf),
                   y_relu=ref.conv2d_forward(x, w, b, *conf, relu=True),
                   grad_input=ref.conv2d_backward_input(gy, w, x.shape, *conf),
                   grad_weight=ref.conv2d_backward_weight(x, gy, w.shape, *conf),
                   grad_bias=ref.conv2d_backward_bias(gy))
    return (x, w, b, gy, conf), outputs


def _torch_conv(x, w, b, gy, conf, dtype):
    """torch's forward and gradients, computed in ``dtype``."""
    xt, wt = (torch.from_numpy(a).to(dtype).requires_grad_() for a in (x, w))
    bt = torch.from_numpy(b).to(dtype).requires_grad_() if b is not None else None
    y = F.conv2d(xt, wt, bt, *conf)
    y.backward(torch.from_numpy(gy).to(dtype))
    grad_bias = bt.grad if b is not None else torch.from_numpy(gy).to(dtype).sum((0, 2, 3))
    return dict(y=y.detach(), y_relu=F.relu(y.detach()), grad_input=xt.grad,
                grad_weight=wt.grad, grad_bias=grad_bias)


# --- part 1: the reference against torch --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_reference_matches_torch(case, dtype):
    (x, w, b, gy, conf), outputs = conv_case(case, dtype)
    torch_same = _torch_conv(x, w, b, gy, conf, torch.from_numpy(x).dtype)
    # float64 accumulation rounded once: within an ulp of torch computing in float64
    torch_exact = _torch_conv(x, w, b, gy, conf, torch.float64)
    exact_tol = dict(rtol=2.0 ** -23, atol=1e-12) if dtype == np.float32 else _tol(dtype)
    for name, got in outputs.items():
        assert got.dtype == dtype, name
        got = torch.from_numpy(got)
        assert got.shape == torch_same[name].shape, name
        torch.testing.assert_close(got, torch_same[name], **_tol(dtype), msg=name)
        torch.testing.assert_close(got, torch_exact[name].to(got.dtype), **exact_tol, msg=name)


def _special_values(shape, dtype, seed):
    """Small integers (so windows tie often) with NaN, +-inf and -0.0 mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0], dtype)
    pick = rng.integers(0, 12, shape)
    return np.where(pick < 4, specials[np.minimum(pick, 3)], x).astype(dtype)


def _bits(a):
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_reference_matches_torch_bitwise(dtype):
    x = _special_values((2, 3, 4, 5), dtype, 0)
    x.reshape(-1)[:3] = [-0.0, 0.0, np.nan]
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = F.relu(xt)
    yt.backward(torch.from_numpy(gy))
    y = ref.relu_forward(x)
    assert np.array_equal(_bits(y), _bits(yt.detach().numpy()))
    assert np.array_equal(_bits(ref.relu_backward(gy, y)), _bits(xt.grad.numpy()))
    inplace = x.copy()
    assert ref.relu_forward(inplace, out=inplace) is inplace
    assert np.array_equal(_bits(inplace), _bits(y))


# (shape, kernel_size, stride, padding, dilation, ceil_mode)
POOL_CASES = {
    "2x2": ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "2x2-odd-ceil": ((1, 2, 5, 7), (2, 2), (2, 2), (0, 0), (1, 1), True),
    "3x3-s2-p1": ((2, 2, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "3x3-s2-p1-ceil": ((1, 3, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
    # ceil would add a window starting in the bottom/right padding: torch drops it
    "ceil-drops-window-in-padding": ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), True),
    "overlap-s1": ((1, 2, 5, 6), (3, 3), (1, 1), (1, 1), (1, 1), False),
    "asym": ((2, 1, 9, 7), (3, 2), (2, 1), (1, 0), (1, 1), True),
    "dilation": ((1, 2, 9, 9), (3, 2), (2, 1), (1, 0), (2, 1), False),
    "dilation-ceil": ((1, 2, 6, 5), (2, 3), (3, 2), (1, 1), (1, 2), True),
    "4x4-pad2": ((1, 1, 7, 6), (4, 4), (3, 3), (2, 2), (1, 1), True),
    "1x1": ((1, 2, 3, 4), (1, 1), (1, 1), (0, 0), (1, 1), False),
}


@functools.lru_cache(maxsize=None)
def pool_case(case, dtype):
    """Seeded input (with ties, NaN, +-inf, -0.0) and grad_output of a pool case, and the
    reference's (y, indices, grad_input)."""
    shape, *args = POOL_CASES[case]
    x = _special_values(shape, dtype, sorted(POOL_CASES).index(case))
    y, indices = ref.max_pool2d_forward(x, *args)
    gy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    return (x, gy, args), (y, indices, ref.max_pool2d_backward(gy, indices, x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_max_pool2d_reference_matches_torch(case, dtype):
    (x, gy, args), (y, indices, grad_input) = pool_case(case, dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt, it = F.max_pool2d(xt, *args, return_indices=True)
    yt.backward(torch.from_numpy(gy))
    assert y.dtype == dtype and indices.dtype == np.int64
    assert np.array_equal(indices, it.numpy())
    assert np.array_equal(_bits(y), _bits(yt.detach().numpy()))  # NaN, -0.0 and all
    assert grad_input.dtype == dtype
    torch.testing.assert_close(torch.from_numpy(grad_input), xt.grad, **_tol(dtype))


def test_max_pool2d_reference_hand_computed_rules():
    """Ties keep the first index, the last NaN wins, -inf padding never wins, -0.0 is kept,
    and ceil_mode drops a last window that would start in the right padding."""
    def pool_row(row, kernel_w, padding_w):
        x = np.array([[[row]]], np.float64)
        y, indices = ref.max_pool2d_forward(x, (1, kernel_w), (1, 1), (0, padding_w), (1, 1),
                                            False)
        return y[0, 0, 0].tolist(), indices[0, 0, 0].tolist()

    assert pool_row([1.0, 3.0, 3.0], 3, 1) == ([3.0, 3.0, 3.0], [1, 1, 1])
    y, indices = pool_row([np.nan, 2.0, np.nan, 5.0], 2, 0)
    assert np.isnan(y).all() and indices == [0, 2, 2]
    assert pool_row([-np.inf, -np.inf, 0.0], 2, 1) == ([-np.inf, -np.inf, 0.0, 0.0],
                                                        [0, 0, 2, 2])
    y, indices = pool_row([-0.0, 0.0], 2, 0)
    assert np.signbit(y[0]) and indices == [0]
    # 5 + 2*1 padded, kernel 2, stride 2: floor 3 windows, ceil 4, but the 4th starts at 6,
    # in the right padding, so ceil_mode gives 3 too
    x = np.zeros((1, 1, 5, 5))
    assert ref.max_pool2d_forward(x, (2, 2), (2, 2), (1, 1), (1, 1), True)[0].shape == (1, 1, 3, 3)
    assert ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), True)[0].shape == (1, 1, 3, 3)
    assert ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)[0].shape == \
        (1, 1, 2, 2)


def test_max_pool2d_reference_window_without_input_taps_as_torch():
    """A dilated window whose taps all fall in the padding: -inf and torch's out-of-plane index;
    the reference's backward drops that index (torch's CPU backward writes it into the next
    plane, so its gradient is not compared)."""
    x = np.random.default_rng(0).standard_normal((2, 2, 1, 3))
    args = ((2, 2), (1, 1), (1, 1), (2, 2), False)
    y, indices = ref.max_pool2d_forward(x, *args)
    yt, it = F.max_pool2d(torch.from_numpy(x), *args, return_indices=True)
    assert np.array_equal(indices, it.numpy()) and (indices >= 3).all()
    assert np.array_equal(y, yt.numpy()) and (y == -np.inf).all()
    assert (ref.max_pool2d_backward(np.ones_like(y), indices, x.shape) == 0).all()


def test_reference_imports_neither_torch_nor_numba():
    code = ("import sys, convkit.kernels.reference; "
            "assert not {'torch', 'numba'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- part 2: convkit's CPU kernels against the reference ----------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_cpu_conv2d_matches_reference(case, dtype, algorithm):
    (x, w, b, gy, conf), expected = conv_case(case, dtype)
    got = dict(y=cpu.conv2d_forward(x, w, b, *conf, algorithm),
               y_relu=cpu.conv2d_forward(x, w, b, *conf, algorithm, relu=True),
               grad_input=cpu.conv2d_backward_input(gy, w, x.shape, *conf, algorithm),
               grad_weight=cpu.conv2d_backward_weight(x, gy, w.shape, *conf, algorithm),
               grad_bias=cpu.conv2d_backward_bias(gy))
    for name, value in got.items():
        assert value.dtype == dtype and value.shape == expected[name].shape, name
        np.testing.assert_allclose(value, expected[name], **_tol(dtype), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_relu_matches_reference_bitwise(dtype):
    x = _special_values((3, 2, 5, 7), dtype, 3)
    gy = np.random.default_rng(4).standard_normal(x.shape).astype(dtype)
    y = ref.relu_forward(x)
    assert np.array_equal(_bits(cpu.relu_forward(x)), _bits(y))
    assert np.array_equal(_bits(cpu.relu_backward(gy, y)), _bits(ref.relu_backward(gy, y)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_cpu_max_pool2d_matches_reference(case, dtype):
    (x, gy, args), (y, indices, grad_input) = pool_case(case, dtype)
    got_y, got_indices = cpu.max_pool2d_forward(x, *args)
    assert np.array_equal(got_indices, indices)
    assert np.array_equal(_bits(got_y), _bits(y))
    got = cpu.max_pool2d_backward(gy, indices, x.shape)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, grad_input, **_tol(dtype))


def test_cpu_max_pool2d_window_without_input_taps_matches_reference():
    x = np.random.default_rng(0).standard_normal((2, 2, 1, 3))
    args = ((2, 2), (1, 1), (1, 1), (2, 2), False)
    y, indices = ref.max_pool2d_forward(x, *args)
    got_y, got_indices = cpu.max_pool2d_forward(x, *args)
    assert np.array_equal(got_indices, indices) and np.array_equal(got_y, y)
    gy = np.ones_like(y)
    assert np.array_equal(cpu.max_pool2d_backward(gy, indices, x.shape),
                          ref.max_pool2d_backward(gy, indices, x.shape))
