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

Both kernels are grid-stride loops over output elements that carry the element's coordinates
from one iteration to the next with adds and carries (``_advance``) instead of dividing the flat
index: a 64-bit division or remainder by a runtime value is a ~70-instruction subroutine call in
the SASS. Window taps are walked with while loops for the same reason (``range`` with a runtime
step divides to get its trip count). The running maximum starts at -inf of x's own type
(``-math.inf`` is a float64 and made every comparison a float64 one in float32 kernels).
"""
import math

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
    zeros,
)
from convkit.kernels.cuda._report import INT, KernelSpec, array, dtype_name
from convkit.kernels.shapes import pool_output_size


@cuda.jit(device=True, inline=True)
def _advance(col, row, plane, d_col, d_row, d_plane, COLS, ROWS):
    """(plane, row, col) + (d_plane, d_row, d_col) in the mixed radix (*, ROWS, COLS), for
    digits and steps already reduced (col, d_col < COLS; row, d_row < ROWS): no division."""
    col += d_col
    row += d_row
    plane += d_plane
    if col >= COLS:
        col -= COLS
        row += 1
    if row >= ROWS:
        row -= ROWS
        plane += 1
    return col, row, plane


@specialise
def _max_pool2d_forward(dtype_char):
    neg_inf = numba_type(dtype_char)(-math.inf)

    @cuda.jit
    def max_pool2d_forward(x, KH, KW, sh, sw, ph, pw, dil_h, dil_w, y, indices):
        """x: (N*C, H, W) -> y, indices: (N*C, OH, OW); one output element per iteration."""
        NC, H, W = x.shape
        OH, OW = y.shape[1], y.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        ow, oh, pl = start % OW, (start // OW) % OH, start // (OW * OH)
        d_ow, d_oh, d_pl = step % OW, (step // OW) % OH, step // (OW * OH)
        while pl < NC:
            h0, w0 = oh * sh - ph, ow * sw - pw
            h1 = min(h0 + (KH - 1) * dil_h + 1, H)
            w1 = min(w0 + (KW - 1) * dil_w + 1, W)
            while h0 < 0:
                h0 += dil_h
            while w0 < 0:
                w0 += dil_w
            best, best_i = neg_inf, h0 * W + w0
            ih = h0
            while ih < h1:
                iw = w0
                while iw < w1:
                    v = x[pl, ih, iw]
                    if v > best or math.isnan(v):
                        best, best_i = v, ih * W + iw
                    iw += dil_w
                ih += dil_h
            y[pl, oh, ow] = best
            indices[pl, oh, ow] = best_i
            ow, oh, pl = _advance(ow, oh, pl, d_ow, d_oh, d_pl, OW, OH)

    return max_pool2d_forward


@cuda.jit
def _max_pool2d_backward(gy, indices, P, HW, gx):
    """gx (flat, zeroed) += gy at plane offset + index; gy and indices flat over (N*C, P)."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    i, p, pl = start, start % P, start // P  # flat index, its offset in the plane, the plane
    d_p, d_pl = step % P, step // P
    while i < gy.size:
        j = indices[i]
        if 0 <= j < HW:  # an index outside the plane is dropped, never written
            cuda.atomic.add(gx, pl * HW + j, gy[i])
        i += step
        p += d_p
        pl += d_pl
        if p >= P:
            p -= P
            pl += 1


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
        _max_pool2d_forward(x.dtype.char)[grid, block, stream](
            x.reshape(N * C, H, W), kernel_size[0], kernel_size[1], stride[0], stride[1],
            padding[0], padding[1], dilation[0], dilation[1], y.reshape(N * C, OH, OW),
            indices.reshape(N * C, OH, OW))
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
        KernelSpec(f"max_pool2d_forward_{name}", _max_pool2d_forward(np.dtype(dtype).char),
                   (array(dtype, 3),) + (INT,) * 8 + (array(dtype, 3), array(idx, 3)),
                   _common.THREADS_1D, 0, "memory"),
        KernelSpec(f"max_pool2d_backward_{name}", _max_pool2d_backward,
                   (array(dtype), array(idx), INT, INT, array(dtype)),
                   _common.THREADS_1D, 0, "memory"),
    ]
