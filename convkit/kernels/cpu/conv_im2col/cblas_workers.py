"""im2col pipeline 2: Numba workers calling numpy's OpenBLAS ``cblas_?gemm`` by address.

The same work as pipeline 1 (``numpy_matmul``), with no Python in the loop: T workers, started as
one parallel loop over the workers (so they run on the same pool as every other convkit loop:
torch's OpenMP pool, see ``convkit.runtime.openmp``), each take the next block of images from an
atomic counter and run unfold -> one single-threaded ``cblas_?gemm`` per image and group (->
fold) on it while the block is hot in its core's cache. The GEMM's address comes from
``convkit.runtime.blas.gemm_address`` at run time (see ``_native.cblas_gemm``), so compiled code
holds no process-specific address and can be cached. Usable where numpy's BLAS is an ILP64
OpenBLAS with cblas (``available``). Same signatures as ``convkit.kernels.cpu.conv_im2col``'s
forward / backward_input / backward_weight (backward_input here is always GEMM + col2im), for
problems with no zero size.

Convs that are stride 1 along H with a deep enough row of taps (``uses_rows``) run their forward
and weight gradient on row-shift workers instead: ``unfold.unfold_rows`` unfolds only the KW taps
of each row of the vertically padded image, and tap row r is a column window of that matrix, so
one image takes KH GEMMs per group (accumulating; the filter repacked as (KH, K, Cg*KW)):

    forward          y[n, g]              += W_r,g @ rows[g, :, r*dil_h*OW : r*dil_h*OW + P]
    backward-weight  dW_r,g (per block)   += gy[n, g] @ rows[g, :, window r]^T

(other rounding than im2col's single GEMM, within the same tolerances; the numpy pipeline keeps
im2col).

Small output planes (P < MULTI_MAX_P, e.g. ResNet layer4's 7x7) run their forward and
backward-input on multi-image workers instead, since OpenBLAS runs far below its peak on a GEMM
of a few dozen columns: a block of ``multi_images`` images laid side by side, one GEMM of nb*P
columns per group, then each image's (K, P) column block copied back (this takes precedence over
the row-shift forward):

    forward          out[:, g] = Wg @ cols[g]      cols (CKK, nb*P), out (K, nb*P) -> y, + bias
    backward-input   dcols[g]  = Wg^T @ gy_blk[g]  gy_blk (K, nb*P) gathered, then col2im per
                                                   image from its column block

(other rounding than the per-image GEMMs, within the same tolerances; the blocks depend on the
shape only, so still the same bits whatever the number of workers).

A worker gets everything through one int64 argument block (counters, sizes, conv parameters,
array addresses) and the dtype; its unfold buffer is its own slot of a shared scratch array
(slots handed out by another atomic counter).
"""
import numpy as np
from numba import carray, njit, prange

from convkit.kernels.cpu._native import cblas_gemm, fetch_add, voidptr
from convkit.kernels.cpu.conv_im2col.unfold import (
    block_images,
    col2im,
    epilogue,
    im2col,
    kp_to_nchw,
    nchw_to_kp,
    unfold_rows,
    weight_block_images,
)
from convkit.runtime import blas, memory
from convkit.runtime.jit import parallel_call
from convkit.runtime.memory import empty

# argument block (int64): counters, sizes, conv parameters, addresses
(_NEXT_BLOCK, _NEXT_SLOT, _N, _C, _H, _W, _K, _CG, _KH, _KW, _SH, _SW, _PH, _PW, _DH, _DW, _OH,
 _OW, _G, _NB, _GEMM, _X, _WT, _B, _Y, _SCRATCH, _PARTIALS, _RELU, _PER_IMAGE, NARGS) = range(30)
_NO_TRANS, _TRANS = 111, 112  # CblasNoTrans, CblasTrans
# output pixels from which the weight gradient runs one GEMM per image, accumulating into its
# block's partial and reading grad_output in place, instead of copying the block's grad_output
# to (K, nb*P) for one long GEMM: one thread, per-image / long time, medians of 25-30 alternated
# rounds: SimpleCNN conv1 (P=784) 0.71, conv2 (P=196, as im2col) 0.86-0.92, N32 C128 7^2 K128
# (P=49) 0.99; below that each short GEMM rereads and rewrites the whole (K, R) partial
BW_IMAGE_MIN_P = 128

