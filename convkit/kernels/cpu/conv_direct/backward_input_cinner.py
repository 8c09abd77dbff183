"""Direct backward-input, version 2: one input-gradient row per task, gathering; channel-inner.

    gx[n, g*Cg + c, ih, iw] = sum_{r<KH} sum_{s<KW} sum_{k<Kg} w[g*Kg + k, c, r, s]
                              * gy[n, g*Kg + k, oh, ow]
        with oh = (ih + ph - r*dil_h) / sh and ow = (iw + pw - s*dil_w) / sw where those are
        whole numbers in range (every other tap reads nothing)

grad_output is copied channel-last, gyt: (N, G, OH, OW, Kg), and the filter to
wt: (G, KH, KW, Kg, Cg). Loops (n, g, ih) -> r (the output row oh that tap r gathers from, if
any) -> s -> ow -> k -> c: each gy value times a contiguous row of Cg filter values, added into a
(W, Cg) accumulator for the input row. The task owns its row, so no two threads write the same
element, at any stride. Used from KINNER_MIN_CHANNELS input channels per group (the innermost
loop runs over them); version 3 (``backward_input_kdot``) is the same gather for few input
channels. Measured here (before -> with the gather kernels): strided 3x3 C64->128 448 -> 36 ms.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu.conv_common import col_range, gathered_row, group_channels_last
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin(fastmath={"contract"})
def _backward_input_cinner(gyt, wt, sh, sw, ph, pw, dil_h, dil_w, gx):
    """One task per input row (n, g, ih); innermost loop over the group's input channels."""
    N, G, OH, OW, Kg = gyt.shape
    Cg, KH, KW = wt.shape[4], wt.shape[1], wt.shape[2]
    H, W = gx.shape[2], gx.shape[3]
    for task in prange(N * G * H):
        n, g, ih = task // (G * H), (task // H) % G, task % H
        acc = np.zeros((W, Cg), dtype=gx.dtype)
        for r in range(KH):
            oh = gathered_row(ih, r, sh, ph, dil_h, OH)
            if oh < 0:
                continue
            gyrow = gyt[n, g, oh]
            for s in range(KW):
                lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                wrs = wt[g, r, s]
                for ow in range(lo, hi):
                    gv = gyrow[ow]
                    a = acc[ow * sw + off]
                    for k in range(Kg):
                        gk = gv[k]
                        wv = wrs[k]
                        for c in range(Cg):
                            a[c] += gk * wv[c]
        for c in range(Cg):
            out = gx[n, g * Cg + c, ih]
            for iw in range(W):
                out[iw] = acc[iw, c]


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) for any stride, padding, dilation and groups."""
    K, Cg, KH, KW = w.shape
    gx = empty(tuple(input_shape), gy.dtype)
    wt = np.ascontiguousarray(w.reshape(groups, K // groups, Cg, KH, KW).transpose(0, 3, 4, 1, 2))
    _backward_input_cinner(gy.size * w[0].size, group_channels_last(gy, groups), wt, *stride,
                           *padding, *dilation, gx)
    return gx
