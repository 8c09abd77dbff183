"""CPU kernels (Numba @njit, torch-free): the contract shared with ``convkit.kernels.cuda``.

All arrays are C-contiguous numpy arrays in NCHW layout; stride, padding and dilation are
explicit (h, w) int pairs (padding symmetric); ``algorithm`` is "direct", "im2col" or "auto"
(a measured, cached choice per pass and shape: see ``autotune``). Arguments
are assumed valid (``convkit.functional`` validates them through ``convkit.kernels.shapes``).
"""
import functools
import math

import numpy as np

from convkit.kernels.cpu import autotune, conv_direct, conv_im2col
from convkit.kernels.cpu.conv_direct import conv2d_backward_bias
from convkit.kernels.cpu.pool import max_pool2d_backward, max_pool2d_forward
from convkit.kernels.cpu.relu import relu_backward, relu_forward
from convkit.kernels.shapes import conv_output_size

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col}


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name  # numpy's dtype.name is a slow Python property: ~10 us a call


def _conv(pass_name, algorithm, x_shape, w_shape, y_shape, conf, dtype, call):
    """Run ``call(kernel_module)`` for an explicit algorithm, or through the autotuner for auto."""
    if algorithm == "auto":
        key = autotune.key(pass_name, x_shape, w_shape, *conf, _dtype_name(dtype))
        macs = math.prod(y_shape) * math.prod(w_shape[1:])
        return autotune.run(key, macs, w_shape, lambda alg: call(ALGORITHMS[alg]))
    try:
        module = ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"algorithm must be 'auto' or one of {sorted(ALGORITHMS)}, "
                         f"got {algorithm!r}") from None
    return call(module)


def conv2d_forward(x: np.ndarray, w: np.ndarray, b, stride, padding, dilation, groups: int,
                   algorithm: str = "direct", relu: bool = False) -> np.ndarray:
    """y: (N, K, OH, OW) = conv2d(x: (N, C, H, W), w: (K, C/groups, KH, KW)) + b; with ``relu``
    the ReLU is the kernels' epilogue (applied as each block of y is stored)."""
    OH = conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0])
    OW = conv_output_size(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1])
    conf = (stride, padding, dilation, groups)
    return _conv("forward", algorithm, x.shape, w.shape, (x.shape[0], w.shape[0], OH, OW), conf,
                 x.dtype, lambda m: m.forward(x, w, b, *conf, (OH, OW), bool(relu)))


def conv2d_backward_input(grad_output: np.ndarray, w: np.ndarray, input_shape, stride, padding,
                          dilation, groups: int, algorithm: str = "direct") -> np.ndarray:
    """grad_input: (N, C, H, W), the transposed convolution of grad_output with w."""
    conf = (stride, padding, dilation, groups)
    return _conv("backward_input", algorithm, input_shape, w.shape, grad_output.shape, conf,
                 grad_output.dtype,
                 lambda m: m.backward_input(grad_output, w, input_shape, *conf))


def conv2d_backward_weight(x: np.ndarray, grad_output: np.ndarray, weight_shape, stride, padding,
                           dilation, groups: int, algorithm: str = "direct") -> np.ndarray:
    """grad_weight: (K, C/groups, KH, KW), the correlation of x with grad_output."""
    conf = (stride, padding, dilation, groups)
    return _conv("backward_weight", algorithm, x.shape, weight_shape, grad_output.shape, conf,
                 x.dtype, lambda m: m.backward_weight(x, grad_output, weight_shape, *conf))


__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu_forward", "relu_backward", "max_pool2d_forward",
           "max_pool2d_backward", "ALGORITHMS"]
