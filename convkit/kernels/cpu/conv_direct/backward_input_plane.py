"""Direct backward-input, version 1: one input-gradient plane per task, scattering.

    gx[n, g*Cg + c, ih, iw] = sum_{k<Kg} sum_{r<KH} sum_{s<KW} w[g*Kg + k, c, r, s]
                              * gy[n, g*Kg + k, oh, ow]
        over the (oh, ow) with oh*sh - ph + r*dil_h = ih and ow*sw - pw + s*dil_w = iw

Loops (n, g*Cg + c) -> k -> r -> s -> oh -> ow: each tap adds w times an output-gradient row
into the input-gradient row it came from (forward version 1 run backwards). The task owns the
whole plane it writes, so no two threads write the same element. Used where the faster
versions do not apply: fewer than KINNER_MIN_CHANNELS channels per group on both sides (and no
stride-1 transposed forward).
"""
from numba import prange

from convkit.kernels.cpu.conv_common import col_range
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin
def _backward_input_plane(gy, w, sh, sw, ph, pw, dil_h, dil_w, G, gx):
    """One task per input-gradient plane (n, ci)."""
    N, C, H, W = gx.shape
    K, Cg, KH, KW = w.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Kg = K // G
    for nc in prange(N * C):
        n, ci = nc // C, nc % C
        g, c = ci // Cg, ci % Cg
        out = gx[n, ci]
        out[:, :] = 0
        for k in range(g * Kg, (g + 1) * Kg):
            for r in range(KH):
                for s in range(KW):
                    wv = w[k, c, r, s]
                    lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                    for oh in range(OH):
                        ih = oh * sh - ph + r * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        gyrow = gy[n, k, oh]
                        gxrow = out[ih]
                        for ow in range(lo, hi):
                            gxrow[ow * sw + off] += wv * gyrow[ow]


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) for any stride, padding, dilation and groups."""
    gx = empty(tuple(input_shape), gy.dtype)
    _backward_input_plane(gy.size * w[0].size, gy, w, *stride, *padding, *dilation, groups, gx)
    return gx
