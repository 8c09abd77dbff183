"""ReLU forward and backward on flat views of C-contiguous device arrays (any shape).

y = x where x >= 0 or NaN, else 0 (torch's clamp_min: NaN propagates, -0.0 stays -0.0);
grad_input = grad_output where y > 0, 0 where y <= 0
(torch's threshold_backward). One grid-stride thread per element.
"""
from numba import cuda

from convkit.kernels.cuda import _common
from convkit.kernels.cuda._common import as_device, empty, flat, launch_config
from convkit.kernels.cuda._report import KernelSpec, array, dtype_name


@cuda.jit
def _relu_forward(x, y):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, step):
        v = x[i]
        y[i] = 0 if v < 0 else v


@cuda.jit
def _relu_backward(gy, y, gx):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, gy.size, step):
        gx[i] = 0 if y[i] <= 0 else gy[i]


def relu_forward(x, out=None, *, stream=0):
    """y = relu(x) for a C-contiguous device array of any shape; ``out=x`` computes in place."""
    x = as_device(x)
    y = empty(x.shape, x.dtype, stream) if out is None else as_device(out)
    if x.size:
        grid, block = launch_config((x.size,))
        _relu_forward[grid, block, stream](flat(x), flat(y))
    return y


def relu_backward(grad_output, y, *, stream=0):
    """grad_input = grad_output * (y > 0), y being the forward output."""
    gy, y = as_device(grad_output), as_device(y)
    gx = empty(gy.shape, gy.dtype, stream)
    if gy.size:
        grid, block = launch_config((gy.size,))
        _relu_backward[grid, block, stream](flat(gy), flat(y), flat(gx))
    return gx


def kernel_specs(dtype) -> list:
    """Both ReLU kernels at their launch signatures (see ``_report``)."""
    a, name = array(dtype), dtype_name(dtype)
    return [
        KernelSpec(f"relu_forward_{name}", _relu_forward, (a, a), _common.THREADS_1D, 0,
                   "memory"),
        KernelSpec(f"relu_backward_{name}", _relu_backward, (a, a, a), _common.THREADS_1D, 0,
                   "memory"),
    ]
