"""Direct backward-weight, version 2: channel-inner, one input channel per task.

    gwt[g, c, r, s, k] = gw[g*Kg + k, c, r, s]
                       = sum_{n<N} sum_{oh<OH} sum_{ow<OW} x[n, g*Cg + c, oh*sh - ph + r*dil_h,
                                                             ow*sw - pw + s*dil_w]
                         * gyt[n, g, oh, ow, k]

with grad_output copied channel-last, gyt: (N, G, OH, OW, Kg). Loops (g, c) -> n -> oh -> r ->
s -> ow -> k: each input value is multiplied by the Kg output gradients of its pixel into the
(KH, KW, Kg) block of the filter gradient the task owns, so the innermost loop is long and
contiguous (forward version 2's order). Used from KINNER_MIN_CHANNELS output channels per group.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu.conv_common import col_range, group_channels_last
from convkit.runtime.jit import twin


@twin(fastmath={"contract"})
def _backward_weight_kinner(x, gyt, sh, sw, ph, pw, dil_h, dil_w, gwt):
    """gwt: (G, Cg, KH, KW, Kg); one task per input channel (g, c)."""
    N, C, H, W = x.shape
    G, Cg, KH, KW, Kg = gwt.shape
    OH, OW = gyt.shape[2], gyt.shape[3]
    for gc in prange(G * Cg):
        g, c = gc // Cg, gc % Cg
        acc = gwt[g, c]
        acc[:] = 0
        for n in range(N):
            plane = x[n, g * Cg + c]
            for oh in range(OH):
                for r in range(KH):
                    ih = oh * sh - ph + r * dil_h
                    if ih < 0 or ih >= H:
                        continue
                    xrow = plane[ih]
                    for s in range(KW):
                        lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                        a = acc[r, s]
                        for ow in range(lo, hi):
                            xv = xrow[ow * sw + off]
                            gv = gyt[n, g, oh, ow]
                            for k in range(Kg):
                                a[k] += xv * gv[k]


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    """grad_weight: (K, Cg, KH, KW) for any stride, padding, dilation and groups."""
    K, Cg, KH, KW = weight_shape
    gwt = np.empty((groups, Cg, KH, KW, K // groups), dtype=x.dtype)
    _backward_weight_kinner(gy.size * Cg * KH * KW, x, group_channels_last(gy, groups), *stride,
                            *padding, *dilation, gwt)
    return np.ascontiguousarray(gwt.transpose(0, 4, 1, 2, 3).reshape(weight_shape))
