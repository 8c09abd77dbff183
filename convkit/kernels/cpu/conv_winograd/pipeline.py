"""The Winograd passes, one chunk of tile rows at a time: transforms, GEMMs, inverse transform.

x: (N, C, H, W), y and gy: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G, alpha = m + 2,
TH = ceil(OH/m), TW = ceil(OW/m); tile row u = n*TH + th (arrays as in ``tiles``). A chunk is
``rows`` consecutive tile rows, nt = rows*TW tiles: its transforms (V, M or Yh: alpha^2 x
channels x ntmax) are a worker's whole workspace, bounded by ``chunk_rows`` whatever N is:

    forward          V = input tiles
                     M[t, g] = U[t, g] @ V[t, g]            (alpha^2 * G GEMMs: Kg x nt x Cg)
                     y = output tiles of M, + bias, ReLU
    backward_weight  V = input tiles, Yh = grad_output tiles
                     dU[t, g] += Yh[t, g] @ V[t, g]^T       (alpha^2 * G GEMMs: Kg x Cg x nt)

``forward_chunks`` hands out (chunk, output-channel slice) items and ``weight_workers`` partial
sums of dU, each run whole by one worker (no barrier between phases); ``weight_chunks`` (one
chunk, or partials too large) runs each phase as a parallel loop. Items and partials depend on
the shape only and every GEMM is single-threaded, so each element is summed in one fixed order:
the same bits for any thread count. The GEMMs are numpy's OpenBLAS ``cblas_?gemm`` called by
address (as in ``conv_im2col``), from the parallel loop.
"""
import numpy as np
from numba import njit, prange

from convkit.kernels.cpu._native import cblas_gemm, fetch_add
from convkit.kernels.cpu.conv_winograd.tiles import (
    filter_tiles,
    grad_filter_tiles,
    grad_output_row,
    input_row,
    output_row,
)
from convkit.runtime.jit import twin

_NO_TRANS, _TRANS = 111, 112  # CblasNoTrans, CblasTrans


@twin
def filter_transform(w, m, cs, U):
    """U: (alpha^2, K, Cg) = G w[k, c] G^T for every filter (w: (K, Cg, 3, 3))."""
    K, Cg = w.shape[0], w.shape[1]
    for k in prange(K):
        wt = np.empty((9, Cg), w.dtype)
        tmp = np.empty((m + 2, 3, Cg), w.dtype)
        filter_tiles(w, k, m, cs, U, wt, tmp)


@twin
def grad_filter_transform(dU, m, cs, dw):
    """dw: (K, Cg, 3, 3) = G^T dU[:, k, c] G for every filter (dU: (alpha^2, K, Cg))."""
    K, Cg = dw.shape[0], dw.shape[1]
    for k in prange(K):
        tmp = np.empty((3, m + 2, Cg), dw.dtype)
        wt = np.empty((9, Cg), dw.dtype)
        grad_filter_tiles(dU, k, m, cs, dw, tmp, wt)


@njit(inline="always")
def _forward_chunk(x, U, bias, has_bias, relu, y, V, M, m, ph, pw, G, u0, nr, s, S, gemm,
                   dtype):
    """Tile rows u0 .. u0 + nr - 1 of the forward, output channels of slice s of S (within
    each group), on one thread: input transform, GEMMs, output transform."""
    C = x.shape[1]
    K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    alpha = m + 2
    TH, TW = (OH + m - 1) // m, (OW + m - 1) // m
    Cg, Kg, ntmax = C // G, K // G, V.shape[2]
    k0, k1 = s * Kg // S, (s + 1) * Kg // S
    size = V.itemsize
    one, zero = dtype.type(1), dtype.type(0)
    zeros = np.zeros(x.shape[3], x.dtype)
    tmp = np.empty((alpha, TW * m + 2), x.dtype)
    for c in range(C):
        for r in range(nr):
            n, th = (u0 + r) // TH, (u0 + r) % TH
            input_row(x, n, c, th * m - ph, pw, m, TW, V, r * TW, zeros, tmp)
    for t in range(alpha * alpha):
        for g in range(G):
            cblas_gemm(gemm, _NO_TRANS, _NO_TRANS, k1 - k0, nr * TW, Cg, one,
                       U.ctypes.data + (t * K + g * Kg + k0) * Cg * size, Cg,
                       V.ctypes.data + (t * C + g * Cg) * ntmax * size, ntmax, zero,
                       M.ctypes.data + (t * K + g * Kg + k0) * ntmax * size, ntmax)
    out = np.empty((m, TW * m), x.dtype)
    for g in range(G):
        for k in range(g * Kg + k0, g * Kg + k1):
            bk = bias[k] if has_bias else zero
            for r in range(nr):
                n, th = (u0 + r) // TH, (u0 + r) % TH
                output_row(M, k, r * TW, m, TW, y, n, th * m, bk, relu, tmp, out)


