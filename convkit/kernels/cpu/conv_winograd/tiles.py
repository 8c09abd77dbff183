"""The 2-D Winograd transforms, one row of tiles (or one filter) at a time.

Tiles: output tile (th, tw) of image n covers output pixels [th*m, th*m + m) x [tw*m, tw*m + m)
and reads the alpha x alpha input patch starting at (th*m - ph, tw*m - pw), alpha = m + 2 (0
outside the input). A row of tiles is the TW = ceil(OW/m) tiles of one th. Transform point
t = a*alpha + b indexes the vertical (a) and horizontal (b) transform axis. The transformed
arrays the GEMMs read and write are flat views of

    V   (alpha^2, C, ntmax)   V[t, c, j]  = (B^T d_j B)[a, b]          input tile j, channel c
    M   (alpha^2, K, ntmax)   M[t, k, j]  = sum_c U[t, k, c] V[t, c, j] (per group)
    U   (alpha^2, K, Cg)      U[t, k, c]  = (G w[k, c] G^T)[a, b]
    Yh  (alpha^2, K, ntmax)   Yh[t, k, j] = (A gy_j A^T)[a, b]          grad_output tile j

where j runs over the tiles of a chunk (whole tile rows, see ``pipeline``). Each 2-D transform
is the 1-D one of ``transforms`` down the columns of a row buffer (contiguous, so it
vectorizes), then along each tile's row. All helpers are serial: the pipeline runs many at once.
"""
from numba import njit

from convkit.kernels.cpu.conv_winograd.transforms import (
    filter_1d,
    grad_filter_1d,
    grad_out_1d,
    input_1d,
    output_1d,
)
from convkit.kernels.cpu.relu import relu_value


@njit(inline="always")
def input_row(x, n, c, ih0, pw, m, TW, V, C, ntmax, j0, pad, tmp):
    """V[t, c, j0 + tw] for the TW tiles of the tile row whose patches start at input row ih0:
    the alpha input rows copied zero-padded to pad (alpha, Wp), B^T down pad's columns into tmp,
    then B along each tile's alpha columns. Wp = TW*m + 2."""
    H, W = x.shape[2], x.shape[3]
    alpha = m + 2
    Wp = TW * m + 2
    lo = min(pw, Wp)
    hi = min(Wp, pw + W)
    for a in range(alpha):
        ih = ih0 + a
        row = pad[a * Wp:(a + 1) * Wp]
        if 0 <= ih < H:
            src = x[n, c, ih]
            for iw in range(lo):
                row[iw] = 0
            for iw in range(lo, hi):
                row[iw] = src[iw - pw]
            for iw in range(max(lo, hi), Wp):
                row[iw] = 0
        else:
            for iw in range(Wp):
                row[iw] = 0
    for col in range(Wp):
        input_1d(m, pad, col, Wp, tmp, col, Wp)
    step = C * ntmax
    for a in range(alpha):
        for tw in range(TW):
            input_1d(m, tmp, a * Wp + tw * m, 1, V, (a * alpha * C + c) * ntmax + j0 + tw, step)


@njit(inline="always")
def output_row(M, K, ntmax, k, j0, m, TW, y, n, oh0, bk, relu, tmp, out):
    """y[n, k, oh0 : oh0 + m, :] from M[:, k, j0 : j0 + TW]: A^T along each tile's row into tmp
    (alpha, TW*m), A^T down tmp's columns into out (m, TW*m), then + bk and ReLU (as asked) as
    the rows inside the output are stored."""
    OH, OW = y.shape[2], y.shape[3]
    alpha = m + 2
    Wo = TW * m
    step = K * ntmax
    for a in range(alpha):
        for tw in range(TW):
            output_1d(m, M, (a * alpha * K + k) * ntmax + j0 + tw, step, tmp, a * Wo + tw * m, 1)
    for col in range(Wo):
        output_1d(m, tmp, col, Wo, out, col, Wo)
    for p in range(min(m, OH - oh0)):
        row = y[n, k, oh0 + p]
        if relu:
            for ow in range(OW):
                row[ow] = relu_value(out[p * Wo + ow] + bk)
        else:
            for ow in range(OW):
                row[ow] = out[p * Wo + ow] + bk


@njit(inline="always")
def grad_output_row(gy, n, k, oh0, m, TW, Yh, K, ntmax, j0, pad, tmp):
    """Yh[t, k, j0 + tw] for the TW grad_output tiles of rows oh0 .. oh0 + m - 1: those rows
    copied zero-padded to pad (m, TW*m), A down pad's columns into tmp (alpha, TW*m), then A^T
    along each tile's m columns."""
    OH, OW = gy.shape[2], gy.shape[3]
    alpha = m + 2
    Wo = TW * m
    for p in range(m):
        row = pad[p * Wo:(p + 1) * Wo]
        if oh0 + p < OH:
            src = gy[n, k, oh0 + p]
            for ow in range(OW):
                row[ow] = src[ow]
            for ow in range(OW, Wo):
                row[ow] = 0
        else:
            for ow in range(Wo):
                row[ow] = 0
    for col in range(Wo):
        grad_out_1d(m, pad, col, Wo, tmp, col, Wo)
    step = K * ntmax
    for a in range(alpha):
        for tw in range(TW):
            grad_out_1d(m, tmp, a * Wo + tw * m, 1, Yh, (a * alpha * K + k) * ntmax + j0 + tw,
                        step)


@njit(inline="always")
def filter_tiles(w, k, m, cs, U, K, wt, tmp):
    """U[:, k, :] = G w[k, c] G^T for every c: filter k's taps gathered to wt (9, Cg), G down
    the 3 tap columns into tmp (alpha, 3, Cg), then G along tmp's rows into U, every 1-D
    transform running over c (contiguous, so it vectorizes). w and U flat."""
    Cg = wt.size // 9
    alpha = m + 2
    for c in range(Cg):
        for rs in range(9):
            wt[rs * Cg + c] = w[(k * Cg + c) * 9 + rs]
    for s in range(3):
        for c in range(Cg):
            filter_1d(m, cs, wt, s * Cg + c, 3 * Cg, tmp, s * Cg + c, 3 * Cg)
    for a in range(alpha):
        for c in range(Cg):
            filter_1d(m, cs, tmp, a * 3 * Cg + c, Cg, U, (a * alpha * K + k) * Cg + c, K * Cg)


@njit(inline="always")
def grad_filter_tiles(dU, k, m, cs, dw, K, tmp, wt):
    """dw[k, c] = G^T dU[:, k, c] G for every c (the adjoint of ``filter_tiles``): G^T down
    each of the alpha columns b into tmp (3, alpha, Cg), then along tmp's rows into wt (9, Cg),
    scattered to dw[k]. dU and dw flat."""
    Cg = wt.size // 9
    alpha = m + 2
    for b in range(alpha):
        for c in range(Cg):
            grad_filter_1d(m, cs, dU, (b * K + k) * Cg + c, alpha * K * Cg, tmp, b * Cg + c,
                           alpha * Cg)
    for r in range(3):
        for c in range(Cg):
            grad_filter_1d(m, cs, tmp, r * alpha * Cg + c, Cg, wt, r * 3 * Cg + c, Cg)
    for c in range(Cg):
        for rs in range(9):
            dw[(k * Cg + c) * 9 + rs] = wt[rs * Cg + c]
