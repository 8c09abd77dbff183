"""The 2-D Winograd transforms, one row of tiles (or one filter) at a time.

Tiles: output tile (th, tw) of image n covers output pixels [th*m, th*m + m) x [tw*m, tw*m + m)
and reads the alpha x alpha input patch starting at (th*m - ph, tw*m - pw), alpha = m + 2 (0
outside the input). A row of tiles is the TW = ceil(OW/m) tiles of one th. Transform point
t = a*alpha + b indexes the vertical (a) and horizontal (b) transform axis. The transformed
arrays the GEMMs read and write:

    V   (alpha^2, C, ntmax)   V[t, c, j]  = (B^T d_j B)[a, b]          input tile j, channel c
    M   (alpha^2, K, ntmax)   M[t, k, j]  = sum_c U[t, k, c] V[t, c, j] (per group)
    U   (alpha^2, K, Cg)      U[t, k, c]  = (G w[k, c] G^T)[a, b]
    Yh  (alpha^2, K, ntmax)   Yh[t, k, j] = (A gy_j A^T)[a, b]          grad_output tile j

where j runs over the tiles of a chunk (whole tile rows, see ``pipeline``). Each 2-D transform
is the 1-D one of ``transforms`` applied down a whole row of pixels at once (a loop over
contiguous columns, which vectorizes), then along each tile. The two tile sizes have their own
loop nests (chosen once per row, outside the loops) so every loop body is straight-line code.
All helpers are serial: the pipeline runs many at once.
"""
from numba import njit

from convkit.kernels.cpu.conv_winograd.transforms import (
    filter_2,
    filter_4,
    grad_filter_2,
    grad_filter_4,
    grad_out_2,
    grad_out_4,
    input_2,
    input_4,
    output_2,
    output_4,
)
from convkit.kernels.cpu.relu import relu_value


@njit(inline="always")
def _row(plane, i, zeros):
    """Row i of a 2-D plane, or the row of zeros where i is outside it."""
    return plane[i] if 0 <= i < plane.shape[0] else zeros


@njit(inline="always")
def input_row(x, n, c, ih0, pw, m, TW, V, j0, zeros, tmp):
    """V[:, c, j0 : j0 + TW] for the tile row whose patches start at input row ih0: B^T down
    the alpha input rows into tmp (alpha, TW*m + 2; columns outside the input are 0), then B
    along each tile's alpha columns. ``zeros``: a row of W zeros."""
    W = x.shape[3]
    Wp = TW * m + 2
    lo = min(pw, Wp)
    hi = max(lo, min(Wp, pw + W))
    for a in range(m + 2):
        for i in range(lo):
            tmp[a, i] = 0
        for i in range(hi, Wp):
            tmp[a, i] = 0
    plane = x[n, c]
    if m == 2:
        r0, r1 = _row(plane, ih0, zeros), _row(plane, ih0 + 1, zeros)
        r2, r3 = _row(plane, ih0 + 2, zeros), _row(plane, ih0 + 3, zeros)
        t0, t1, t2, t3 = tmp[0, lo:hi], tmp[1, lo:hi], tmp[2, lo:hi], tmp[3, lo:hi]
        for i in range(hi - lo):
            t0[i], t1[i], t2[i], t3[i] = input_2(r0[i], r1[i], r2[i], r3[i])
        for a in range(4):
            t = tmp[a]
            for tw in range(TW):
                w0, j = 2 * tw, j0 + tw
                V[4 * a, c, j], V[4 * a + 1, c, j], V[4 * a + 2, c, j], V[4 * a + 3, c, j] = \
                    input_2(t[w0], t[w0 + 1], t[w0 + 2], t[w0 + 3])
    else:
        r0, r1 = _row(plane, ih0, zeros), _row(plane, ih0 + 1, zeros)
        r2, r3 = _row(plane, ih0 + 2, zeros), _row(plane, ih0 + 3, zeros)
        r4, r5 = _row(plane, ih0 + 4, zeros), _row(plane, ih0 + 5, zeros)
        t0, t1, t2 = tmp[0, lo:hi], tmp[1, lo:hi], tmp[2, lo:hi]
        t3, t4, t5 = tmp[3, lo:hi], tmp[4, lo:hi], tmp[5, lo:hi]
        for i in range(hi - lo):
            t0[i], t1[i], t2[i], t3[i], t4[i], t5[i] = input_4(r0[i], r1[i], r2[i], r3[i],
                                                               r4[i], r5[i])
        for a in range(6):
            t = tmp[a]
            for tw in range(TW):
                w0, j = 4 * tw, j0 + tw
                (V[6 * a, c, j], V[6 * a + 1, c, j], V[6 * a + 2, c, j], V[6 * a + 3, c, j],
                 V[6 * a + 4, c, j], V[6 * a + 5, c, j]) = input_4(
                    t[w0], t[w0 + 1], t[w0 + 2], t[w0 + 3], t[w0 + 4], t[w0 + 5])


