"""Direct 2-D convolution (cross-correlation, as torch) with no unfolded buffer.

x: (N, C, H, W), w: (K, C/G, KH, KW), y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg, r<KH, s<KW} w[k, c, r, s]
                             * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

with g = k // Kg and taps outside the input read as zero. Every kernel walks the same
(c, r, s, oh, ow) nest; the output-column range whose taps land inside the input is computed once
per (s) so the innermost loop has no bounds test and vectorises when sw == 1. Each parallel task
owns whole output planes (forward: y[n, k]; backward-input: gx[n, c]; backward-weight:
gw[k, c]), so no two threads write the same element and the results are deterministic.
"""
import numpy as np
from numba import njit, prange

from convkit.kernels.cpu._jit import twin


@njit(inline="always")
def _col_range(s, W, OW, sw, pw, dil_w):
    """Output columns ow whose tap iw = ow*sw - pw + s*dil_w lies in [0, W)."""
    off = s * dil_w - pw
    lo = max(0, -((off) // sw)) if off < 0 else 0
    hi = min(OW, (W - 1 - off) // sw + 1)
    return lo, hi, off


@twin
def _forward(x, w, b, has_bias, sh, sw, ph, pw, dil_h, dil_w, G, y):
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


# reassoc lets the dot-product reduction vectorise; NaN/inf semantics are kept (no nnan/ninf).
@twin(fastmath={"reassoc", "contract"})
def _backward_weight(x, gy, sh, sw, ph, pw, dil_h, dil_w, G, zero, gw):
    N, C, H, W = x.shape
    K, Cg, KH, KW = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Kg = K // G
    for kc in prange(K * Cg):
        k, c = kc // Cg, kc % Cg
        ci = (k // Kg) * Cg + c
        for r in range(KH):
            for s in range(KW):
                lo, hi, off = _col_range(s, W, OW, sw, pw, dil_w)
                acc = zero
                for n in range(N):
                    for oh in range(OH):
                        ih = oh * sh - ph + r * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        xrow = x[n, ci, ih]
                        gyrow = gy[n, k, oh]
                        for ow in range(lo, hi):
                            acc += gyrow[ow] * xrow[ow * sw + off]
                gw[k, c, r, s] = acc


@twin
def _backward_bias(gy, gb):
    N, K, OH, OW = gy.shape
    for k in prange(K):
        acc = 0.0  # float64 partial sums: a bias gradient sums N*OH*OW terms
        for n in range(N):
            acc += gy[n, k].sum()
        gb[k] = acc


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow]."""
    gb = np.empty(grad_output.shape[1], dtype=grad_output.dtype)
    _backward_bias(grad_output.size, grad_output, gb)
    return gb


def forward(x, w, b, stride, padding, dilation, groups, out_hw):
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K) + tuple(out_hw), dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    _forward(y.size * w[0].size, x, w, bias, b is not None, *stride, *padding, *dilation, groups,
             y)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    gx = np.empty(tuple(input_shape), dtype=gy.dtype)
    _backward_input(gy.size * w[0].size, gy, w, *stride, *padding, *dilation, groups, gx)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    gw = np.empty(tuple(weight_shape), dtype=x.dtype)
    _backward_weight(gy.size * gw[0].size, x, gy, *stride, *padding, *dilation, groups,
                     x.dtype.type(0), gw)
    return gw
