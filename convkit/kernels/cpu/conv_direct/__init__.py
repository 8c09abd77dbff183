"""Direct 2-D convolution (cross-correlation, as torch) with no unfolded buffer.

x: (N, C, H, W), w: (K, C/G, KH, KW), y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg, r<KH, s<KW} w[k, c, r, s]
                             * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

with g = k // Kg and taps outside the input read as zero. Two loop orders, both with no
unfolded buffer:

- *channel-inner* (``_forward_kinner``, ``_backward_weight_kinner``), used when a group has at
  least KINNER_MIN_CHANNELS output channels: the innermost loop runs over the group's output
  channels against a (Cg, KH, KW, Kg) copy of the filter, so it is long and contiguous and
  vectorises for any stride (what makes direct competitive on SimpleCNN's conv2);
- *plane* (``_forward``, ``_backward_input``, ``_backward_weight``) for few channels per group
  (depthwise): the innermost loop runs along an output row;
- *shifted plane* (``_forward_shifted``), stride-1 forward with few input channels per group
  (SimpleCNN's conv1): each input plane is copied once into a zero-padded buffer, and each tap
  then adds w * (the buffer shifted by the tap) to the whole output plane in one long,
  vectorised run over a grid as wide as the padded input; the columns beyond OW are dropped.

The output-column range whose taps land inside the input is computed once per (s), so no inner
loop has a bounds test. Backward-input with stride 1 is a forward kernel (channel-inner, or the
shifted plane for few channels per group) applied to grad_output with the flipped, transposed
filter (a transposed convolution, as Chainer writes it); any other backward-input with at least
KINNER_MIN_CHANNELS channels per group on one side gathers, for each input row, the output rows
whose taps land on it (``_backward_input_cinner`` / ``_kdot``: strided 3x3 C64->128 448 -> 36 ms,
the 7x7 stride-2 stem 409 -> 43 ms, measured here). The plane weight gradient keeps a row of
partial sums per tap and meets each grad_output row once with all taps (depthwise 3x3 on 32x64x56^2:
31 -> 6.4 ms, measured here). Each
parallel task owns whole output rows or planes, so no two threads write the same element and the
results are deterministic.
"""
import numpy as np
from numba import njit, prange

