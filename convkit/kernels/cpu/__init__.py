"""CPU kernels (Numba @njit, torch-free): the contract shared with ``convkit.kernels.cuda``.

All arrays are C-contiguous numpy arrays in NCHW layout; stride, padding and dilation are
explicit (h, w) int pairs (padding symmetric); ``algorithm`` is "direct", "im2col" or
"winograd" (3x3, stride 1, dilation 1 only: ``engine.algorithm.winograd_qualifies``) ("auto" is
resolved above the kernels, in ``convkit.engine.algorithm``, the same way for every device).
Arguments are assumed valid (``convkit.functional`` validates them through
``convkit.kernels.shapes``). The plain loop nests these compute are in
``convkit.kernels.reference``.
"""
import numpy as np

from convkit.kernels.cpu import conv_direct, conv_im2col, conv_winograd
from convkit.kernels.cpu.conv_direct.bias import conv2d_backward_bias
from convkit.kernels.cpu.pool import max_pool2d_backward, max_pool2d_forward
from convkit.kernels.cpu.relu import relu_backward, relu_forward
from convkit.kernels.shapes import conv_output_size

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col, "winograd": conv_winograd}


def _algorithm(name: str):
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {name!r}") from None


def conv2d_forward(x: np.ndarray, w: np.ndarray, b, stride, padding, dilation, groups: int,
                   algorithm: str = "direct", relu: bool = False) -> np.ndarray:
    """y: (N, K, OH, OW) = conv2d(x: (N, C, H, W), w: (K, C/groups, KH, KW)) + b; with ``relu``
    the ReLU is the kernels' epilogue (applied as each block of y is stored)."""
    OH = conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0])
    OW = conv_output_size(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1])
    return _algorithm(algorithm).forward(x, w, b, stride, padding, dilation, groups, (OH, OW),
                                         bool(relu))


def conv2d_backward_input(grad_output: np.ndarray, w: np.ndarray, input_shape, stride, padding,
                          dilation, groups: int, algorithm: str = "direct") -> np.ndarray:
    """grad_input: (N, C, H, W), the transposed convolution of grad_output with w."""
    return _algorithm(algorithm).backward_input(grad_output, w, tuple(input_shape), stride,
                                                padding, dilation, groups)


def conv2d_backward_weight(x: np.ndarray, grad_output: np.ndarray, weight_shape, stride, padding,
                           dilation, groups: int, algorithm: str = "direct") -> np.ndarray:
    """grad_weight: (K, C/groups, KH, KW), the correlation of x with grad_output."""
    return _algorithm(algorithm).backward_weight(x, grad_output, tuple(weight_shape), stride,
                                                 padding, dilation, groups)


__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu_forward", "relu_backward", "max_pool2d_forward",
           "max_pool2d_backward", "ALGORITHMS"]
