"""CUDA kernels (numba.cuda, torch-free): the same contract as ``convkit.kernels.cpu``.

Arrays are C-contiguous NCHW device arrays: numba device arrays or any object exporting
``__cuda_array_interface__`` (a torch CUDA tensor), viewed without a copy; results are numba
device arrays. stride, padding and dilation are explicit (h, w) int pairs (padding symmetric);
``algorithm`` is "direct" or "im2col". Arguments are assumed valid (``convkit.functional``
validates them through ``convkit.kernels.shapes``).

Every function takes a keyword ``stream`` (a numba stream; 0 = the default stream) and only
enqueues work on it: results are ready once that stream is synchronised. No cuDNN, cuBLAS or
CuPy is involved; see conv_direct.py and conv_im2col.py for the tiling and for why every
convolution result is deterministic (pool backward: see pool.py).
"""
import importlib
import pkgutil
import warnings

from convkit.kernels.cuda import conv_direct, conv_im2col
from convkit.kernels.cuda._common import as_device, set_allocator
from convkit.kernels.cuda.conv_direct import conv2d_backward_bias as _backward_bias
from convkit.kernels.cuda.conv_im2col import gemm
from convkit.kernels.cuda.pool import max_pool2d_backward, max_pool2d_forward
from convkit.kernels.cuda.relu import relu_backward, relu_forward
from convkit.kernels.shapes import conv_output_size

ALGORITHMS = {"direct": conv_direct, "im2col": conv_im2col}


def _algorithm(name):
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {name!r}") from None


def _kernel_modules() -> list:
    """Every module of this package but _report, in name order: each declares its kernels."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "_report")
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def kernel_specs(dtype) -> list:
    """Every kernel this package launches for ``dtype`` (numpy float32 or float64), at every
    argument signature its launch code uses: a list of ``_report.KernelSpec``, gathered from
    each module's ``kernel_specs(dtype)`` (a module without one is warned about)."""
    specs = []
    for module in _kernel_modules():
        declare = getattr(module, "kernel_specs", None)
        if declare is None:
            warnings.warn(f"{module.__name__} defines no kernel_specs(dtype): its kernels are "
                          f"left out of the report", stacklevel=2)
            continue
        specs.extend(declare(dtype))
    return specs


def conv2d_forward(x, w, b, stride, padding, dilation, groups: int, algorithm: str = "direct",
                   relu: bool = False, *, stream=0):
    """y: (N, K, OH, OW) = conv2d(x: (N, C, H, W), w: (K, C/groups, KH, KW)) + b (b may be None);
    ``relu``: then ReLU (torch's clamp_min), applied by the conv kernels as they store y."""
    x, w, b = as_device(x), as_device(w), as_device(b)
    OH = conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0])
    OW = conv_output_size(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1])
    return _algorithm(algorithm).forward(x, w, b, stride, padding, dilation, groups, (OH, OW),
                                         relu=relu, stream=stream)


def conv2d_backward_input(grad_output, w, input_shape, stride, padding, dilation, groups: int,
                          algorithm: str = "direct", *, stream=0):
    """grad_input: (N, C, H, W), the transposed convolution of grad_output with w."""
    return _algorithm(algorithm).backward_input(as_device(grad_output), as_device(w),
                                                tuple(input_shape), stride, padding, dilation,
                                                groups, stream=stream)


def conv2d_backward_weight(x, grad_output, weight_shape, stride, padding, dilation, groups: int,
                           algorithm: str = "direct", *, stream=0):
    """grad_weight: (K, C/groups, KH, KW), the correlation of x with grad_output."""
    return _algorithm(algorithm).backward_weight(as_device(x), as_device(grad_output),
                                                 tuple(weight_shape), stride, padding, dilation,
                                                 groups, stream=stream)


def conv2d_backward_bias(grad_output, *, stream=0):
    """grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow]."""
    return _backward_bias(grad_output, stream=stream)


__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu_forward", "relu_backward", "max_pool2d_forward",
           "max_pool2d_backward", "ALGORITHMS", "gemm", "set_allocator", "kernel_specs"]