@njit(inline="always")
def output_row(M, k, j0, m, TW, y, n, oh0, bk, relu, tmp, out):
    """y[n, k, oh0 : oh0 + m, :] from M[:, k, j0 : j0 + TW]: A^T along each tile's row into tmp
    (alpha, TW*m), A^T down tmp's columns into out (m, TW*m), then + bk and ReLU (as asked) as
    the rows inside the output are stored."""
    OH, OW = y.shape[2], y.shape[3]
    Wo = TW * m
    if m == 2:
        for a in range(4):
            t = tmp[a]
            for tw in range(TW):
                j = j0 + tw
                t[2 * tw], t[2 * tw + 1] = output_2(M[4 * a, k, j], M[4 * a + 1, k, j],
                                                    M[4 * a + 2, k, j], M[4 * a + 3, k, j])
        t0, t1, t2, t3 = tmp[0], tmp[1], tmp[2], tmp[3]
        o0, o1 = out[0], out[1]
        for i in range(Wo):
            o0[i], o1[i] = output_2(t0[i], t1[i], t2[i], t3[i])
    else:
        for a in range(6):
            t = tmp[a]
            for tw in range(TW):
                j = j0 + tw
                t[4 * tw], t[4 * tw + 1], t[4 * tw + 2], t[4 * tw + 3] = output_4(
                    M[6 * a, k, j], M[6 * a + 1, k, j], M[6 * a + 2, k, j], M[6 * a + 3, k, j],
                    M[6 * a + 4, k, j], M[6 * a + 5, k, j])
        t0, t1, t2, t3, t4, t5 = tmp[0], tmp[1], tmp[2], tmp[3], tmp[4], tmp[5]
        o0, o1, o2, o3 = out[0], out[1], out[2], out[3]
        for i in range(Wo):
            o0[i], o1[i], o2[i], o3[i] = output_4(t0[i], t1[i], t2[i], t3[i], t4[i], t5[i])
    for p in range(min(m, OH - oh0)):
        row, src = y[n, k, oh0 + p], out[p]
        if relu:
            for ow in range(OW):
                row[ow] = relu_value(src[ow] + bk)
        else:
            for ow in range(OW):
                row[ow] = src[ow] + bk


@njit(inline="always")
def grad_output_row(gy, n, k, oh0, m, TW, Yh, j0, zeros, tmp):
    """Yh[:, k, j0 : j0 + TW] for the grad_output tiles of rows oh0 .. oh0 + m - 1: A down those
    rows into tmp (alpha, TW*m; rows and columns outside grad_output are 0), then A^T along
    each tile's m columns. ``zeros``: a row of OW zeros."""
    OW = gy.shape[3]
    Wo = TW * m
    for a in range(m + 2):
        for i in range(OW, Wo):
            tmp[a, i] = 0
    plane = gy[n, k]
    if m == 2:
        g0, g1 = _row(plane, oh0, zeros), _row(plane, oh0 + 1, zeros)
        t0, t1, t2, t3 = tmp[0], tmp[1], tmp[2], tmp[3]
        for i in range(OW):
            t0[i], t1[i], t2[i], t3[i] = grad_out_2(g0[i], g1[i])
        for a in range(4):
            t = tmp[a]
            for tw in range(TW):
                j = j0 + tw
                Yh[4 * a, k, j], Yh[4 * a + 1, k, j], Yh[4 * a + 2, k, j], Yh[4 * a + 3, k, j] = \
                    grad_out_2(t[2 * tw], t[2 * tw + 1])
    else:
        g0, g1 = _row(plane, oh0, zeros), _row(plane, oh0 + 1, zeros)
        g2, g3 = _row(plane, oh0 + 2, zeros), _row(plane, oh0 + 3, zeros)
        t0, t1, t2, t3, t4, t5 = tmp[0], tmp[1], tmp[2], tmp[3], tmp[4], tmp[5]
        for i in range(OW):
            t0[i], t1[i], t2[i], t3[i], t4[i], t5[i] = grad_out_4(g0[i], g1[i], g2[i], g3[i])
        for a in range(6):
            t = tmp[a]
            for tw in range(TW):
                w0, j = 4 * tw, j0 + tw
                (Yh[6 * a, k, j], Yh[6 * a + 1, k, j], Yh[6 * a + 2, k, j], Yh[6 * a + 3, k, j],
                 Yh[6 * a + 4, k, j], Yh[6 * a + 5, k, j]) = grad_out_4(
                    t[w0], t[w0 + 1], t[w0 + 2], t[w0 + 3])