@twin
def forward_chunks(x, U, bias, has_bias, relu, y, V, M, m, ph, pw, G, rows, S, gemm, dtype,
                   counters):
    """y = A^T [U * (B^T x B)] A (+ bias, ReLU): the V.shape[0] workers each take the next
    (chunk, output-channel slice) item (counters[0]; S slices per chunk) and run its three
    phases alone, in their own V[slot], M[slot] (counters[1]): no barrier between phases, and
    the chunk stays in one core's cache. A slice transforms its chunk's input itself (S - 1
    extra input transforms per chunk buy items for the workers where chunks are few)."""
    units = x.shape[0] * ((y.shape[2] + m - 1) // m)
    items = (units + rows - 1) // rows * S
    for _ in prange(V.shape[0]):
        slot = fetch_add(counters, 1)
        while True:
            item = fetch_add(counters, 0)
            if item >= items:
                break
            u0 = item // S * rows
            _forward_chunk(x, U, bias, has_bias, relu, y, V[slot], M[slot], m, ph, pw, G, u0,
                           min(rows, units - u0), item % S, S, gemm, dtype)


@twin
def weight_chunks(x, gy, dU, V, Yh, m, ph, pw, G, rows, gemm, dtype):
    """dU: (alpha^2, K, Cg) = sum over tiles of (A gy A^T) * (B^T x B), chunk by chunk."""
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    alpha = m + 2
    TH, TW = (OH + m - 1) // m, (OW + m - 1) // m
    Cg, Kg, units, ntmax = C // G, K // G, N * TH, V.shape[2]
    size = V.itemsize
    one, zero = dtype.type(1), dtype.type(0)
    for u0 in range(0, units, rows):
        nr = min(rows, units - u0)
        nt = nr * TW
        for c in prange(C):
            zeros = np.zeros(x.shape[3], x.dtype)
            tmp = np.empty((alpha, TW * m + 2), x.dtype)
            for r in range(nr):
                n, th = (u0 + r) // TH, (u0 + r) % TH
                input_row(x, n, c, th * m - ph, pw, m, TW, V, r * TW, zeros, tmp)
        for k in prange(K):
            zeros = np.zeros(OW, x.dtype)
            tmp = np.empty((alpha, TW * m), x.dtype)
            for r in range(nr):
                n, th = (u0 + r) // TH, (u0 + r) % TH
                grad_output_row(gy, n, k, th * m, m, TW, Yh, r * TW, zeros, tmp)
        beta = zero if u0 == 0 else one
        for task in prange(alpha * alpha * G):
            t, g = task // G, task % G
            cblas_gemm(gemm, _NO_TRANS, _TRANS, Kg, Cg, nt, one,
                       Yh.ctypes.data + (t * K + g * Kg) * ntmax * size, ntmax,
                       V.ctypes.data + (t * C + g * Cg) * ntmax * size, ntmax, beta,
                       dU.ctypes.data + (t * K + g * Kg) * Cg * size, Cg)


@njit(inline="always")
def _weight_chunk(x, gy, dU, V, Yh, m, ph, pw, G, u0, nr, first, gemm, dtype):
    """Tile rows u0 .. u0 + nr - 1 of ``weight_chunks`` on one thread, added to dU (written
    over where ``first``)."""
    C = x.shape[1]
    K, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    alpha = m + 2
    TH, TW = (OH + m - 1) // m, (OW + m - 1) // m
    Cg, Kg, ntmax = C // G, K // G, V.shape[2]
    size = V.itemsize
    one, zero = dtype.type(1), dtype.type(0)
    tmp = np.empty((alpha, TW * m + 2), x.dtype)
    zeros = np.zeros(max(x.shape[3], OW), x.dtype)
    for c in range(C):
        for r in range(nr):
            n, th = (u0 + r) // TH, (u0 + r) % TH
            input_row(x, n, c, th * m - ph, pw, m, TW, V, r * TW, zeros[:x.shape[3]], tmp)
    for k in range(K):
        for r in range(nr):
            n, th = (u0 + r) // TH, (u0 + r) % TH
            grad_output_row(gy, n, k, th * m, m, TW, Yh, r * TW, zeros[:OW], tmp)
    beta = zero if first else one
    for t in range(alpha * alpha):
        for g in range(G):
            cblas_gemm(gemm, _NO_TRANS, _TRANS, Kg, Cg, nr * TW, one,
                       Yh.ctypes.data + (t * K + g * Kg) * ntmax * size, ntmax,
                       V.ctypes.data + (t * C + g * Cg) * ntmax * size, ntmax, beta,
                       dU.ctypes.data + (t * K + g * Kg) * Cg * size, Cg)


@twin
def weight_workers(x, gy, dU, V, Yh, m, ph, pw, G, rows, gemm, dtype, counters):
    """``weight_chunks`` into dU.shape[0] = S partials: partial p sums chunks p, p + S, ... in
    that order, on whichever of the V.shape[0] workers takes it (counters[0]; its buffers
    V[slot], Yh[slot] by counters[1]); the caller adds the partials in order. The partials
    depend on the shape only, so the bits do not depend on the number of workers."""
    units = x.shape[0] * ((gy.shape[2] + m - 1) // m)
    nchunks = (units + rows - 1) // rows
    S = dU.shape[0]
    for _ in prange(V.shape[0]):
        slot = fetch_add(counters, 1)
        while True:
            p = fetch_add(counters, 0)
            if p >= S:
                break
            for chunk in range(p, nchunks, S):
                u0 = chunk * rows
                _weight_chunk(x, gy, dU[p], V[slot], Yh[slot], m, ph, pw, G, u0,
                              min(rows, units - u0), chunk == p, gemm, dtype)
