"""im2col / col2im 2-D convolution: unfold the input, then GEMMs through BLAS.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); G groups, Cg = C/G, Kg = K/G, P = OH*OW,
R = Cg*KH*KW. For a chunk of images n0 <= n < n0 + nb the unfolded input is

    cols[i, c*KH*KW + r*KW + s, oh*OW + ow]
        = x[n0 + i, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

(0 outside the input), so group g's rows are one contiguous block and, with
Wg = w[g*Kg:(g+1)*Kg].reshape(Kg, R):

    forward          y[n, g]      = Wg @ cols[i, g]          a stack of GEMMs written straight
                                                             into NCHW, then + bias
    backward-input   dcols[i, g]  = Wg^T @ gy[n, g]          then col2im adds overlapping taps
                                                             (stride 1 with K <= C: instead the
                                                             forward pipeline on gy with the
                                                             transposed filter, no fold)
    backward-weight  dWg         += gy[:, g] @ cols[:, g]^T  one GEMM over the whole chunk: cols
                                                             is stored (R, nb*P) and gy copied to
                                                             (K, nb*P), so the reduction is long

Each of T workers takes the next block of images (an atomic counter) and runs unfold -> GEMM (->
fold) on it while the block is hot in its core's cache. The workers are Numba functions that call
numpy's OpenBLAS ``cblas_?gemm`` themselves (single-threaded; see ``_native``), started as one
parallel loop over the workers, so they run on the same pool as every other convkit loop (torch's
OpenMP pool, see ``convkit.runtime.openmp``). Where numpy's BLAS has no such cblas, the same
pipeline runs with numpy.matmul on convkit's own threads (``_forward_numpy`` and friends). col2im
walks one (n, c) input plane at a time, adding every tap that lands in it in a fixed order, and the
weight gradient keeps one partial per block, summed in block order: deterministic whichever worker
takes which block.
"""
import numpy as np
from numba import carray, njit, prange

from convkit.kernels.cpu._native import cblas_gemm, fetch_add, voidptr
from convkit.kernels.cpu.conv_common import transposed_filter, transposed_padding
from convkit.kernels.cpu.relu import relu_value
from convkit.runtime import blas, memory
from convkit.runtime.jit import parallel_call
from convkit.runtime.memory import empty

# Unfolded images per block: each GEMM worker unfolds a block this size (at least one image) and
# multiplies it at once, while it is still in that core's L2 cache. The unfolded memory in use is
# bounded by workers x max(this, one image), so N64 C64 224^2 never holds the whole matrix.
IM2COL_BLOCK_BYTES = 512 * 1024
# the weight gradient keeps one (K, R) partial per image block (summed in block order, so the
# result is deterministic); blocks grow so the partials stay below this
PARTIALS_BYTES = 64 << 20


