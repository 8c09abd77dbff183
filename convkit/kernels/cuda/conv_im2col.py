"""im2col / col2im 2-D convolution on device arrays with a hand-written tiled GEMM.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); G groups, Cg = C/G, Kg = K/G,
R = Cg*KH*KW, P = OH*OW. For a chunk of images the unfolded array is

    cols[n, c*KH*KW + r*KW + s, oh*OW + ow] = x[n, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

(0 outside the input), so group g of image n is the (R, P) matrix cols_ng and, with
Wg = w[g*Kg:(g+1)*Kg].reshape(Kg, R):

    forward          Y_ng   = Wg @ cols_ng (+ bias)        one GEMM batch entry per (n, g)
    backward-input   dcol_ng = Wg^T @ dY_ng, then col2im   one GEMM batch entry per (n, g)
    backward-weight  dWg = sum_n dY_ng @ cols_ng^T          one entry per (batch split, g)

Every GEMM is one launch of ``_gemm``: a block computes a GEMM_TM x GEMM_TN tile of C, staging
GEMM_TK-deep slices of A and B in shared memory; each thread accumulates a GEMM_RM x GEMM_RN
register block, so one pair of shared loads feeds RM*RN/(RM+RN) FMAs. Operands are addressed
through strides, so transposes and the NCHW layouts need no copies.

col2im is a gather: one thread per input pixel adds, in a fixed (r, s) order, every unfolded
entry that was read from it. The weight gradient reduces over the batch inside each GEMM block
(images of a split in order) and adds the splits in order in a second kernel. No atomics: all
results are bitwise deterministic from run to run.
"""
from numba import cuda

from convkit.kernels.cuda._common import (
    as_device,
    ceil_div,
    dummy,
    empty,
    flat,
    launch_config,
    numba_type,
    specialise,
    split_count,
    sum_splits,
    zeros,
)

GEMM_TM = 64  # rows of C per block
GEMM_TN = 64  # columns of C per block
GEMM_TK = 16  # reduction depth staged per step: A and B tiles of 64x16 (8 KiB fp32, 16 KiB fp64)
GEMM_RM = 4  # rows per thread held in registers
GEMM_RN = 4  # columns per thread: 16 FMAs per 8 shared-memory loads
GEMM_BX = GEMM_TN // GEMM_RN  # 16 threads along x = columns of C, the contiguous axis
GEMM_BY = GEMM_TM // GEMM_RM  # 16 threads along y: 256 threads per block
GEMM_THREADS = GEMM_BX * GEMM_BY
# One extra shared column: k-major stores of a k-contiguous operand hit distinct banks. numba
# needs shared-array shapes as plain constants, hence the two padded widths.
GEMM_SA_W = GEMM_TM + 1
GEMM_SB_W = GEMM_TN + 1
# Weight-gradient GEMMs have a small C (Kg x R); the batch is split so about this many blocks run
# (4 per SM of a 132-SM H100), and the splits are added afterwards in a fixed order.
GEMM_TARGET_BLOCKS = 528
GRID_Z_MAX = 65535  # CUDA's limit on gridDim.z, which counts (image, group) pairs
# Upper bound on the unfolded buffer: batch chunks are sized to fit it (at least one image).
IM2COL_CHUNK_BYTES = 256 * 1024 * 1024