# output pixels below which forward and backward-input lay a block of images side by side and
# run one GEMM of nb*P columns per group instead of one of P columns per image: OpenBLAS runs
# far below its peak on few columns. One thread, numpy's sgemm, time per column relative to
# 49 columns (medians of 9 rounds): (512 x 4608) filter 0.87 at 98 columns, 0.72 at 196, 0.69
# at 392; (512 x 1536) 0.71, 0.68, 0.61; (256 x 2304) 0.82, 0.74, 0.71. At P >= 128 the
# per-image GEMM is already near the plateau and the row-shift path keeps its smaller unfold
MULTI_MAX_P = 128
# columns of one multi-image GEMM (images per block = ceil(MULTI_COLS / P)): most of the gain is
# in by 196 columns, and N8 at P = 49 still makes two blocks for two workers. Only the shape
# chooses the blocks, never the number of workers, so results are the same bits whatever it is
MULTI_COLS = 192
# blocks a batch is cut into at least, where it has the images: one block is one worker, and a
# batch of one block left the other core idle (ResNet-18's layer 4 at N=2 and N=4: 512 x 512
# 7x7, one block of 98 / 196 columns; two blocks measured 0.53-0.58x its time, forward and
# input gradient, quiet 2-core Zen 4). A function of the shape, like MULTI_COLS
MULTI_MIN_BLOCKS = 2


