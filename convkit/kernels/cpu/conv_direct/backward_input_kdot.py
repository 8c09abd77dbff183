"""Direct backward-input, version 3: one input-gradient row per task, gathering; a dot product
over the output channels innermost.

    gx[n, g*Cg + c, ih, iw] = sum_{r<KH} sum_{s<KW} sum_{k<Kg} w[g*Kg + k, c, r, s]
                              * gy[n, g*Kg + k, oh, ow]
        with oh = (ih + ph - r*dil_h) / sh and ow = (iw + pw - s*dil_w) / sw where those are
        whole numbers in range (every other tap reads nothing)

The gather of version 2 (``backward_input_cinner``) for few input but many output channels per
group (a network's stem: C = 3): grad_output channel-last, gyt: (N, G, OH, OW, Kg), the filter
as wt: (G, KH, KW, Cg, Kg); loops (n, g, ih) -> r -> s -> c -> ow -> k, so each (tap, pixel,
channel) is one dot product over the Kg output channels (reassociated, so it vectorises), added
into a (Cg, W) accumulator for the input row. Used from KINNER_MIN_CHANNELS output channels per
group. Measured here (before -> with the gather kernels): the 7x7 stride-2 stem 409 -> 43 ms.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu.conv_common import col_range, gathered_row, group_channels_last
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin(fastmath={"reassoc", "contract"})
def _backward_input_kdot(gyt, wt, sh, sw, ph, pw, dil_h, dil_w, gx):
    """One task per input row (n, g, ih); innermost loop a dot product over the group's output
    channels."""
    N, G, OH, OW, Kg = gyt.shape
    Cg, KH, KW = wt.shape[3], wt.shape[1], wt.shape[2]
    H, W = gx.shape[2], gx.shape[3]
    for task in prange(N * G * H):
        n, g, ih = task // (G * H), (task // H) % G, task % H
        acc = np.zeros((Cg, W), dtype=gx.dtype)
        for r in range(KH):
            oh = gathered_row(ih, r, sh, ph, dil_h, OH)
            if oh < 0:
                continue
            gyrow = gyt[n, g, oh]
            for s in range(KW):
                lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                for c in range(Cg):
                    wv = wt[g, r, s, c]
                    a = acc[c]
                    for ow in range(lo, hi):
                        gv = gyrow[ow]
                        total = a[ow * sw + off]
                        for k in range(Kg):
                            total += gv[k] * wv[k]
                        a[ow * sw + off] = total
        for c in range(Cg):
            out = gx[n, g * Cg + c, ih]
            for iw in range(W):
                out[iw] = acc[c, iw]


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) for any stride, padding, dilation and groups."""
    K, Cg, KH, KW = w.shape
    gx = empty(tuple(input_shape), gy.dtype)
    wt = np.ascontiguousarray(w.reshape(groups, K // groups, Cg, KH, KW).transpose(0, 3, 4, 2, 1))
    _backward_input_kdot(gy.size * w[0].size, group_channels_last(gy, groups), wt, *stride,
                         *padding, *dilation, gx)
    return gx