@specialise
def _gemm(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def gemm(A, B, C, bias, M, NC, KR, G, nrep, nmax, a_sg, a_sn, a_si, a_sk,
             b_sg, b_sn, b_sk, b_sj, c_sz, c_si, has_bias, accumulate):
        """C[z] (+)= sum_{m < nrep} A[g, n] @ B[g, n] (+ bias) for z = zz*G + g, n = zz*nrep + m.

        A[g, n][i, k] = A[g*a_sg + n*a_sn + i*a_si + k*a_sk] (M x KR), B likewise (KR x NC),
        C[z][i, j] = C[z*c_sz + i*c_si + j]; bias[g*M + i] is added when has_bias.
        """
        sA = cuda.shared.array((GEMM_TK, GEMM_SA_W), dt)
        sB = cuda.shared.array((GEMM_TK, GEMM_SB_W), dt)
        acc = cuda.local.array((GEMM_RM, GEMM_RN), dt)
        ra = cuda.local.array(GEMM_RM, dt)
        rb = cuda.local.array(GEMM_RN, dt)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * GEMM_BX + tx
        j0, i0, z = cuda.blockIdx.x * GEMM_TN, cuda.blockIdx.y * GEMM_TM, cuda.blockIdx.z
        g, zz = z % G, z // G
        for ii in range(GEMM_RM):
            for jj in range(GEMM_RN):
                acc[ii, jj] = 0
        n_kt = (KR + GEMM_TK - 1) // GEMM_TK
        for m in range(nrep):
            n = zz * nrep + m
            if n >= nmax:  # uniform over the block, so no thread skips a syncthreads alone
                break
            a0, b0 = g * a_sg + n * a_sn, g * b_sg + n * b_sn
            for kt in range(n_kt):
                k0 = kt * GEMM_TK
                for e in range(tid, GEMM_TM * GEMM_TK, GEMM_THREADS):
                    if a_sk == 1:  # neighbouring threads read neighbouring addresses
                        ii, kk = e // GEMM_TK, e % GEMM_TK
                    else:
                        ii, kk = e % GEMM_TM, e // GEMM_TM
                    if i0 + ii < M and k0 + kk < KR:
                        sA[kk, ii] = A[a0 + (i0 + ii) * a_si + (k0 + kk) * a_sk]
                    else:
                        sA[kk, ii] = 0
                for e in range(tid, GEMM_TK * GEMM_TN, GEMM_THREADS):
                    if b_sj == 1:
                        kk, jj = e // GEMM_TN, e % GEMM_TN
                    else:
                        kk, jj = e % GEMM_TK, e // GEMM_TK
                    if k0 + kk < KR and j0 + jj < NC:
                        sB[kk, jj] = B[b0 + (k0 + kk) * b_sk + (j0 + jj) * b_sj]
                    else:
                        sB[kk, jj] = 0
                cuda.syncthreads()  # the A and B tiles of this k-slice are staged
                for kk in range(GEMM_TK):
                    for ii in range(GEMM_RM):
                        ra[ii] = sA[kk, ty + ii * GEMM_BY]
                    for jj in range(GEMM_RN):
                        rb[jj] = sB[kk, tx + jj * GEMM_BX]
                    for ii in range(GEMM_RM):
                        for jj in range(GEMM_RN):
                            acc[ii, jj] += ra[ii] * rb[jj]
                cuda.syncthreads()  # all threads are done with the tiles before the next slice
        c0 = z * c_sz
        for ii in range(GEMM_RM):
            i = i0 + ty + ii * GEMM_BY
            if i < M:
                for jj in range(GEMM_RN):
                    j = j0 + tx + jj * GEMM_BX
                    if j < NC:
                        v = acc[ii, jj] + bias[g * M + i] if has_bias else acc[ii, jj]
                        if accumulate:
                            C[c0 + i * c_si + j] += v
                        else:
                            C[c0 + i * c_si + j] = v

    return gemm


def _launch_gemm(A, B, C, M, NC, KR, Z, G=1, nrep=1, nmax=1, a=(0, 0, 0, 1), b=(0, 0, 0, 1),
                 c=(0, 0), bias=None, accumulate=False, stream=0):
    """One batched GEMM launch; a = (a_sg, a_sn, a_si, a_sk), b likewise, c = (c_sz, c_si)."""
    grid, block = launch_config((ceil_div(NC, GEMM_RN), ceil_div(M, GEMM_RM), Z),
                                (GEMM_BX, GEMM_BY))
    _gemm(C.dtype.char)[grid, block, stream](
        A, B, C, bias if bias is not None else dummy(C.dtype), M, NC, KR, G, nrep, nmax,
        *a, *b, *c, bias is not None, accumulate)


def gemm(a, b, out=None, *, stream=0):
    """out = a @ b for C-contiguous 2-D device arrays (M, K) and (K, N): the conv GEMM alone.

    Asynchronous on ``stream``, like every kernel here; exposed for benchmarks and tests.
    """
    a, b = as_device(a), as_device(b)
    M, KR = a.shape
    NC = b.shape[1]
    out = empty((M, NC), a.dtype, stream) if out is None else as_device(out)
    if out.size:
        if KR == 0:
            return zeros((M, NC), a.dtype, stream)
        _launch_gemm(flat(a), flat(b), flat(out), M, NC, KR, 1, a=(0, 0, KR, 1),
                     b=(0, 0, NC, 1), c=(0, NC), stream=stream)
    return out


@cuda.jit
def _im2col(x, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, cols):
    """cols (flat (nb, C*KH*KW, OH*OW)) from the chunk x: (nb, C, H, W)."""
    nb, C, H, W = x.shape
    P, R = OH * OW, C * KH * KW
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nb * R * P, step):
        p, row, n = e % P, (e // P) % R, e // (P * R)
        s, r, c = row % KW, (row // KW) % KH, row // (KH * KW)
        ih = (p // OW) * sh - ph + r * dil_h
        iw = (p % OW) * sw - pw + s * dil_w
        if 0 <= ih < H and 0 <= iw < W:
            cols[e] = x[n, c, ih, iw]
        else:
            cols[e] = 0


@specialise
def _col2im(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def col2im(cols, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, gx):
        """gx: (nb, C, H, W) gathers every entry of cols (flat (nb, C*KH*KW, P)) read from it."""
        nb, C, H, W = gx.shape
        P, R = OH * OW, C * KH * KW
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, nb * C * H * W, step):
            iw, ih = e % W, (e // W) % H
            c, n = (e // (W * H)) % C, e // (W * H * C)
            acc = dt(0)
            for r in range(KH):
                th = ih + ph - r * dil_h
                if th < 0 or th % sh != 0 or th // sh >= OH:
                    continue
                for s in range(KW):
                    tw = iw + pw - s * dil_w
                    if tw < 0 or tw % sw != 0 or tw // sw >= OW:
                        continue
                    acc += cols[(n * R + (c * KH + r) * KW + s) * P + (th // sh) * OW + tw // sw]
            gx[n, c, ih, iw] = acc

    return col2im


def _chunk(N, C, KH, KW, P, itemsize, G):
    """Images per chunk: the (nb, C*KH*KW, P) buffer fits IM2COL_CHUNK_BYTES, nb*G fits grid z."""
    per_image = max(1, C * KH * KW * P * itemsize)
    return max(1, min(N, IM2COL_CHUNK_BYTES // per_image, GRID_Z_MAX // G))


def _unfold(x, KH, KW, stride, padding, dilation, OH, OW, cols, stream):
    grid, block = launch_config((cols.size,))
    _im2col[grid, block, stream](x, KH, KW, *stride, *padding, *dilation, OH, OW, cols)


def forward(x, w, b, stride, padding, dilation, groups, out_hw, stream=0):
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    OH, OW = out_hw
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    y = empty((N, K, OH, OW), x.dtype, stream)
    if y.size == 0:
        return y
    nb_max = _chunk(N, C, KH, KW, P, x.dtype.itemsize, G)
    cols = empty((nb_max * C * KH * KW * P,), x.dtype, stream)
    wf = flat(w)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_ = cols[:nb * C * KH * KW * P]
        _unfold(x[n0:n0 + nb], KH, KW, stride, padding, dilation, OH, OW, c_, stream)
        _launch_gemm(wf, c_, flat(y[n0:n0 + nb]), Kg, P, R, nb * G, G=G, nmax=nb,
                     a=(Kg * R, 0, R, 1), b=(R * P, G * R * P, P, 1), c=(Kg * P, P),
                     bias=b, stream=stream)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups, stream=0):
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gx = empty(input_shape, gy.dtype, stream)
    if gx.size == 0:
        return gx
    if P == 0 or K == 0:
        return zeros(input_shape, gy.dtype, stream)
    nb_max = _chunk(N, C, KH, KW, P, gy.dtype.itemsize, G)
    dcols = empty((nb_max * C * KH * KW * P,), gy.dtype, stream)
    col2im = _col2im(gy.dtype.char)
    wf = flat(w)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        d_ = dcols[:nb * C * KH * KW * P]
        _launch_gemm(wf, flat(gy[n0:n0 + nb]), d_, R, P, Kg, nb * G, G=G, nmax=nb,
                     a=(Kg * R, 0, 1, R), b=(Kg * P, K * P, P, 1), c=(R * P, P), stream=stream)
        gx_ = gx[n0:n0 + nb]
        grid, block = launch_config((gx_.size,))
        col2im[grid, block, stream](d_, KH, KW, *stride, *padding, *dilation, OH, OW, gx_)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups, stream=0):
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    if N == 0 or P == 0 or K * R == 0:
        return zeros(weight_shape, x.dtype, stream)
    gw = empty(weight_shape, x.dtype, stream)
    nb_max = _chunk(N, C, KH, KW, P, x.dtype.itemsize, G)
    cols = empty((nb_max * C * KH * KW * P,), x.dtype, stream)
    tiles = G * ceil_div(Kg, GEMM_TM) * ceil_div(R, GEMM_TN)
    S_max, _ = split_count(nb_max, tiles, GEMM_TARGET_BLOCKS)
    part = empty((S_max * K * R,), x.dtype, stream) if S_max > 1 else None
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_ = cols[:nb * C * KH * KW * P]
        _unfold(x[n0:n0 + nb], KH, KW, stride, padding, dilation, OH, OW, c_, stream)
        S, per = split_count(nb, tiles, GEMM_TARGET_BLOCKS)
        out = flat(gw) if S == 1 else part[:S * K * R]
        _launch_gemm(flat(gy[n0:n0 + nb]), c_, out, Kg, R, P, S * G, G=G, nrep=per, nmax=nb,
                     a=(Kg * P, K * P, P, 1), b=(R * P, G * R * P, 1, P), c=(Kg * R, R),
                     accumulate=(S == 1 and n0 > 0), stream=stream)
        if S > 1:
            sum_splits(out, S, flat(gw), n0 > 0, stream)
    return gw


__all__ = ["forward", "backward_input", "backward_weight", "gemm", "GEMM_TM", "GEMM_TN",
           "GEMM_TK", "GEMM_RM", "GEMM_RN", "IM2COL_CHUNK_BYTES"]
