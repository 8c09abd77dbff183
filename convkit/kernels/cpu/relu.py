"""ReLU forward and backward on flat views of NCHW (or any-shape) numpy arrays.

y = x where x >= 0 or NaN, else 0 (torch's clamp_min: NaN propagates, -0.0 stays -0.0);
grad_input = grad_output where y > 0, 0 where y <= 0
(torch's threshold_backward, so a NaN output passes its gradient through).
"""
import numpy as np
from numba import njit, prange

from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@njit(inline="always")
def relu_value(v):
    """torch's clamp_min(v, 0): v where v >= 0 or NaN, else 0, so NaN propagates and -0.0 stays
    -0.0. The one place the rule is written: the ReLU kernel and the conv epilogues call it."""
    return 0 if v < 0 else v


# The kernels take C-contiguous arrays of any rank and walk their flat views (made inside the
# compiled code: two numpy reshapes cost 0.4 us, a fifth of a tiny ReLU's kernel call)
@twin
def _relu_forward(x, y):
    xf, yf = x.reshape(x.size), y.reshape(y.size)
    for i in prange(xf.size):
        yf[i] = relu_value(xf[i])


@twin
def _relu_backward(gy, y, gx):
    gyf, yf, gxf = gy.reshape(gy.size), y.reshape(y.size), gx.reshape(gx.size)
    for i in prange(gyf.size):
        gxf[i] = 0 if yf[i] <= 0 else gyf[i]


def relu_forward(x: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """y = relu(x) for a C-contiguous array of any shape; ``out=x`` computes in place."""
    y = empty(x.shape, x.dtype) if out is None else out
    _relu_forward(x.size, x, y)  # work: one step per element
    return y


def relu_backward(grad_output: np.ndarray, y: np.ndarray) -> np.ndarray:
    """grad_input = grad_output * (y > 0), y being the forward output."""
    gx = empty(grad_output.shape, grad_output.dtype)
    _relu_backward(grad_output.size, grad_output, y, gx)
    return gx
