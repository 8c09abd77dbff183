"""Direct forward, version 3: shifted planes, stride 1 only, one image per task.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg} sum_{r<KH} sum_{s<KW} w[k, c, r, s]
                      * xp[g*Cg + c, (oh + r*dil_h)*Wp + ow + s*dil_w],             g = k // Kg

where xp holds image n's planes zero-padded to (Hp, Wp) = (H + 2*ph, W + 2*pw), flattened (plus
a tail of zeros), so xp[c, ih'*Wp + iw'] = x[n, c, ih' - ph, iw' - pw]. Each input plane is
copied once into xp; then, for each k, loops c -> r -> s -> i: tap (r, s) adds w[k, c, r, s]
times xp shifted by (r*dil_h*Wp + s*dil_w) to the whole output plane, one long vectorised run of
OH*Wp, three taps per pass. The grid is Wp wide, so the columns ow >= OW of each row are
computed and dropped. Pays off with few input channels per group (SimpleCNN's conv1: C = 1,
depthwise), where the other versions' inner loops are short: up to SHIFTED_MAX_CHANNELS; and
(``backward_input``) for the stride-1 input gradient with as few output channels per group: the
transposed convolution.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu.conv_common import bias_operand, transposed_forward
from convkit.kernels.cpu.relu import relu_value
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@twin(fastmath={"contract"})
def _forward_shifted(x, w, b, has_bias, relu, ph, pw, dil_h, dil_w, groups, y):
    """One task per image n; + bias, then ReLU when ``relu`` (conv2d_relu's epilogue) as each
    row is stored."""
    N, C, H, W = x.shape
    K, Cg, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Kg = K // groups
    Hp, Wp = H + 2 * ph, W + 2 * pw
    L = OH * Wp
    tail = (KW - 1) * dil_w
    plane = Hp * Wp + tail
    for n in prange(N):
        xp = np.zeros(C * plane, dtype=x.dtype)  # 1-D, so every tap's slice is contiguous
        for c in range(C):
            for ih in range(H):
                dst = xp[c * plane + (ih + ph) * Wp + pw:]
                src = x[n, c, ih]
                for iw in range(W):
                    dst[iw] = src[iw]
        acc = np.empty(L, dtype=y.dtype)
        for k in range(K):
            g = k // Kg
            for i in range(L):
                acc[i] = b[k] if has_bias else 0
            for c in range(Cg):
                for r in range(KH):
                    row = xp[(g * Cg + c) * plane + r * dil_h * Wp:]
                    s = 0
                    while s + 3 <= KW:  # three taps per pass over acc: a third of its traffic
                        w0, w1, w2 = w[k, c, r, s], w[k, c, r, s + 1], w[k, c, r, s + 2]
                        s0 = row[s * dil_w:]
                        s1 = row[(s + 1) * dil_w:]
                        s2 = row[(s + 2) * dil_w:]
                        for i in range(L):
                            acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
                        s += 3
                    for t in range(s, KW):
                        wv = w[k, c, r, t]
                        src = row[t * dil_w:]
                        for i in range(L):
                            acc[i] += wv * src[i]
            for oh in range(OH):
                row = acc[oh * Wp:]
                out = y[n, k, oh]
                if relu:
                    for ow in range(OW):
                        out[ow] = relu_value(row[ow])
                else:
                    for ow in range(OW):
                        out[ow] = row[ow]


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y: (N, K, OH, OW) for stride (1, 1) only (any padding, dilation and groups)."""
    if tuple(stride) != (1, 1):
        raise ValueError(f"forward_shifted.forward: stride must be (1, 1), got {tuple(stride)}")
    y = empty((x.shape[0], w.shape[0]) + tuple(out_hw), x.dtype)
    bias, has_bias = bias_operand(b, x.dtype)
    _forward_shifted(y.size * w[0].size, x, np.ascontiguousarray(w), bias, has_bias, relu,
                     *padding, *dilation, groups, y)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) for stride 1 where dilation*(kernel - 1) >= padding: this kernel
    on grad_output with the transposed filter (``conv_common.transposed_forward``)."""
    return transposed_forward(forward, gy, w, input_shape, stride, padding, dilation, groups)
