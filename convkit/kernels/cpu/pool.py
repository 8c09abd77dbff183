"""Max-pool 2-D forward (values and torch-style indices) and backward.

x: (N, C, H, W) -> y, indices: (N, C, OH, OW). indices[n, c, oh, ow] is the flat index ih*W + iw
of the maximum inside plane (n, c), as torch returns it. A window's taps are
ih = oh*sh - ph + i*dil_h (i < KH), likewise for w; taps in the padding are skipped. NaN wins,
and the last NaN of a window is the one reported, exactly as torch's CPU kernel.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu._jit import twin
from convkit.kernels.shapes import pool_output_size


@twin
def _max_pool2d_forward(x, KH, KW, sh, sw, ph, pw, dil_h, dil_w, y, indices):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        plane = x[n, c]
        for oh in range(OH):
            h0 = oh * sh - ph
            while h0 < 0:  # first in-bounds tap: torch's index when no tap beats -inf
                h0 += dil_h
            for ow in range(OW):
                w0 = ow * sw - pw
                while w0 < 0:
                    w0 += dil_w
                best_i = h0 * W + w0
                best = -np.inf
                # taps by index, not range(h0, h1, dil_h): a stepped range costs a division
                for i in range(KH):
                    ih = oh * sh - ph + i * dil_h
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(KW):
                        iw = ow * sw - pw + j * dil_w
                        if iw < 0 or iw >= W:
                            continue
                        v = plane[ih, iw]
                        # branch-free select: data-dependent branches mispredict half the time
                        take = (v > best) | (v != v)
                        best = v if take else best
                        best_i = ih * W + iw if take else best_i
                y[n, c, oh, ow] = best
                indices[n, c, oh, ow] = best_i


@twin
def _max_pool2d_backward(gy, indices, gx):
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    HW = H * W
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        plane = gx[n, c].reshape(HW)
        for oh in range(OH):
            for ow in range(OW):
                i = indices[n, c, oh, ow]
                if 0 <= i < HW:  # an index outside the plane is dropped, never written
                    plane[i] += gy[n, c, oh, ow]


def max_pool2d_forward(x: np.ndarray, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """Return (y, indices) for a C-contiguous x: (N, C, H, W); arguments are (h, w) int pairs."""
    N, C, H, W = x.shape
    OH = pool_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    indices = np.empty((N, C, OH, OW), dtype=np.int64)
    _max_pool2d_forward(y.size * kernel_size[0] * kernel_size[1], x, *kernel_size, *stride,
                        *padding, *dilation, y, indices)
    return y, indices


def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray, input_shape) -> np.ndarray:
    """grad_input: each output gradient added at the input position its index names."""
    gx = np.zeros(tuple(input_shape), dtype=grad_output.dtype)
    _max_pool2d_backward(grad_output.size, grad_output, indices, gx)
    return gx
