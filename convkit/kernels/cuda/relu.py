"""ReLU forward and backward on flat views of C-contiguous device arrays (any shape).

y = x where x >= 0 or NaN, else 0 (torch's clamp_min: NaN propagates, -0.0 stays -0.0; the
rule is epilogue.relu_value, which the conv kernels' ReLU epilogue applies too);
grad_input = grad_output where y > 0, 0 where y <= 0
(torch's threshold_backward). One grid-stride thread per element.

The kernels are built per dtype so that the zero they store has the array's type: a bare ``0``
makes numba unify int with float32 as float64 (10 F2F conversions per element in the sm_90
SASS of the backward kernel before this).
"""
import numpy as np
from numba import cuda

from convkit.kernels.cuda import _common
from convkit.kernels.cuda._common import (
    as_device,
    empty,
    flat,
    launch_config,
    numba_type,
    specialise,
)
from convkit.kernels.cuda._report import KernelSpec, array, dtype_name
from convkit.kernels.cuda.epilogue import relu_value


@specialise
def _relu_forward(dtype_char):
    zero = numba_type(dtype_char)(0)

    @cuda.jit
    def relu_forward(x, y):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, x.size, step):
            y[i] = relu_value(x[i], zero)

    return relu_forward


@specialise
def _relu_backward(dtype_char):
    zero = numba_type(dtype_char)(0)

    @cuda.jit
    def relu_backward(gy, y, gx):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, gy.size, step):
            gx[i] = zero if y[i] <= 0 else gy[i]

    return relu_backward


def relu_forward(x, out=None, *, stream=0):
    """y = relu(x) for a C-contiguous device array of any shape; ``out=x`` computes in place."""
    x = as_device(x)
    y = empty(x.shape, x.dtype, stream) if out is None else as_device(out)
    if x.size:
        grid, block = launch_config((x.size,))
        _relu_forward(x.dtype.char)[grid, block, stream](flat(x), flat(y))
    return y


def relu_backward(grad_output, y, *, stream=0):
    """grad_input = grad_output * (y > 0), y being the forward output."""
    gy, y = as_device(grad_output), as_device(y)
    gx = empty(gy.shape, gy.dtype, stream)
    if gy.size:
        grid, block = launch_config((gy.size,))
        _relu_backward(gy.dtype.char)[grid, block, stream](flat(gy), flat(y), flat(gx))
    return gx


def kernel_specs(dtype) -> list:
    """Both ReLU kernels at their launch signatures (see ``_report``)."""
    a, name, char = array(dtype), dtype_name(dtype), np.dtype(dtype).char
    return [
        KernelSpec(f"relu_forward_{name}", _relu_forward(char), (a, a), _common.THREADS_1D, 0,
                   "memory"),
        KernelSpec(f"relu_backward_{name}", _relu_backward(char), (a, a, a),
                   _common.THREADS_1D, 0, "memory"),
    ]