@njit(inline="always")
def filter_tiles(w, k, m, cs, U, wt, tmp):
    """U[:, k, c] = G w[k, c] G^T for every c: filter k's taps gathered to wt (9, Cg), G down the
    3 tap columns into tmp (alpha, 3, Cg), then G along tmp's rows, each 1-D transform running
    over c (contiguous, so it vectorizes)."""
    Cg = w.shape[1]
    for c in range(Cg):
        for r in range(3):
            for s in range(3):
                wt[r * 3 + s, c] = w[k, c, r, s]
    if m == 2:
        for s in range(3):
            for c in range(Cg):
                tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c] = filter_2(
                    cs, wt[s, c], wt[3 + s, c], wt[6 + s, c])
        for a in range(4):
            for c in range(Cg):
                U[4 * a, k, c], U[4 * a + 1, k, c], U[4 * a + 2, k, c], U[4 * a + 3, k, c] = \
                    filter_2(cs, tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c])
    else:
        for s in range(3):
            for c in range(Cg):
                (tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c], tmp[4, s, c],
                 tmp[5, s, c]) = filter_4(cs, wt[s, c], wt[3 + s, c], wt[6 + s, c])
        for a in range(6):
            for c in range(Cg):
                (U[6 * a, k, c], U[6 * a + 1, k, c], U[6 * a + 2, k, c], U[6 * a + 3, k, c],
                 U[6 * a + 4, k, c], U[6 * a + 5, k, c]) = filter_4(
                    cs, tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c])


@njit(inline="always")
def grad_filter_tiles(dU, k, m, cs, dw, tmp, wt):
    """dw[k, c] = G^T dU[:, k, c] G for every c (the adjoint of ``filter_tiles``): G^T down each
    of the alpha columns b into tmp (3, alpha, Cg), then along tmp's rows into wt (9, Cg),
    scattered to dw[k]."""
    Cg = dw.shape[1]
    if m == 2:
        for b in range(4):
            for c in range(Cg):
                tmp[0, b, c], tmp[1, b, c], tmp[2, b, c] = grad_filter_2(
                    cs, dU[b, k, c], dU[4 + b, k, c], dU[8 + b, k, c], dU[12 + b, k, c])
        for r in range(3):
            for c in range(Cg):
                wt[3 * r, c], wt[3 * r + 1, c], wt[3 * r + 2, c] = grad_filter_2(
                    cs, tmp[r, 0, c], tmp[r, 1, c], tmp[r, 2, c], tmp[r, 3, c])
    else:
        for b in range(6):
            for c in range(Cg):
                tmp[0, b, c], tmp[1, b, c], tmp[2, b, c] = grad_filter_4(
                    cs, dU[b, k, c], dU[6 + b, k, c], dU[12 + b, k, c], dU[18 + b, k, c],
                    dU[24 + b, k, c], dU[30 + b, k, c])
        for r in range(3):
            for c in range(Cg):
                wt[3 * r, c], wt[3 * r + 1, c], wt[3 * r + 2, c] = grad_filter_4(
                    cs, tmp[r, 0, c], tmp[r, 1, c], tmp[r, 2, c], tmp[r, 3, c], tmp[r, 4, c],
                    tmp[r, 5, c])
    for c in range(Cg):
        for r in range(3):
            for s in range(3):
                dw[k, c, r, s] = wt[r * 3 + s, c]