def multi_images(N, P) -> int:
    """Images per block of the multi-image forward and backward-input (P < MULTI_MAX_P):
    ceil(MULTI_COLS / P), but at most ceil(N / MULTI_MIN_BLOCKS)."""
    return max(1, min(-(-N // MULTI_MIN_BLOCKS), -(-MULTI_COLS // P)))


def available(dtype) -> bool:
    """Whether numpy's BLAS exposes the ``cblas_?gemm`` this pipeline calls for ``dtype``."""
    return blas.gemm_address(np.dtype(dtype).char) is not None


@njit(inline="always")
def _conv_params(a):
    return (a[_KH], a[_KW], a[_SH], a[_SW], a[_PH], a[_PW], a[_DH], a[_DW], a[_OH], a[_OW])


@njit(inline="always")
def _sizes(a):
    """(N, K, G, nb, P, Kg, R, CKK) of an argument block: R = Cg*KH*KW, CKK = C*KH*KW."""
    K, G, KHW = a[_K], a[_G], a[_KH] * a[_KW]
    return a[_N], K, G, a[_NB], a[_OH] * a[_OW], K // G, a[_CG] * KHW, a[_C] * KHW


@njit(inline="always")
def _operands(a, dtype):
    """Forward and backward-input share their operands' shapes: the (N, C, H, W) image-side
    array at _X (x or gx), the (K, R) filter at _WT, the (N, K, P) output-side array at _Y (y or
    gy), and this thread's (nb, CKK, P) slot of the scratch."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    image = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    slot = fetch_add(a, _NEXT_SLOT)
    cols = carray(voidptr(a[_SCRATCH] + slot * nb * CKK * P * image.itemsize), (nb, CKK, P),
                  dtype)
    return (image, carray(voidptr(a[_WT]), (K, R), dtype),
            carray(voidptr(a[_Y]), (N, K, P), dtype), cols)


@njit(nogil=True, cache=True)
def _forward_worker(a, dtype):
    """Take image blocks until none is left: unfold, y[n, g] = Wg @ cols[n, g] per image and
    group, then bias and ReLU (as asked) while the block is hot."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    x, wm, y, cols = _operands(a, dtype)
    one, zero = dtype.type(1), dtype.type(0)  # GEMM's alpha and beta, of the GEMM's type
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols.reshape(nb * CKK, P),
               CKK, 0)
        for i in range(m):
            for g in range(G):
                cblas_gemm(a[_GEMM], _NO_TRANS, _NO_TRANS, Kg, P, R, one,
                           wm[g * Kg:].ctypes.data, R, cols[i, g * R:].ctypes.data, P, zero,
                           y[n0 + i, g * Kg:].ctypes.data, P)
        if a[_B] != 0 or a[_RELU] != 0:
            has_bias = a[_B] != 0  # without one, the filter's address stands in, never read
            bias = carray(voidptr(a[_B] if has_bias else a[_WT]), (K if has_bias else 1,),
                          dtype)
            epilogue(y, bias, has_bias, a[_RELU] != 0, n0, m)


@njit(nogil=True, cache=True)
def _backward_input_worker(a, dtype):
    """Take image blocks: dcols[n, g] = Wg^T @ gy[n, g] per image and group, then col2im into
    gx."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    gx, wm, gy, dcols = _operands(a, dtype)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        for i in range(m):
            for g in range(G):
                cblas_gemm(a[_GEMM], _TRANS, _NO_TRANS, R, P, Kg, one,
                           wm[g * Kg:].ctypes.data, R, gy[n0 + i, g * Kg:].ctypes.data, P, zero,
                           dcols[i, g * R:].ctypes.data, P)
        col2im(dcols.reshape(nb * CKK, P), n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, gx,
               CKK, 0)


@njit(inline="always")
def _wide_slot(a, dtype, itemsize):
    """This thread's nb*(CKK + K)*P slot of the scratch, for the passes that lay a block's images
    side by side: a (CKK, m*P) unfolded block, then a (K, m*P) output-side block (``_wide``)."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    slot = fetch_add(a, _NEXT_SLOT)
    per_slot = nb * (CKK + K) * P
    return carray(voidptr(a[_SCRATCH] + slot * per_slot * itemsize), (per_slot,), dtype)


@njit(inline="always")
def _wide(a, buf, m):
    """A block of m images side by side in a ``_wide_slot``: cols (CKK, m*P), out (K, m*P)."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    return (buf[:CKK * m * P].reshape(CKK, m * P),
            buf[nb * CKK * P:nb * CKK * P + K * m * P].reshape(K, m * P))


@njit(nogil=True, cache=True)
def _forward_multi_worker(a, dtype):
    """Small planes (``multi_images``): take image blocks, unfold each block's images side by
    side into cols (CKK, m*P), one GEMM per group out[g] = Wg @ cols[g] of m*P columns, then
    y[n0 + i] = out[:, i*P : (i+1)*P], bias and ReLU (as asked) while the block is hot."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    x = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    wm = carray(voidptr(a[_WT]), (K, R), dtype)
    y = carray(voidptr(a[_Y]), (N, K, P), dtype)
    buf = _wide_slot(a, dtype, x.itemsize)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        cols, out = _wide(a, buf, m)
        im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols, 0, P)
        for g in range(G):
            cblas_gemm(a[_GEMM], _NO_TRANS, _NO_TRANS, Kg, m * P, R, one,
                       wm[g * Kg:].ctypes.data, R, cols[g * R:].ctypes.data, m * P, zero,
                       out[g * Kg:].ctypes.data, m * P)
        kp_to_nchw(out, y, n0, m)
        if a[_B] != 0 or a[_RELU] != 0:
            has_bias = a[_B] != 0
            bias = carray(voidptr(a[_B] if has_bias else a[_WT]), (K if has_bias else 1,),
                          dtype)
            epilogue(y, bias, has_bias, a[_RELU] != 0, n0, m)


@njit(nogil=True, cache=True)
def _backward_input_multi_worker(a, dtype):
    """Small planes: take image blocks, gather the block's grad_output side by side into
    (K, m*P), one GEMM per group dcols[g] = Wg^T @ gy_block[g] of m*P columns, then col2im of
    each image from its column block."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    gx = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    wm = carray(voidptr(a[_WT]), (K, R), dtype)
    gy = carray(voidptr(a[_Y]), (N, K, P), dtype)
    buf = _wide_slot(a, dtype, gx.itemsize)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        dcols, g2 = _wide(a, buf, m)
        nchw_to_kp(gy, n0, m, g2)
        for g in range(G):
            cblas_gemm(a[_GEMM], _TRANS, _NO_TRANS, R, m * P, Kg, one,
                       wm[g * Kg:].ctypes.data, R, g2[g * Kg:].ctypes.data, m * P, zero,
                       dcols[g * R:].ctypes.data, m * P)
        col2im(dcols, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, gx, 0, P)


@njit(nogil=True, cache=True)
def _backward_weight_worker(a, dtype):
    """Take image blocks: partials[block, g] = gy_block[:, g] @ cols_block[g]^T. Where asked
    (_PER_IMAGE: at least BW_IMAGE_MIN_P output pixels), one GEMM per image accumulating into
    the block's partial, gy read in place; else one long GEMM over the block's nb*P output
    positions (cols stored (CKK, nb*P), gy copied to (K, nb*P))."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    x = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    gy = carray(voidptr(a[_Y]), (N, K, P), dtype)
    nblocks = (N + nb - 1) // nb
    partials = carray(voidptr(a[_PARTIALS]), (nblocks, K, R), dtype)
    buf = _wide_slot(a, dtype, x.itemsize)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        blk = fetch_add(a, _NEXT_BLOCK)
        if blk >= nblocks:
            return
        n0 = blk * nb
        m = min(nb, N - n0)
        if a[_PER_IMAGE] != 0:
            c3 = buf[:m * CKK * P].reshape(m * CKK, P)
            im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, c3, CKK, 0)
            for i in range(m):
                for g in range(G):
                    cblas_gemm(a[_GEMM], _NO_TRANS, _TRANS, Kg, R, P, one,
                               gy[n0 + i, g * Kg:].ctypes.data, P,
                               c3[i * CKK + g * R:].ctypes.data, P, one if i > 0 else zero,
                               partials[blk, g * Kg:].ctypes.data, R)
            continue
        c2, g2 = _wide(a, buf, m)
        im2col(x, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, c2, 0, P)
        nchw_to_kp(gy, n0, m, g2)
        for g in range(G):
            cblas_gemm(a[_GEMM], _NO_TRANS, _TRANS, Kg, R, m * P, one,
                       g2[g * Kg:].ctypes.data, m * P, c2[g * R:].ctypes.data, m * P, zero,
                       partials[blk, g * Kg:].ctypes.data, R)


