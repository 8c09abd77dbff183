"""Max-pool 2-D forward (values and torch-style indices) and backward on device arrays.

x: (N, C, H, W) -> y, indices: (N, C, OH, OW). indices[n, c, oh, ow] is the flat index ih*W + iw
of the maximum inside plane (n, c), as torch returns it. A window's taps are
ih = oh*sh - ph + i*dil_h (i < KH), likewise for w; taps in the padding are skipped. NaN wins and
the last NaN of a window is reported, exactly as torch's CPU kernel (and convkit's CPU twin).

Backward scatters each output gradient to the input position its index names with an atomic
add: the contract passes no window geometry, so a gather is not possible. An input pixel that is
the maximum of at most two windows gets an exact, order-independent sum (a + b == b + a), so the
result is deterministic for every non-overlapping pool (stride >= kernel, torch's default) and
for 2-way overlaps; with three or more windows sharing one maximum the float summation order
may vary between runs, as in any atomic-add kernel.
"""
import math

import numpy as np
from numba import cuda

from convkit.kernels.cuda import _common
from convkit.kernels.cuda._common import as_device, empty, flat, launch_config, zeros
from convkit.kernels.cuda._report import INT, KernelSpec, array, dtype_name
from convkit.kernels.shapes import pool_output_size


@cuda.jit
def _max_pool2d_forward(x, KH, KW, sh, sw, ph, pw, dil_h, dil_w, y, indices):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, N * C * OH * OW, step):
        ow = i % OW
        oh = (i // OW) % OH
        c = (i // (OW * OH)) % C
        n = i // (OW * OH * C)
        h0 = oh * sh - ph
        h1 = min(h0 + (KH - 1) * dil_h + 1, H)
        while h0 < 0:
            h0 += dil_h
        w0 = ow * sw - pw
        w1 = min(w0 + (KW - 1) * dil_w + 1, W)
        while w0 < 0:
            w0 += dil_w
        best_i = h0 * W + w0
        best = -math.inf
        for ih in range(h0, h1, dil_h):
            for iw in range(w0, w1, dil_w):
                v = x[n, c, ih, iw]
                if v > best or math.isnan(v):
                    best = v
                    best_i = ih * W + iw
        y[n, c, oh, ow] = best
        indices[n, c, oh, ow] = best_i


@cuda.jit
def _max_pool2d_backward(gy, indices, P, HW, gx):
    """gx (flat, zeroed) += gy at plane offset + index; gy and indices flat over (N*C, P)."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, gy.size, step):
        j = indices[i]
        if 0 <= j < HW:  # an index outside the plane is dropped, never written
            cuda.atomic.add(gx, (i // P) * HW + j, gy[i])


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode: bool, *, stream=0):
    """Return (y, indices) for a C-contiguous x: (N, C, H, W); arguments are (h, w) int pairs."""
    x = as_device(x)
    N, C, H, W = x.shape
    OH = pool_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = empty((N, C, OH, OW), x.dtype, stream)
    indices = empty((N, C, OH, OW), np.int64, stream)
    if y.size:
        grid, block = launch_config((y.size,))
        _max_pool2d_forward[grid, block, stream](
            x, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], y, indices)
    return y, indices


def max_pool2d_backward(grad_output, indices, input_shape, *, stream=0):
    """grad_input: each output gradient added at the input position its index names."""
    gy, indices = as_device(grad_output), as_device(indices)
    gx = zeros(tuple(input_shape), gy.dtype, stream)
    if gy.size and gx.size:
        grid, block = launch_config((gy.size,))
        _max_pool2d_backward[grid, block, stream](
            flat(gy), flat(indices), gy.shape[2] * gy.shape[3], input_shape[2] * input_shape[3],
            flat(gx))
    return gx


def kernel_specs(dtype) -> list:
    """Both pooling kernels at their launch signatures (see ``_report``)."""
    name, idx = dtype_name(dtype), np.int64
    return [
        KernelSpec(f"max_pool2d_forward_{name}", _max_pool2d_forward,
                   (array(dtype, 4),) + (INT,) * 8 + (array(dtype, 4), array(idx, 4)),
                   _common.THREADS_1D, 0, "memory"),
        KernelSpec(f"max_pool2d_backward_{name}", _max_pool2d_backward,
                   (array(dtype), array(idx), INT, INT, array(dtype)),
                   _common.THREADS_1D, 0, "memory"),
    ]
