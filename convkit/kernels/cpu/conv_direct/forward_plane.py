"""Direct forward, version 1: one output plane per task, the plain loop order.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg} sum_{r<KH} sum_{s<KW} w[k, c, r, s]
                      * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w],  g = k // Kg

Loops (n, k) -> c -> r -> s -> oh -> ow: each tap weight is multiplied into a whole output
plane, row by row, so the innermost loop runs along an output row (reading x with stride sw).
It needs no copy of anything. Used where the faster versions do not apply: few output channels
per group (too few for version 2's innermost loop) and a stride or too many input channels per
group for version 3 (strided depthwise, for one).
"""
from numba import prange

from convkit.kernels.cpu.conv_common import bias_operand, col_range
from convkit.kernels.cpu.relu import relu_value
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin
def _forward_plane(x, w, b, has_bias, relu, sh, sw, ph, pw, dil_h, dil_w, G, y):
    """One task per output plane (n, k); + bias, then ReLU when ``relu`` (conv2d_relu's
    epilogue) while the plane is still in cache."""
    N, C, H, W = x.shape
    K, Cg, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Kg = K // G
    for nk in prange(N * K):
        n, k = nk // K, nk % K
        c0 = (k // Kg) * Cg
        out = y[n, k]
        out[:, :] = b[k] if has_bias else 0
        for c in range(Cg):
            for r in range(KH):
                for s in range(KW):
                    wv = w[k, c, r, s]
                    lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                    for oh in range(OH):
                        ih = oh * sh - ph + r * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        xrow = x[n, c0 + c, ih]
                        yrow = out[oh]
                        for ow in range(lo, hi):
                            yrow[ow] += wv * xrow[ow * sw + off]
        if relu:
            for oh in range(OH):
                yrow = out[oh]
                for ow in range(OW):
                    yrow[ow] = relu_value(yrow[ow])


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y: (N, K, OH, OW) for any stride, padding, dilation and groups."""
    y = empty((x.shape[0], w.shape[0]) + tuple(out_hw), x.dtype)
    bias, has_bias = bias_operand(b, x.dtype)
    _forward_plane(y.size * w[0].size, x, w, bias, has_bias, relu, *stride, *padding, *dilation,
                   groups, y)
    return y
