"""Bias gradient (one kernel for both algorithms).

    gb[k] = sum_{n<N} sum_{oh<OH} sum_{ow<OW} gy[n, k, oh, ow]
"""
import numpy as np
from numba import prange

from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin(fastmath={"reassoc"})
def _backward_bias(gy, gb):
    """One task per channel k; accumulated in float64 (reassociation lets the sum vectorise)."""
    N, K = gy.shape[0], gy.shape[1]
    P = gy.shape[2] * gy.shape[3]
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            plane = gy[n, k].reshape(P)
            for i in range(P):
                acc += np.float64(plane[i])
        gb[k] = acc


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """grad_bias: (K,), the sum of grad_output: (N, K, OH, OW) over n, oh, ow."""
    gb = empty(grad_output.shape[1:2], grad_output.dtype)
    _backward_bias(grad_output.size, grad_output, gb)
    return gb
