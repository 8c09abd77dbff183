"""Direct forward, version 2: channel-inner, one output row per task.

    y[n, g*Kg + k, oh, ow] = b[g*Kg + k] + sum_{c<Cg} sum_{r<KH} sum_{s<KW}
                             x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]
                             * wt[g, c, r, s, k]

with the filter copied once to wt: (G, Cg, KH, KW, Kg) = w[g*Kg + k, c, r, s]. Loops
(n, g, oh) -> c -> r -> s -> ow -> k: each input value is multiplied by the group's Kg filter
values of its tap into an (OW, Kg) accumulator row, so the innermost loop is long and
contiguous and vectorises for any stride (what makes direct competitive on SimpleCNN's conv2).
Used from KINNER_MIN_CHANNELS output channels per group on, and (``backward_input``) for the
stride-1 input gradient with as many input channels per group: the transposed convolution.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu.conv_common import bias_operand, col_range, transposed_forward
from convkit.kernels.cpu.relu import relu_value
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin(fastmath={"contract"})
def _forward_kinner(x, wt, b, has_bias, relu, sh, sw, ph, pw, dil_h, dil_w, y):
    """One task per output row (n, g, oh); + bias, then ReLU when ``relu`` (conv2d_relu's
    epilogue) as the row is stored."""
    N, C, H, W = x.shape
    G, Cg, KH, KW, Kg = wt.shape
    OH, OW = y.shape[2], y.shape[3]
    for task in prange(N * G * OH):
        n, g, oh = task // (G * OH), (task // OH) % G, task % OH
        acc = np.empty((OW, Kg), dtype=y.dtype)
        for ow in range(OW):
            for k in range(Kg):
                acc[ow, k] = b[g * Kg + k] if has_bias else 0
        for c in range(Cg):
            for r in range(KH):
                ih = oh * sh - ph + r * dil_h
                if ih < 0 or ih >= H:
                    continue
                xrow = x[n, g * Cg + c, ih]
                for s in range(KW):
                    lo, hi, off = col_range(s, W, OW, sw, pw, dil_w)
                    wv = wt[g, c, r, s]
                    for ow in range(lo, hi):
                        xv = xrow[ow * sw + off]
                        a = acc[ow]
                        for k in range(Kg):
                            a[k] += xv * wv[k]
        for k in range(Kg):
            out = y[n, g * Kg + k, oh]
            if relu:
                for ow in range(OW):
                    out[ow] = relu_value(acc[ow, k])
            else:
                for ow in range(OW):
                    out[ow] = acc[ow, k]


def kinner_filter(w, groups):
    """w: (K, Cg, KH, KW) -> wt: (G, Cg, KH, KW, Kg), contiguous."""
    K, Cg, KH, KW = w.shape
    return np.ascontiguousarray(w.reshape(groups, K // groups, Cg, KH, KW).transpose(0, 2, 3, 4, 1))


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y: (N, K, OH, OW) for any stride, padding, dilation and groups."""
    y = empty((x.shape[0], w.shape[0]) + tuple(out_hw), x.dtype)
    bias, has_bias = bias_operand(b, x.dtype)
    _forward_kinner(y.size * w[0].size, x, kinner_filter(w, groups), bias, has_bias, relu,
                    *stride, *padding, *dilation, y)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) for stride 1 where dilation*(kernel - 1) >= padding: this kernel
    on grad_output with the transposed filter (``conv_common.transposed_forward``)."""
    return transposed_forward(forward, gy, w, input_shape, stride, padding, dilation, groups)