from convkit.kernels.cpu.relu import relu_value
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@njit(inline="always")
def _col_range(s, W, OW, sw, pw, dil_w):
    """Output columns ow whose tap iw = ow*sw - pw + s*dil_w lies in [0, W)."""
    off = s * dil_w - pw
    lo = max(0, -((off) // sw)) if off < 0 else 0
    hi = min(OW, (W - 1 - off) // sw + 1)
    return lo, hi, off


# output channels per group from which the channel-inner loop order is used: its innermost loop
# must fill at least one AVX2 float32 vector
KINNER_MIN_CHANNELS = 8
# input channels per group up to which a stride-1 forward uses the shifted-plane kernel
SHIFTED_MAX_CHANNELS = 4


@twin(fastmath={"contract"})
def _forward_shifted(x, w, b, has_bias, relu, ph, pw, dil_h, dil_w, groups, y):
    """Stride-1 forward (+ bias, then ReLU when ``relu``: the epilogue of conv2d_relu, applied as
    each row is stored); one task per image. xp holds the image's planes zero-padded to
    (Hp, Wp) plus a tail of zeros, so the taps of output row oh, column ow (ow < Wp) sit at
    xp[c, (oh + r*dil_h)*Wp + ow + s*dil_w] and a tap is one shifted run over all OH*Wp."""
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


@twin(fastmath={"contract"})
def _forward_kinner(x, wt, b, has_bias, relu, sh, sw, ph, pw, dil_h, dil_w, y):
    """Forward with the filter as wt: (G, Cg, KH, KW, Kg); one task per output row (n, g, oh)."""
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
                    lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
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


@njit(inline="always")
def _gathered_row(ih, r, sh, ph, dil_h, OH):
    """The output row oh whose tap r reads input row ih (oh*sh - ph + r*dil_h == ih), or -1."""
    num = ih + ph - r * dil_h
    if num < 0 or num % sh != 0 or num // sh >= OH:
        return -1
    return num // sh


@twin(fastmath={"contract"})
def _backward_input_cinner(gyt, wt, sh, sw, ph, pw, dil_h, dil_w, gx):
    """Backward-input for any stride with gyt: (N, G, OH, OW, Kg) and the filter as
    wt: (G, KH, KW, Kg, Cg); one task per input row (n, g, ih), which gathers every output row
    whose taps land on it, so no two tasks write the same element. The innermost loop runs over
    the group's input channels."""
    N, G, OH, OW, Kg = gyt.shape
    Cg, KH, KW = wt.shape[4], wt.shape[1], wt.shape[2]
    H, W = gx.shape[2], gx.shape[3]
    for task in prange(N * G * H):
        n, g, ih = task // (G * H), (task // H) % G, task % H
        acc = np.zeros((W, Cg), dtype=gx.dtype)
        for r in range(KH):
            oh = _gathered_row(ih, r, sh, ph, dil_h, OH)
            if oh < 0:
                continue
            gyrow = gyt[n, g, oh]
            for s in range(KW):
                lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
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


@twin(fastmath={"reassoc", "contract"})
def _backward_input_kdot(gyt, wt, sh, sw, ph, pw, dil_h, dil_w, gx):
    """As ``_backward_input_cinner`` for few input channels per group (the stem of a network:
    C=3), with the filter as wt: (G, KH, KW, Cg, Kg): each (tap, pixel, channel) is one dot
    product over the group's output channels (reassociated, so it vectorises)."""
    N, G, OH, OW, Kg = gyt.shape
    Cg, KH, KW = wt.shape[3], wt.shape[1], wt.shape[2]
    H, W = gx.shape[2], gx.shape[3]
    for task in prange(N * G * H):
        n, g, ih = task // (G * H), (task // H) % G, task % H
        acc = np.zeros((Cg, W), dtype=gx.dtype)
        for r in range(KH):
            oh = _gathered_row(ih, r, sh, ph, dil_h, OH)
            if oh < 0:
                continue
            gyrow = gyt[n, g, oh]
            for s in range(KW):
                lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
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


@twin(fastmath={"contract"})
def _backward_weight_kinner(x, gyt, sh, sw, ph, pw, dil_h, dil_w, gwt):
    """gwt: (G, Cg, KH, KW, Kg) from gyt: (N, G, OH, OW, Kg); one task per input channel."""
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
                        lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
                        a = acc[r, s]
                        for ow in range(lo, hi):
                            xv = xrow[ow * sw + off]
                            gv = gyt[n, g, oh, ow]
                            for k in range(Kg):
                                a[k] += xv * gv[k]


@twin
def _forward(x, w, b, has_bias, relu, sh, sw, ph, pw, dil_h, dil_w, G, y):
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
                    lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
                    for oh in range(OH):
                        ih = oh * sh - ph + r * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        xrow = x[n, c0 + c, ih]
                        yrow = out[oh]
                        for ow in range(lo, hi):
                            yrow[ow] += wv * xrow[ow * sw + off]
        if relu:  # the plane is still in cache
            for oh in range(OH):
                yrow = out[oh]
                for ow in range(OW):
                    yrow[ow] = relu_value(yrow[ow])


@twin
def _backward_input(gy, w, sh, sw, ph, pw, dil_h, dil_w, G, gx):
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
                    lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
                    for oh in range(OH):
                        ih = oh * sh - ph + r * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        gyrow = gy[n, k, oh]
                        gxrow = out[ih]
                        for ow in range(lo, hi):
                            gxrow[ow * sw + off] += wv * gyrow[ow]


@twin(fastmath={"contract"})
def _backward_weight(x, gy, sh, sw, ph, pw, dil_h, dil_w, G, zero, gw):
    """One task per (k, c): each tap keeps a row of OW partial sums, and every gy row is met
    once, with all KH*KW taps (element-wise multiply-adds that vectorise; the rows are summed
    at the end, in a fixed order). Stride-1 taps are contiguous slices."""
    N, C, H, W = x.shape
    K, Cg, KH, KW = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Kg = K // G
    los = np.empty(KW, np.int64)
    his = np.empty(KW, np.int64)
    offs = np.empty(KW, np.int64)
    for s in range(KW):
        los[s], his[s], offs[s] = _col_range(s, W, OW, sw, pw, dil_w)
    for kc in prange(K * Cg):
        k, c = kc // Cg, kc % Cg
        ci = (k // Kg) * Cg + c
        acc = np.zeros((KH * KW, OW), dtype=gw.dtype)
        for n in range(N):
            for oh in range(OH):
                gyrow = gy[n, k, oh]
                for r in range(KH):
                    ih = oh * sh - ph + r * dil_h
                    if ih < 0 or ih >= H:
                        continue
                    xrow = x[n, ci, ih]
                    for s in range(KW):
                        lo, hi, off = los[s], his[s], offs[s]
                        if hi <= lo:
                            continue
                        a = acc[r * KW + s, lo:hi]
                        g = gyrow[lo:hi]
                        if sw == 1:
                            xs = xrow[lo + off:hi + off]
                            for i in range(hi - lo):
                                a[i] += g[i] * xs[i]
                        else:
                            for i in range(hi - lo):
                                a[i] += g[i] * xrow[(lo + i) * sw + off]
        for t in range(KH * KW):
            total = zero
            for ow in range(OW):
                total += acc[t, ow]
            gw[k, c, t // KW, t % KW] = total


@twin(fastmath={"reassoc"})
def _backward_bias(gy, gb):
    """gb[k] = sum of gy[:, k], accumulated in float64 (reassociation lets the sum vectorise)."""
    N, K = gy.shape[0], gy.shape[1]
    P = gy.shape[2] * gy.shape[3]
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            plane = gy[n, k].reshape(P)
            for i in range(P):
                acc += np.float64(plane[i])
        gb[k] = acc


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow]."""
    gb = empty(grad_output.shape[1:2], grad_output.dtype)
    _backward_bias(grad_output.size, grad_output, gb)
    return gb


def _kinner_filter(w, groups):
    """w: (K, Cg, KH, KW) -> (G, Cg, KH, KW, Kg), contiguous."""
    K, Cg, KH, KW = w.shape
    return np.ascontiguousarray(w.reshape(groups, K // groups, Cg, KH, KW).transpose(0, 2, 3, 4, 1))


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    N, K = x.shape[0], w.shape[0]
    y = empty((N, K) + tuple(out_hw), x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    work = y.size * w[0].size
    if stride == (1, 1) and w.shape[1] <= SHIFTED_MAX_CHANNELS:
        _forward_shifted(work, x, w, bias, b is not None, relu, *padding, *dilation, groups, y)
    elif K // groups >= KINNER_MIN_CHANNELS:
        _forward_kinner(work, x, _kinner_filter(w, groups), bias, b is not None, relu, *stride,
                        *padding, *dilation, y)
    else:
        _forward(work, x, w, bias, b is not None, relu, *stride, *padding, *dilation, groups,
                 y)
    return y


def transposed_filter(w, groups):
    """The filter of the transposed convolution: a stride-1 backward-input is a forward conv of
    gy, padded by dilation*(KH-1) - padding, with the filter flipped in space and its in/out
    channels swapped within each group: (K, Cg, KH, KW) -> (C, Kg, KH, KW) (a strided view)."""
    K, Cg, KH, KW = w.shape
    wf = w[:, :, ::-1, ::-1].reshape(groups, K // groups, Cg, KH, KW).transpose(0, 2, 1, 3, 4)
    return wf.reshape(groups * Cg, K // groups, KH, KW)


def transposed_padding(weight_shape, padding, dilation):
    """The padding of that forward conv: dilation*(K-1) - padding per axis (negative where the
    original padding reaches past the dilated kernel; no forward conv then)."""
    KH, KW = weight_shape[2], weight_shape[3]
    return dilation[0] * (KH - 1) - padding[0], dilation[1] * (KW - 1) - padding[1]


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    K, Cg, KH, KW = w.shape
    pads = transposed_padding(w.shape, padding, dilation)
    if stride == (1, 1) and min(pads) >= 0 and (Cg >= KINNER_MIN_CHANNELS
                                                or K // groups <= SHIFTED_MAX_CHANNELS):
        wf = transposed_filter(w, groups)
        gx = empty(tuple(input_shape), gy.dtype)
        zero = np.zeros(1, dtype=gy.dtype)
        work = gx.size * wf[0].size
        if Cg >= KINNER_MIN_CHANNELS:
            _forward_kinner(work, gy, _kinner_filter(wf, groups), zero, False, False, 1, 1, *pads,
                            *dilation, gx)
        else:  # few channels per group (depthwise): the shifted-plane forward
            _forward_shifted(work, gy, np.ascontiguousarray(wf), zero, False, False, *pads,
                             *dilation, groups, gx)
        return gx
    gx = empty(tuple(input_shape), gy.dtype)
    N, _, OH, OW = gy.shape
    Kg = K // groups
    if max(Cg, Kg) >= KINNER_MIN_CHANNELS:
        # channel-last grad_output; the innermost loop runs over the wider channel side
        gyt = np.ascontiguousarray(gy.reshape(N, groups, Kg, OH, OW).transpose(0, 1, 3, 4, 2))
        wg = w.reshape(groups, Kg, Cg, KH, KW)
        work = gy.size * w[0].size
        if Cg >= KINNER_MIN_CHANNELS:
            wt = np.ascontiguousarray(wg.transpose(0, 3, 4, 1, 2))
            _backward_input_cinner(work, gyt, wt, *stride, *padding, *dilation, gx)
        else:
            wt = np.ascontiguousarray(wg.transpose(0, 3, 4, 2, 1))
            _backward_input_kdot(work, gyt, wt, *stride, *padding, *dilation, gx)
        return gx
    _backward_input(gy.size * w[0].size, gy, w, *stride, *padding, *dilation, groups, gx)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    K, Cg, KH, KW = weight_shape
    work = gy.size * Cg * KH * KW
    if K // groups >= KINNER_MIN_CHANNELS:
        N, _, OH, OW = gy.shape
        gyt = np.ascontiguousarray(
            gy.reshape(N, groups, K // groups, OH, OW).transpose(0, 1, 3, 4, 2))
        gwt = np.empty((groups, Cg, KH, KW, K // groups), dtype=x.dtype)
        _backward_weight_kinner(work, x, gyt, *stride, *padding, *dilation, gwt)
        return np.ascontiguousarray(gwt.transpose(0, 4, 1, 2, 3).reshape(weight_shape))
    gw = empty(tuple(weight_shape), x.dtype)
    _backward_weight(work, x, gy, *stride, *padding, *dilation, groups, x.dtype.type(0), gw)
    return gw
