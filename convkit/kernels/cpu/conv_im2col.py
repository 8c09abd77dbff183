"""im2col / col2im 2-D convolution: unfold the input, then one GEMM per group per batch chunk.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); G groups, Cg = C/G, Kg = K/G.
The unfolded matrix of a chunk of images n0 <= n < n1 is

    cols[c*KH*KW + r*KW + s, (n - n0)*OH*OW + oh*OW + ow]
        = x[n, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]    (0 outside the input)

so group g's rows are one contiguous block and, with Wg = w[g*Kg:(g+1)*Kg].reshape(Kg, -1):

    forward          Y_g  = Wg   @ cols_g            (Kg, nb*OH*OW)  -> y (NCHW) + bias
    backward-input   dcol_g = Wg^T @ dY_g             then col2im (adds overlapping taps)
    backward-weight  dWg += dY_g @ cols_g^T

The GEMMs are BLAS calls through numpy's matmul; unfolding, folding and the layout changes are
the Numba kernels below. col2im runs one task per (n, c) input plane, gathering all taps that
land in it, so it needs no atomics and is deterministic.
"""
import numpy as np
from numba import prange

from convkit.kernels.cpu._jit import twin

# Upper bound on the unfolded buffer: batch chunks are sized to fit it (at least one image),
# so N64 C64 224^2 never materialises the whole unfolded matrix.
IM2COL_CHUNK_BYTES = 64 * 1024 * 1024


@twin
def _im2col(x, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, cols):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = OH * OW
    for row in prange(C * KH * KW):
        c, rs = row // (KH * KW), row % (KH * KW)
        r, s = rs // KW, rs % KW
        off = s * dil_w - pw
        lo = max(0, -(off // sw)) if off < 0 else 0
        hi = max(lo, min(OW, (W - 1 - off) // sw + 1))
        for i in range(nb):
            plane = x[n0 + i, c]
            for oh in range(OH):
                dst = cols[row, i * P + oh * OW:i * P + (oh + 1) * OW]
                ih = oh * sh - ph + r * dil_h
                if ih < 0 or ih >= H:
                    dst[:] = 0
                    continue
                src = plane[ih]
                dst[:lo] = 0
                for ow in range(lo, hi):
                    dst[ow] = src[ow * sw + off]
                dst[hi:] = 0


@twin
def _col2im(cols, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, gx):
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    P = OH * OW
    for ic in prange(nb * C):
        i, c = ic // C, ic % C
        plane = gx[n0 + i, c]
        plane[:, :] = 0
        for r in range(KH):
            for s in range(KW):
                row = (c * KH + r) * KW + s
                off = s * dil_w - pw
                lo = max(0, -(off // sw)) if off < 0 else 0
                hi = min(OW, (W - 1 - off) // sw + 1)
                for oh in range(OH):
                    ih = oh * sh - ph + r * dil_h
                    if ih < 0 or ih >= H:
                        continue
                    src = cols[row, i * P + oh * OW:i * P + (oh + 1) * OW]
                    dst = plane[ih]
                    for ow in range(lo, hi):
                        dst[ow * sw + off] += src[ow]


@twin
def _nchw_to_kp(a, n0, nb, out):
    """out[k, i*P + p] = a[n0 + i, k, p] for a: (N, K, P)."""
    K, P = a.shape[1], a.shape[2]
    for k in prange(K):
        for i in range(nb):
            out[k, i * P:(i + 1) * P] = a[n0 + i, k]


@twin
def _kp_to_nchw(m, b, has_bias, n0, nb, out):
    """out[n0 + i, k, p] = m[k, i*P + p] (+ b[k]) for out: (N, K, P)."""
    K, P = out.shape[1], out.shape[2]
    for ik in prange(nb * K):
        i, k = ik // K, ik % K
        bias = b[k] if has_bias else 0
        out[n0 + i, k] = m[k, i * P:(i + 1) * P] + bias


def _chunk(N, rows, P, itemsize):
    """Images per chunk so that a (rows, nb*P) buffer stays under IM2COL_CHUNK_BYTES."""
    return max(1, min(N, IM2COL_CHUNK_BYTES // max(1, rows * P * itemsize)))


def forward(x, w, b, stride, padding, dilation, groups, out_hw):
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    OH, OW = out_hw
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    y = np.empty((N, K, P), dtype=x.dtype)
    wmat = w.reshape(K, R)
    nb_max = _chunk(N, C * KH * KW, P, x.itemsize)
    cols = np.empty((C * KH * KW, nb_max * P), dtype=x.dtype)
    ymat = np.empty((K, nb_max * P), dtype=x.dtype)
    bias = b if b is not None else np.zeros(0, dtype=x.dtype)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_, y_ = cols[:, :nb * P], ymat[:, :nb * P]
        _im2col(c_.size, x, n0, nb, KH, KW, *stride, *padding, *dilation, OH, OW, c_)
        for g in range(G):
            np.matmul(wmat[g * Kg:(g + 1) * Kg], c_[g * R:(g + 1) * R], out=y_[g * Kg:(g + 1) * Kg])
        _kp_to_nchw(y_.size, y_, bias, b is not None, n0, nb, y)
    return y.reshape(N, K, OH, OW)


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gx = np.empty(tuple(input_shape), dtype=gy.dtype)
    wmat = w.reshape(K, R)
    gy3 = gy.reshape(N, K, P)
    nb_max = _chunk(N, C * KH * KW, P, gy.itemsize)
    dcols = np.empty((C * KH * KW, nb_max * P), dtype=gy.dtype)
    gymat = np.empty((K, nb_max * P), dtype=gy.dtype)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        d_, g_ = dcols[:, :nb * P], gymat[:, :nb * P]
        _nchw_to_kp(g_.size, gy3, n0, nb, g_)
        for g in range(G):
            np.matmul(wmat[g * Kg:(g + 1) * Kg].T, g_[g * Kg:(g + 1) * Kg],
                      out=d_[g * R:(g + 1) * R])
        _col2im(d_.size, d_, n0, nb, KH, KW, *stride, *padding, *dilation, OH, OW, gx)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gw = np.zeros((K, R), dtype=x.dtype)
    gy3 = gy.reshape(N, K, P)
    nb_max = _chunk(N, C * KH * KW, P, x.itemsize)
    cols = np.empty((C * KH * KW, nb_max * P), dtype=x.dtype)
    gymat = np.empty((K, nb_max * P), dtype=x.dtype)
    part = np.empty((Kg, R), dtype=x.dtype)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_, g_ = cols[:, :nb * P], gymat[:, :nb * P]
        _im2col(c_.size, x, n0, nb, KH, KW, *stride, *padding, *dilation, OH, OW, c_)
        _nchw_to_kp(g_.size, gy3, n0, nb, g_)
        for g in range(G):
            np.matmul(g_[g * Kg:(g + 1) * Kg], c_[g * R:(g + 1) * R].T, out=part)
            gw[g * Kg:(g + 1) * Kg] += part
    return gw.reshape(K, Cg, KH, KW)