@njit(inline="always")
def _rows_sizes(a):
    """(Hp, RW, CW) of the row-shift workers: rows of the vertically padded image, the GEMM depth
    Cg*KW of one tap row and group, and the unfolded rows C*KW of all groups."""
    return a[_OH] + (a[_KH] - 1) * a[_DH], a[_CG] * a[_KW], a[_C] * a[_KW]


@njit(inline="always")
def _rows_slot(a, dtype, itemsize):
    """This thread's (C*KW, Hp*OW) slot of the scratch."""
    Hp, RW, CW = _rows_sizes(a)
    slot = fetch_add(a, _NEXT_SLOT)
    return carray(voidptr(a[_SCRATCH] + slot * CW * Hp * a[_OW] * itemsize), (CW, Hp * a[_OW]),
                  dtype)


@njit(nogil=True, cache=True)
def _forward_rows_worker(a, dtype):
    """Row-shift forward (stride 1 along H): per image, unfold_rows, then for each group and
    tap row r, y[n, g] += W_r,g @ rows[g, window r] (KH GEMMs of depth Cg*KW; the first
    overwrites), then bias and ReLU on the block."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    Hp, RW, CW = _rows_sizes(a)
    x = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    wr = carray(voidptr(a[_WT]), (KH, K, RW), dtype)
    y = carray(voidptr(a[_Y]), (N, K, P), dtype)
    rows = _rows_slot(a, dtype, x.itemsize)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        n0 = fetch_add(a, _NEXT_BLOCK) * nb
        if n0 >= N:
            return
        m = min(nb, N - n0)
        for n in range(n0, n0 + m):
            unfold_rows(x, n, KW, sw, ph, pw, dw, Hp, OW, rows)
            for g in range(G):
                for r in range(KH):
                    cblas_gemm(a[_GEMM], _NO_TRANS, _NO_TRANS, Kg, P, RW, one,
                               wr[r, g * Kg:].ctypes.data, RW,
                               rows[g * RW, r * dh * OW:].ctypes.data, Hp * OW,
                               one if r > 0 else zero, y[n, g * Kg:].ctypes.data, P)
        if a[_B] != 0 or a[_RELU] != 0:
            has_bias = a[_B] != 0
            bias = carray(voidptr(a[_B] if has_bias else a[_WT]), (K if has_bias else 1,),
                          dtype)
            epilogue(y, bias, has_bias, a[_RELU] != 0, n0, m)


@njit(nogil=True, cache=True)
def _backward_weight_rows_worker(a, dtype):
    """Row-shift backward-weight: per image of a block, unfold_rows, then partials[block, r, g]
    += gy[n, g] @ rows[g, window r]^T (the block's first image overwrites); gy is read in
    place."""
    N, K, G, nb, P, Kg, R, CKK = _sizes(a)
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _conv_params(a)
    Hp, RW, CW = _rows_sizes(a)
    x = carray(voidptr(a[_X]), (N, a[_C], a[_H], a[_W]), dtype)
    gy = carray(voidptr(a[_Y]), (N, K, P), dtype)
    nblocks = (N + nb - 1) // nb
    partials = carray(voidptr(a[_PARTIALS]), (nblocks, KH, K, RW), dtype)
    rows = _rows_slot(a, dtype, x.itemsize)
    one, zero = dtype.type(1), dtype.type(0)
    while True:
        blk = fetch_add(a, _NEXT_BLOCK)
        if blk >= nblocks:
            return
        n0 = blk * nb
        for n in range(n0, min(N, n0 + nb)):
            unfold_rows(x, n, KW, sw, ph, pw, dw, Hp, OW, rows)
            for g in range(G):
                for r in range(KH):
                    cblas_gemm(a[_GEMM], _NO_TRANS, _TRANS, Kg, RW, P, one,
                               gy[n, g * Kg:].ctypes.data, P,
                               rows[g * RW, r * dh * OW:].ctypes.data, Hp * OW,
                               one if n > n0 else zero, partials[blk, r, g * Kg:].ctypes.data, RW)


@njit(parallel=True, cache=True)
def _forward_team(a, dtype, T):
    for _ in prange(T):
        _forward_worker(a, dtype)


@njit(parallel=True, cache=True)
def _backward_input_team(a, dtype, T):
    for _ in prange(T):
        _backward_input_worker(a, dtype)


@njit(parallel=True, cache=True)
def _backward_weight_team(a, dtype, T):
    for _ in prange(T):
        _backward_weight_worker(a, dtype)


@njit(parallel=True, cache=True)
def _forward_multi_team(a, dtype, T):
    for _ in prange(T):
        _forward_multi_worker(a, dtype)


@njit(parallel=True, cache=True)
def _backward_input_multi_team(a, dtype, T):
    for _ in prange(T):
        _backward_input_multi_worker(a, dtype)


@njit(parallel=True, cache=True)
def _forward_rows_team(a, dtype, T):
    for _ in prange(T):
        _forward_rows_worker(a, dtype)


@njit(parallel=True, cache=True)
def _backward_weight_rows_team(a, dtype, T):
    for _ in prange(T):
        _backward_weight_rows_worker(a, dtype)


_PASSES = {"forward": (_forward_worker, _forward_team),
           "backward_input": (_backward_input_worker, _backward_input_team),
           "backward_weight": (_backward_weight_worker, _backward_weight_team),
           "forward_multi": (_forward_multi_worker, _forward_multi_team),
           "backward_input_multi": (_backward_input_multi_worker, _backward_input_multi_team),
           "forward_rows": (_forward_rows_worker, _forward_rows_team),
           "backward_weight_rows": (_backward_weight_rows_worker, _backward_weight_rows_team)}


def _run(pass_name, args, dtype, T):
    """T workers, each taking image blocks until none is left: a parallel loop over the workers
    (on the OpenMP pool where ``convkit.runtime.openmp`` installed it), or the worker alone for
    T == 1."""
    worker, team = _PASSES[pass_name]
    dtype = np.dtype(dtype)
    with blas.single_threaded():
        if T > 1:
            parallel_call(team, args, dtype, T)
        else:
            worker(args, dtype)


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


# GEMM depth (Cg*KW) from which a conv that is stride 1 along H runs its forward and weight
# gradient on the row-shift workers: KH times less unfolded, KH GEMMs of depth Cg*KW instead of
# one of Cg*KH*KW, and the weight gradient reads grad_output in place. Measured here, one thread,
# row-shift / im2col time (medians of 20-25 alternated rounds): SimpleCNN conv2 (depth 96)
# forward 0.93-0.95, weight gradient 0.87-0.91; ResNet 3x3 C64 56^2 (depth 192) 0.81, 0.85.
# Shallower GEMMs lose more than the unfold saves (C=1 conv1: depth 3). Backward-input stays
# GEMM + col2im: its row-shift adjoint (KH GEMMs accumulating into a strided (Cg*KW, Hp*OW)
# block, then a KW-tap fold) measured 1.04-1.09x col2im's time on conv2
ROWS_MIN_DEPTH = 32


def uses_rows(weight_shape, stride) -> bool:
    """Whether the row-shift workers run this filter shape and stride."""
    K, Cg, KH, KW = weight_shape
    return stride[0] == 1 and KH > 1 and Cg * KW >= ROWS_MIN_DEPTH


def _row_filter(w):
    """(K, Cg, KH, KW) -> (KH, K, Cg*KW), contiguous: tap row r's (K, Cg*KW) GEMM operand."""
    K, Cg, KH, KW = w.shape
    return np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(KH, K, Cg * KW)


def _rows_scratch(T, C, w_shape, out_hw, dilation, dtype):
    """T slots of (C*KW, Hp*OW) for the row-shift workers."""
    KH, KW = w_shape[2], w_shape[3]
    Hp = out_hw[0] + (KH - 1) * dilation[0]
    return memory.scratch("im2col", T * C * KW * Hp * out_hw[1], dtype)


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y: (N, K, OH, OW); with ``relu`` the ReLU is applied as each block of y is stored."""
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    P = out_hw[0] * out_hw[1]
    x, b = np.ascontiguousarray(x), None if b is None else np.ascontiguousarray(b)
    y = empty((N, K) + tuple(out_hw), x.dtype)
    multi = P < MULTI_MAX_P
    nb = multi_images(N, P) if multi else block_images(N, C * KH * KW, P, x.itemsize)
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * Cg * KH * KW * P))
    rows = not multi and uses_rows(w.shape, stride)
    if rows:
        scratch = _rows_scratch(T, C, w.shape, out_hw, dilation, x.dtype)
        wc = _row_filter(w)
    elif multi:
        scratch = memory.scratch("im2col", T * nb * (C * KH * KW + K) * P, x.dtype)
        wc = np.ascontiguousarray(w)
    else:
        scratch = memory.scratch("im2col", T * nb * C * KH * KW * P, x.dtype)
        wc = np.ascontiguousarray(w)
    args = _args(x.shape, w.shape, (stride, padding, dilation, groups), out_hw, nb, x.dtype,
                 x=x.ctypes.data, wt=wc.ctypes.data, b=0 if b is None else b.ctypes.data,
                 y=y.ctypes.data, scratch=scratch.ctypes.data, relu=int(relu))
    _run("forward_rows" if rows else "forward_multi" if multi else "forward", args, x.dtype, T)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W) by GEMM + col2im."""
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P = OH * OW
    gy = np.ascontiguousarray(gy)
    gx = empty(tuple(input_shape), gy.dtype)
    multi = P < MULTI_MAX_P
    nb = multi_images(N, P) if multi else block_images(N, C * KH * KW, P, gy.itemsize)
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * Cg * KH * KW * P))
    rows_per_image = C * KH * KW + (K if multi else 0)  # multi: + the gathered grad_output
    scratch = memory.scratch("im2col", T * nb * rows_per_image * P, gy.dtype)
    wc = np.ascontiguousarray(w)
    args = _args(input_shape, w.shape, (stride, padding, dilation, groups), (OH, OW), nb,
                 gy.dtype, x=gx.ctypes.data, wt=wc.ctypes.data, y=gy.ctypes.data,
                 scratch=scratch.ctypes.data)
    _run("backward_input_multi" if multi else "backward_input", args, gy.dtype, T)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    """grad_weight: (K, Cg, KH, KW), the block partials summed in block order."""
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, R = OH * OW, Cg * KH * KW
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy)
    nb = weight_block_images(N, C * KH * KW, P, K, R, x.itemsize)
    nblocks = -(-N // nb)
    T = min(nblocks, blas.workers(2 * N * K * R * P))
    rows = uses_rows(weight_shape, stride)
    if rows:
        scratch = _rows_scratch(T, C, weight_shape, (OH, OW), dilation, x.dtype)
    else:
        scratch = memory.scratch("im2col", T * nb * (C * KH * KW + K) * P, x.dtype)
    partials = memory.scratch("partials", nblocks * K * R, x.dtype)
    args = _args(x.shape, weight_shape, (stride, padding, dilation, groups), (OH, OW), nb,
                 x.dtype, x=x.ctypes.data, y=gy.ctypes.data, scratch=scratch.ctypes.data,
                 partials=partials.ctypes.data, per_image=int(P >= BW_IMAGE_MIN_P))
    _run("backward_weight_rows" if rows else "backward_weight", args, x.dtype, T)
    if rows:  # (blocks, KH, K, Cg*KW) -> (K, Cg, KH, KW)
        gw = partials.reshape(nblocks, KH, K, Cg, KW).sum(axis=0)
        return np.ascontiguousarray(gw.transpose(1, 2, 0, 3))
    return partials.reshape(nblocks, K, R).sum(axis=0).reshape(K, Cg, KH, KW)