@njit(cache=True, nogil=True)
def _taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW):
    """Per tap t = r*KW + s: [dr, oh0, oh1, off, lo, hi] -- the input row offset dr of output row
    0, the output rows [oh0, oh1) whose input row exists, the input column offset off of output
    column 0, and the output columns [lo, hi) whose input column exists."""
    taps = np.empty((KH * KW, 6), dtype=np.int64)
    for r in range(KH):
        for s in range(KW):
            dr = r * dil_h - ph
            oh0 = min(OH, max(0, (-dr + sh - 1) // sh))
            off = s * dil_w - pw
            lo = min(OW, max(0, (-off + sw - 1) // sw))
            taps[r * KW + s] = (dr, oh0, max(oh0, min(OH, (H - 1 - dr) // sh + 1)),
                                off, lo, max(lo, min(OW, (W - 1 - off) // sw + 1)))
    return taps


@njit(cache=True, nogil=True)
def _im2col(x, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, cols, row_step, col_step):
    """Unfold images n0 .. n0+nb-1 of x into the C-contiguous 2-D ``cols``: row c*KH*KW + t of
    image i goes to ``cols[i*row_step + c*KH*KW + t, i*col_step : i*col_step + OH*OW]``, so
    (row_step, col_step) = (C*KH*KW, 0) stacks the images' (CKK, P) matrices and (0, P) puts
    them side by side in one (CKK, nb*P) matrix."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P, T = OH * OW, KH * KW
    taps = _taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW)
    # stride 1 with OW == W: a tap's whole row of cols is the plane shifted by dr*W + off,
    # copied in one run, then the columns that fell into the left/right padding are zeroed
    shifted = sh == 1 and sw == 1 and OW == W
    for ic in range(nb * C):
        i, c = ic // C, ic % C
        flat = x[n0 + i, c].reshape(H * W)
        for t in range(T):
            dst = cols[i * row_step + c * T + t, i * col_step:i * col_step + P]
            dr, oh0, oh1, off, lo, hi = taps[t]
            for k in range(oh0 * OW):
                dst[k] = 0
            for k in range(oh1 * OW, P):
                dst[k] = 0
            if shifted:
                shift = dr * W + off
                k0 = max(oh0 * OW, -shift)
                k1 = min(oh1 * OW, H * W - shift)
                if k1 > k0:  # slices, so the loop index starts at 0 and the copy vectorises
                    d = dst[k0:k1]
                    src = flat[k0 + shift:k1 + shift]
                    for k in range(k1 - k0):
                        d[k] = src[k]
                for oh in range(oh0, oh1):
                    for ow in range(lo):
                        dst[oh * OW + ow] = 0
                    for ow in range(hi, OW):
                        dst[oh * OW + ow] = 0
                continue
            for oh in range(oh0, oh1):
                base = oh * OW
                for ow in range(lo):
                    dst[base + ow] = 0
                for ow in range(hi, OW):
                    dst[base + ow] = 0
                if hi > lo:
                    d = dst[base + lo:base + hi]
                    src = flat[(oh * sh + dr) * W + lo * sw + off:]
                    for k in range(hi - lo):
                        d[k] = src[k * sw]


@njit(cache=True, nogil=True)
def _col2im(cols, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, gx):
    """gx[n0 + i, c] = sum over taps of the cols entries that land on it, in tap order. ``cols``
    is scratch: its entries that fall into the left/right padding are zeroed here."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    T = KH * KW
    taps = _taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW)
    shifted = sh == 1 and sw == 1 and OW == W
    for ic in range(nb * C):
        i, c = ic // C, ic % C
        flat = gx[n0 + i, c].reshape(H * W)
        for k in range(H * W):
            flat[k] = 0
        for t in range(T):
            src = cols[i, c * T + t]
            dr, oh0, oh1, off, lo, hi = taps[t]
            if shifted:
                for oh in range(oh0, oh1):  # padding columns would land on a neighbour row
                    for ow in range(lo):
                        src[oh * OW + ow] = 0
                    for ow in range(hi, OW):
                        src[oh * OW + ow] = 0
                shift = dr * W + off
                k0 = max(oh0 * OW, -shift)
                k1 = min(oh1 * OW, H * W - shift)
                if k1 > k0:
                    d = flat[k0 + shift:k1 + shift]
                    sv = src[k0:k1]
                    for k in range(k1 - k0):
                        d[k] += sv[k]
                continue
            for oh in range(oh0, oh1):
                if hi > lo:
                    d = flat[(oh * sh + dr) * W + lo * sw + off:]
                    sv = src[oh * OW + lo:oh * OW + hi]
                    for k in range(hi - lo):
                        d[k * sw] += sv[k]


@njit(cache=True, nogil=True)
def _nchw_to_kp(a, n0, nb, out):
    """out[k, i*P + p] = a[n0 + i, k, p] for a: (N, K, P)."""
    K, P = a.shape[1], a.shape[2]
    for k in range(K):
        for i in range(nb):
            out[k, i * P:(i + 1) * P] = a[n0 + i, k]


@njit(cache=True, nogil=True)
def _epilogue(y, b, has_bias, relu, n0, nb):
    """y[n0 + i, k, :] += b[k], then ReLU when ``relu`` (conv2d_relu), on a block still in cache."""
    K, P = y.shape[1], y.shape[2]
    for ik in range(nb * K):
        i, k = ik // K, ik % K
        row = y[n0 + i, k]
        if has_bias:
            bk = b[k]
            for p in range(P):
                row[p] += bk
        if relu:
            for p in range(P):
                row[p] = relu_value(row[p])


def _block(N, rows, P, itemsize):
    """Images per block so that a block's unfolded (rows, nb*P) matrix fits IM2COL_BLOCK_BYTES."""
    return max(1, min(N, IM2COL_BLOCK_BYTES // max(1, rows * P * itemsize)))


def _in_workers(N, nb, flops, work):
    """Run ``work(blocks)`` on each worker; the image blocks are handed out one at a time from a
    shared iterator (a list iterator's next() is atomic under the GIL), so a worker whose core is
    busy with another thread pool's spin-wait simply takes fewer blocks."""
    blocks = [(n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]
    T = min(len(blocks), blas.workers(flops)) if blocks else 1
    shared = iter(blocks)
    return blas.run([lambda: work(shared) for _ in range(T)])


def _forward_numpy(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    OH, OW = out_hw
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    y = empty((N, K, P), x.dtype)
    wmat = w.reshape(K, R)
    nb = _block(N, C * KH * KW, P, x.itemsize)

    def work(blocks):
        buf = np.empty((nb, C * KH * KW, P), dtype=x.dtype)
        for n0, n1 in blocks:
            cols = buf[:n1 - n0]
            _im2col(x, n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH, OW,
                    cols.reshape(-1, P), C * KH * KW, 0)
            for g in range(G):
                np.matmul(wmat[g * Kg:(g + 1) * Kg], cols[:, g * R:(g + 1) * R],
                          out=y[n0:n1, g * Kg:(g + 1) * Kg])
            if b is not None or relu:
                _epilogue(y, np.zeros(1, y.dtype) if b is None else b, b is not None, relu, n0,
                          n1 - n0)

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return y.reshape(N, K, OH, OW)


def _backward_input_numpy(gy, w, input_shape, stride, padding, dilation, groups):
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gx = empty(tuple(input_shape), gy.dtype)
    wmat = w.reshape(K, R)
    gy3 = gy.reshape(N, K, P)
    nb = _block(N, C * KH * KW, P, gy.itemsize)

    def work(blocks):
        buf = np.empty((nb, C * KH * KW, P), dtype=gy.dtype)
        for n0, n1 in blocks:
            dcols = buf[:n1 - n0]
            for g in range(G):
                np.matmul(wmat[g * Kg:(g + 1) * Kg].T, gy3[n0:n1, g * Kg:(g + 1) * Kg],
                          out=dcols[:, g * R:(g + 1) * R])
            _col2im(dcols, n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH, OW,
                           gx)

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return gx


def _backward_weight_numpy(x, gy, weight_shape, stride, padding, dilation, groups):
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gy3 = gy.reshape(N, K, P)
    nb = _block(N, C * KH * KW, P, x.itemsize)
    # one (K, R) partial per block: grow the blocks if that would exceed PARTIALS_BYTES
    nb = min(max(N, 1), max(nb, -(-N * K * R * x.itemsize // PARTIALS_BYTES)))
    blocks = -(-N // nb) if N else 0
    partials = np.zeros((max(blocks, 1), K, R), dtype=x.dtype)

    def work(shared):
        """Reduce each block this worker takes into that block's own partial (one long GEMM per
        group); the partials are summed in block order below, so the result does not depend on
        which worker took which block."""
        cbuf = np.empty(nb * C * KH * KW * P, dtype=x.dtype)
        gbuf = np.empty(nb * K * P, dtype=x.dtype)
        for n0, n1 in shared:
            c_ = cbuf[:(n1 - n0) * C * KH * KW * P].reshape(C * KH * KW, (n1 - n0) * P)
            g_ = gbuf[:(n1 - n0) * K * P].reshape(K, (n1 - n0) * P)
            _im2col(x, n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH, OW, c_, 0, P)
            _nchw_to_kp(gy3, n0, n1 - n0, g_)
            gw = partials[n0 // nb]
            for g in range(G):
                np.matmul(g_[g * Kg:(g + 1) * Kg], c_[g * R:(g + 1) * R].T,
                          out=gw[g * Kg:(g + 1) * Kg])

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return partials.sum(axis=0).reshape(K, Cg, KH, KW)


# ---- native pipeline: Numba workers calling cblas, launched on the OpenMP pool ----------------
# argument block (int64): counters, sizes, conv parameters, addresses
(_NEXT_BLOCK, _NEXT_SLOT, _N, _C, _H, _W, _K, _CG, _KH, _KW, _SH, _SW, _PH, _PW, _DH, _DW, _OH,
 _OW, _G, _NB, _GEMM, _X, _WT, _B, _Y, _SCRATCH, _PARTIALS, _RELU, NARGS) = range(29)
_NO_TRANS, _TRANS = 111, 112


@njit(inline="always")
def _conv_params(a):
    return (a[_KH], a[_KW], a[_SH], a[_SW], a[_PH], a[_PW], a[_DH], a[_DW], a[_OH], a[_OW])


@njit(inline="always")
def _sizes(a):
    """(N, K, G, nb, P, Kg, R, CKK) of an argument block: R = Cg*KH*KW, CKK = C*KH*KW."""
    K, G, KHW = a[_K], a[_G], a[_KH] * a[_KW]
    return a[_N], K, G, a[_NB], a[_OH] * a[_OW], K // G, a[_CG] * KHW, a[_C] * KHW


@njit(inline="always")
def _operands(a, one):
    """Forward and backward-input share their operands' shapes: the (N, C, H, W) image-side
    array at _X (x or gx), the (K, R) filter at _WT, the (N, K, P) output-side array at _Y (y or
    gy), and this thread's (nb, CKK, P) slot of the scratch."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    image = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), one.dtype)
    slot = fetch_add(a, _NEXT_SLOT)
    cols = carray(voidptr(a[_SCRATCH] + slot * nb * CKK * P * image.itemsize), (nb, CKK, P),
                  one.dtype)
    return (image, carray(voidptr(a[_WT]), (K, R), one.dtype),
            carray(voidptr(a[_Y]), (N, K, P), one.dtype), cols)


@njit(nogil=True, cache=True)
def _forward_worker(a, one):
    """Take image blocks until none is left: unfold, one GEMM per image and group into y, then
    bias and ReLU (as asked) while the block is hot."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    x, wm, y, cols = _operands(a, one)
    zero = one[0] - one[0]
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        _im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols.reshape(nb * CKK, P),
                CKK, 0)
        for i in range(m):
            for g in range(G):
                cblas_gemm(a[_GEMM], _NO_TRANS, _NO_TRANS, Kg, P, R, one[0],
                           wm[g * Kg:].ctypes.data, R, cols[i, g * R:].ctypes.data, P, zero,
                           y[n0 + i, g * Kg:].ctypes.data, P)
        if a[_B] != 0 or a[_RELU] != 0:
            has_bias = a[_B] != 0  # without one, the filter's address stands in, never read
            bias = carray(voidptr(a[_B] if has_bias else a[_WT]), (K if has_bias else 1,),
                          one.dtype)
            _epilogue(y, bias, has_bias, a[_RELU] != 0, n0, m)


@njit(nogil=True, cache=True)
def _backward_input_worker(a, one):
    """Take image blocks: dcols = W^T gy per image and group, then col2im into gx."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    gx, wm, gy, dcols = _operands(a, one)
    zero = one[0] - one[0]
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        for i in range(m):
            for g in range(G):
                cblas_gemm(a[_GEMM], _TRANS, _NO_TRANS, R, P, Kg, one[0],
                           wm[g * Kg:].ctypes.data, R, gy[n0 + i, g * Kg:].ctypes.data, P, zero,
                           dcols[i, g * R:].ctypes.data, P)
        _col2im(dcols, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, gx)


@njit(nogil=True, cache=True)
def _backward_weight_worker(a, one):
    """Take image blocks: partials[block] = gy_block @ cols_block^T per group, one long GEMM over
    the block's nb*P output positions (cols stored (CKK, nb*P), gy copied to (K, nb*P))."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    x = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), one.dtype)
    gy = carray(voidptr(a[_Y]), (N, K, P), one.dtype)
    nblocks = (N + nb - 1) // nb
    partials = carray(voidptr(a[_PARTIALS]), (nblocks, K, R), one.dtype)
    slot = fetch_add(a, _NEXT_SLOT)
    per_slot = nb * (CKK + K) * P
    buf = carray(voidptr(a[_SCRATCH] + slot * per_slot * x.itemsize), (per_slot,), one.dtype)
    zero = one[0] - one[0]
    while True:
        blk = fetch_add(a, _NEXT_BLOCK)
        if blk >= nblocks:
            return
        n0 = blk * nb
        m = min(nb, N - n0)
        c2 = buf[:CKK * m * P].reshape(CKK, m * P)
        g2 = buf[nb * CKK * P:nb * CKK * P + K * m * P].reshape(K, m * P)
        _im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, c2, 0, P)
        _nchw_to_kp(gy, n0, m, g2)
        for g in range(G):
            cblas_gemm(a[_GEMM], _NO_TRANS, _TRANS, Kg, R, m * P, one[0],
                       g2[g * Kg:].ctypes.data, m * P, c2[g * R:].ctypes.data, m * P, zero,
                       partials[blk, g * Kg:].ctypes.data, R)


@njit(parallel=True, cache=True)
def _forward_team(a, one, T):
    for _ in prange(T):
        _forward_worker(a, one)


@njit(parallel=True, cache=True)
def _backward_input_team(a, one, T):
    for _ in prange(T):
        _backward_input_worker(a, one)


@njit(parallel=True, cache=True)
def _backward_weight_team(a, one, T):
    for _ in prange(T):
        _backward_weight_worker(a, one)


_PASSES = {"forward": (_forward_worker, _forward_team),
           "backward_input": (_backward_input_worker, _backward_input_team),
           "backward_weight": (_backward_weight_worker, _backward_weight_team)}


def _native_ok(dtype, *sizes) -> bool:
    return blas.gemm_address(np.dtype(dtype).char) is not None and min(sizes) > 0


def _run(pass_name, args, dtype, T):
    """T workers, each taking image blocks until none is left: a parallel loop over the workers
    (on the OpenMP pool where ``convkit.runtime.openmp`` installed it), or the worker alone for
    T == 1."""
    worker, team = _PASSES[pass_name]
    one = np.ones(1, dtype=dtype)
    with blas.single_threaded():
        if T > 1:
            parallel_call(team, args, one, T)
        else:
            worker(args, one)


def _args(x_shape, w_shape, conf, out_hw, nb, dtype, **addresses):
    (sh, sw), (ph, pw), (dh, dw), G = conf
    a = np.zeros(NARGS, dtype=np.int64)
    a[_N:_W + 1] = x_shape
    a[_K], a[_CG], a[_KH], a[_KW] = w_shape
    a[_SH:_DW + 1] = (sh, sw, ph, pw, dh, dw)
    a[_OH], a[_OW], a[_G], a[_NB] = out_hw[0], out_hw[1], G, nb
    a[_GEMM] = blas.gemm_address(np.dtype(dtype).char)
    for name, value in addresses.items():
        a[globals()["_" + name.upper()]] = value
    return a


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    P = out_hw[0] * out_hw[1]
    if not _native_ok(x.dtype, N, C, K, P):
        return _forward_numpy(x, w, b, stride, padding, dilation, groups, out_hw, relu)
    x, b = np.ascontiguousarray(x), None if b is None else np.ascontiguousarray(b)
    y = empty((N, K) + tuple(out_hw), x.dtype)
    nb = _block(N, C * KH * KW, P, x.itemsize)
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * Cg * KH * KW * P))
    scratch = memory.scratch("im2col", T * nb * C * KH * KW * P, x.dtype)
    wc = np.ascontiguousarray(w)
    args = _args(x.shape, w.shape, (stride, padding, dilation, groups), out_hw, nb, x.dtype,
                 x=x.ctypes.data, wt=wc.ctypes.data, b=0 if b is None else b.ctypes.data,
                 y=y.ctypes.data, scratch=scratch.ctypes.data, relu=int(relu))
    _run("forward", args, x.dtype, T)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P = OH * OW
    pads = transposed_padding(w.shape, padding, dilation)
    if stride == (1, 1) and KH * KW > 1 and K <= C and min(pads) >= 0:
        # stride 1 and no more output than input channels: the forward pipeline on gy with the
        # transposed filter unfolds no more than col2im would fold, and skips the fold (a
        # scattered add): ResNet 3x3 C64 0.93x, dilated 3x3 C64 0.88x the col2im time measured
        # here; with more output channels (SimpleCNN conv2: 1.3x, C=1 conv1: 7x) col2im stays
        return forward(gy, np.ascontiguousarray(transposed_filter(w, groups)), None, (1, 1), pads,
                       dilation, groups, tuple(input_shape[2:]))
    if not _native_ok(gy.dtype, N, C, K, P):
        return _backward_input_numpy(gy, w, input_shape, stride, padding, dilation, groups)
    gy = np.ascontiguousarray(gy)
    gx = empty(tuple(input_shape), gy.dtype)
    nb = _block(N, C * KH * KW, P, gy.itemsize)
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * Cg * KH * KW * P))
    scratch = memory.scratch("im2col", T * nb * C * KH * KW * P, gy.dtype)
    wc = np.ascontiguousarray(w)
    args = _args(input_shape, w.shape, (stride, padding, dilation, groups), (OH, OW), nb,
                 gy.dtype, x=gx.ctypes.data, wt=wc.ctypes.data, y=gy.ctypes.data,
                 scratch=scratch.ctypes.data)
    _run("backward_input", args, gy.dtype, T)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, R = OH * OW, Cg * KH * KW
    if not _native_ok(x.dtype, N, C, K, P):
        return _backward_weight_numpy(x, gy, weight_shape, stride, padding, dilation, groups)
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy)
    nb = _block(N, C * KH * KW, P, x.itemsize)
    nb = max(nb, -(-N * K * R * x.itemsize // PARTIALS_BYTES))  # bound the partials
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * R * P))
    scratch = memory.scratch("im2col", T * nb * (C * KH * KW + K) * P, x.dtype)
    partials = memory.scratch("partials", nblocks * K * R, x.dtype).reshape(nblocks, K, R)
    args = _args(x.shape, weight_shape, (stride, padding, dilation, groups), (OH, OW), nb,
                 x.dtype, x=x.ctypes.data, y=gy.ctypes.data, scratch=scratch.ctypes.data,
                 partials=partials.ctypes.data)
    _run("backward_weight", args, x.dtype, T)
    return partials.sum(axis=0).reshape(K, Cg, KH, KW)
