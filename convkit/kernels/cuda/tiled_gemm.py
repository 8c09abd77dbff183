"""The tiled, register-blocked GEMM behind im2col convolution (numba.cuda, torch-free).

One launch computes a batch of products C[z] = sum_m A[g, n] @ B[g, n] (+ bias, ReLU): a block
owns a TM x TN tile of one C[z]; per step it stages a TK-deep slice of A (TM x TK) and B
(TK x TN) in shared memory, and each of its threads accumulates an RM x RN register tile.
Per k of the slice a thread reads RM values of A and RN of B as 16-byte shared loads and does
RM*RN FMAs (fp32: 4 LDS.128 feed 64 FFMA).

Index arithmetic is unsigned 32-bit: numba wraps every signed index that might be negative
(``i < 0 ? i + shape : i``), and promotes 32-bit integers to 64 bits; unsigned indices truncated
to 32 bits have no such test and let ptxas fuse the shared loads (issue 13's int32 prototype:
158 instructions per 64 FFMA; with uint32: 79). The launch code keeps every operand under
2**32 elements (``check_index_range``, ``conv_im2col._chunk``).

The next slice is read from global memory into registers while the current one is multiplied
(software pipelining: the loads are in flight during 8 steps of FMAs), then stored into the
other of two shared buffers, so one ``syncthreads`` per slice suffices.
"""
from __future__ import annotations

from typing import List, NamedTuple

import numpy as np
from numba import cuda, uint32

from convkit.kernels.cuda._common import (
    as_device,
    ceil_div,
    dummy,
    empty,
    flat,
    numba_type,
    specialise,
    zeros,
)
from convkit.kernels.cuda._report import BOOL, INT, KernelSpec, array
from convkit.kernels.cuda.epilogue import relu_value


class GemmTile(NamedTuple):
    """Block tile TM x TN, reduction slice TK, VEC consecutive rows (columns) per shared load."""

    TM: int
    TN: int
    TK: int
    VEC: int


# fp32: 128x128 tiles with 8x8 per thread (two runs of 4 rows and 4 columns, each one LDS.128)
# is the classic SGEMM shape: 64 FFMA per 4 shared loads, 113 registers on sm_90, 2 blocks of
# 256 threads per SM. fp64 halves the tile: 8x8 doubles alone would take 128 registers.
GEMM_TILES = {"f": GemmTile(128, 128, 8, 4), "d": GemmTile(64, 64, 8, 2)}
# Weight-gradient GEMMs have a small C (Kg x R); the batch is split so about this many blocks run
# (4 per SM of a 132-SM H100), and the splits are added afterwards in a fixed order.
GEMM_TARGET_BLOCKS = 528
GRID_Z_MAX = 65535  # CUDA's limit on gridDim.z, which counts (image, group) pairs
INDEX_LIMIT = 2 ** 32  # every operand of one launch has fewer elements: unsigned 32-bit indices


class GemmShape(NamedTuple):
    """Derived sizes of a GemmTile: threads (BX, BY), per-thread tile RM x RN, shared pitch."""

    BX: int
    BY: int
    RM: int
    RN: int
    PITCH: int
    LOADS: int


def gemm_shape(t: GemmTile) -> GemmShape:
    """The thread layout and shared-memory pitch a tile implies."""
    RM = RN = 2 * t.VEC  # two runs of VEC, half a tile apart: a warp reads distinct banks
    BX, BY = t.TN // RN, t.TM // RM
    # +VEC keeps every shared row VEC-aligned for wide loads and skews the k-major stores of a
    # k-contiguous operand across banks
    return GemmShape(BX, BY, RM, RN, max(t.TM, t.TN) + t.VEC, t.TM * t.TK // (BX * BY))


def gemm_threads(dtype_char: str) -> int:
    """Threads per block of the GEMM kernels for a dtype character ('f' or 'd')."""
    s = gemm_shape(GEMM_TILES[dtype_char])
    return s.BX * s.BY


@specialise
def _gemm(dtype_char, a_k_contiguous, b_k_contiguous):
    """The GEMM kernel for one dtype and operand layout: ``a_k_contiguous`` says A[i, k] has
    stride 1 along k (else along i), ``b_k_contiguous`` likewise for B[k, j] (else along j).
    The layout is a compile-time constant so the staging addresses are immediate offsets."""
    dt = numba_type(dtype_char)
    tile = GEMM_TILES[dtype_char]
    TM, TN, TK, VEC = tile
    BX, BY, RM, RN, PITCH, LOADS = gemm_shape(tile)
    THREADS = BX * BY
    HALF_M, HALF_N = TM // 2, TN // 2
    assert TM == TN and THREADS % TM == 0 and THREADS % TK == 0 and TK % 2 == 0
    assert LOADS * THREADS == TM * TK
    # A thread stages LOADS elements of each operand, THREADS//TK rows apart along a
    # k-contiguous operand (neighbouring threads read neighbouring k) or THREADS//TM k apart
    # along a row-contiguous one (neighbouring threads read neighbouring rows).
    A_ROWSTEP, A_KSTEP = (THREADS // TK, 0) if a_k_contiguous else (0, THREADS // TM)
    B_COLSTEP, B_KSTEP = (THREADS // TK, 0) if b_k_contiguous else (0, THREADS // TN)

    @cuda.jit(device=True, inline=True)
    def load_slice(X, off, step, r, rstep, R, k, kstep, KR, out):
        """out[q] = X[off + q*step], the element (r + q*rstep, k + q*kstep): 0 outside R x KR."""
        for q in range(LOADS):
            inside = r + uint32(q * rstep) < R and k + uint32(q * kstep) < KR
            out[q] = X[uint32(off + uint32(q) * step)] if inside else dt(0)

    @cuda.jit(device=True, inline=True)
    def store_slice(s, buf, row, rowstep, k, kstep, vals):
        for q in range(LOADS):
            s[buf, k + uint32(q * kstep), row + uint32(q * rowstep)] = vals[q]

    @cuda.jit(device=True, inline=True)
    def fma_step(sA, sB, buf, kk, tx, ty, ra, rb, acc):
        """acc += (RM values of A's column kk) x (RN values of B's row kk), outer product."""
        for v in range(VEC):  # VEC consecutive values: one wide shared load
            ra[v] = sA[buf, kk, ty * uint32(VEC) + uint32(v)]
            ra[VEC + v] = sA[buf, kk, uint32(HALF_M) + ty * uint32(VEC) + uint32(v)]
            rb[v] = sB[buf, kk, tx * uint32(VEC) + uint32(v)]
            rb[VEC + v] = sB[buf, kk, uint32(HALF_N) + tx * uint32(VEC) + uint32(v)]
        for ii in range(RM):
            for jj in range(RN):
                acc[ii, jj] += ra[ii] * rb[jj]

    @cuda.jit
    def gemm(A, B, C, bias, M, NC, KR, G, nrep, nmax, a_sg, a_sn, a_si, a_sk,
             b_sg, b_sn, b_sk, b_sj, c_sz, c_si, has_bias, relu):
        """C[z] = sum_{m < nrep} A[g, n] @ B[g, n] (+ bias, ReLU) for z = zz*G + g, n = zz*nrep + m.

        A[g, n][i, k] = A[g*a_sg + n*a_sn + i*a_si + k*a_sk] (M x KR), B likewise (KR x NC),
        C[z][i, j] = C[z*c_sz + i*c_si + j]; bias[g*M + i] is added when has_bias. Either
        a_sk is 1 when a_k_contiguous, else a_si (likewise B): the contiguous axis is read by
        neighbouring threads.
        """
        # two buffers per operand, [buffer, k, row]: the slice being multiplied and the next one
        sA = cuda.shared.array((2, TK, PITCH), dt)
        sB = cuda.shared.array((2, TK, PITCH), dt)
        acc = cuda.local.array((RM, RN), dt)
        ra = cuda.local.array(RM, dt)
        rb = cuda.local.array(RN, dt)
        va = cuda.local.array(LOADS, dt)  # the next slice, in flight in registers
        vb = cuda.local.array(LOADS, dt)
        tx, ty = uint32(cuda.threadIdx.x), uint32(cuda.threadIdx.y)
        tid = uint32(ty * uint32(BX) + tx)
        j0, i0 = uint32(cuda.blockIdx.x) * uint32(TN), uint32(cuda.blockIdx.y) * uint32(TM)
        z, Gu = uint32(cuda.blockIdx.z), uint32(G)
        g, zz = uint32(z % Gu), uint32(z // Gu)
        Mu, Nu, Ku = uint32(M), uint32(NC), uint32(KR)
        a_si_, a_sk_, b_sk_, b_sj_ = uint32(a_si), uint32(a_sk), uint32(b_sk), uint32(b_sj)
        if a_k_contiguous:
            a_row, a_k = tid // uint32(TK), tid % uint32(TK)
        else:
            a_row, a_k = tid % uint32(TM), tid // uint32(TM)
        if b_k_contiguous:
            b_col, b_k = tid // uint32(TK), tid % uint32(TK)
        else:
            b_col, b_k = tid % uint32(TN), tid // uint32(TN)
        a_step = uint32(uint32(A_ROWSTEP) * a_si_ + uint32(A_KSTEP) * a_sk_)  # slot to slot
        b_step = uint32(uint32(B_COLSTEP) * b_sj_ + uint32(B_KSTEP) * b_sk_)
        for ii in range(RM):
            for jj in range(RN):
                acc[ii, jj] = 0
        n_kt = uint32((Ku + uint32(TK - 1)) // uint32(TK))
        for m in range(uint32(nrep)):
            n = uint32(zz * uint32(nrep) + m)
            if n >= uint32(nmax):  # uniform over the block, so no thread skips a syncthreads alone
                break
            a_off = uint32(g * uint32(a_sg) + n * uint32(a_sn) + (i0 + a_row) * a_si_ + a_k * a_sk_)
            b_off = uint32(g * uint32(b_sg) + n * uint32(b_sn) + (j0 + b_col) * b_sj_ + b_k * b_sk_)
            load_slice(A, a_off, a_step, i0 + a_row, A_ROWSTEP, Mu, a_k, A_KSTEP, Ku, va)
            load_slice(B, b_off, b_step, j0 + b_col, B_COLSTEP, Nu, b_k, B_KSTEP, Ku, vb)
            store_slice(sA, uint32(0), a_row, A_ROWSTEP, a_k, A_KSTEP, va)
            store_slice(sB, uint32(0), b_col, B_COLSTEP, b_k, B_KSTEP, vb)
            cuda.syncthreads()  # slice 0 is staged in buffer 0
            for kt in range(n_kt):
                cur = uint32(kt & uint32(1))
                more = kt + uint32(1) < n_kt
                if more:  # read slice kt+1 into registers: the loads fly during the FMAs
                    k1 = uint32((kt + uint32(1)) * uint32(TK))
                    a_off = uint32(a_off + uint32(TK) * a_sk_)
                    b_off = uint32(b_off + uint32(TK) * b_sk_)
                    load_slice(A, a_off, a_step, i0 + a_row, A_ROWSTEP, Mu, k1 + a_k, A_KSTEP,
                               Ku, va)
                    load_slice(B, b_off, b_step, j0 + b_col, B_COLSTEP, Nu, k1 + b_k, B_KSTEP,
                               Ku, vb)
                # two k per iteration: the second one's shared loads overlap the first's FMAs
                # (a loop of TK steps is not unrolled by the compiler)
                for kk in range(0, TK, 2):
                    fma_step(sA, sB, cur, uint32(kk), tx, ty, ra, rb, acc)
                    fma_step(sA, sB, cur, uint32(kk + 1), tx, ty, ra, rb, acc)
                if more:
                    store_slice(sA, cur ^ uint32(1), a_row, A_ROWSTEP, a_k, A_KSTEP, va)
                    store_slice(sB, cur ^ uint32(1), b_col, B_COLSTEP, b_k, B_KSTEP, vb)
                # slice kt+1 is staged, and every thread is done reading buffer cur, which
                # slice kt+2 overwrites next
                cuda.syncthreads()
        c0 = uint32(z * uint32(c_sz))
        zero = dt(0)
        for ii in range(RM):
            i = uint32(i0 + ty * uint32(VEC) + uint32((ii // VEC) * HALF_M + ii % VEC))
            # adding -0.0 changes no value, -0.0 included: no branch per element without a bias
            bi = bias[g * Mu + i] if has_bias and i < Mu else -zero
            for jj in range(RN):
                j = uint32(j0 + tx * uint32(VEC) + uint32((jj // VEC) * HALF_N + jj % VEC))
                if i < Mu and j < Nu:
                    v = acc[ii, jj] + bi
                    C[uint32(c0 + i * uint32(c_si) + j)] = relu_value(v, zero) if relu else v

    return gemm


def launch_gemm(A, B, C, M, NC, KR, Z, G=1, nrep=1, nmax=1, a=(0, 0, 0, 1), b=(0, 0, 0, 1),
                c=(0, 0), bias=None, relu=False, stream=0):
    """One batched GEMM launch on flat device arrays; a = (a_sg, a_sn, a_si, a_sk), b = (b_sg,
    b_sn, b_sk, b_sj), c = (c_sz, c_si). Every operand must have fewer than INDEX_LIMIT
    elements."""
    tile = GEMM_TILES[C.dtype.char]
    s = gemm_shape(tile)
    grid = (ceil_div(NC, tile.TN), ceil_div(M, tile.TM), Z)
    gemm_kernel(C.dtype.char, a, b)[grid, (s.BX, s.BY), stream](
        A, B, C, bias if bias is not None else dummy(C.dtype), M, NC, KR, G, nrep, nmax,
        *a, *b, *c, bias is not None, relu)


def check_index_range(*arrays):
    """ValueError unless every array is indexable with unsigned 32-bit offsets."""
    for a in arrays:
        if a is not None and a.size >= INDEX_LIMIT:
            raise ValueError(f"an operand of {a.size} elements is too large for the CUDA GEMM "
                             f"(fewer than {INDEX_LIMIT} per launch)")


def gemm(a, b, out=None, *, stream=0):
    """out = a @ b for C-contiguous 2-D device arrays (M, K) and (K, N): the conv GEMM alone.

    Asynchronous on ``stream``, like every kernel here; exposed for benchmarks and tests.
    """
    a, b = as_device(a), as_device(b)
    M, KR = a.shape
    NC = b.shape[1]
    out = empty((M, NC), a.dtype, stream) if out is None else as_device(out)
    check_index_range(a, b, out)
    if out.size:
        if KR == 0:
            return zeros((M, NC), a.dtype, stream)
        launch_gemm(flat(a), flat(b), flat(out), M, NC, KR, 1, a=(0, 0, KR, 1),
                    b=(0, 0, NC, 1), c=(0, NC), stream=stream)
    return out


def gemm_argtypes(dtype) -> tuple:
    """The numba types ``launch_gemm`` passes: 4 flat arrays, 16 Python ints, 2 bools."""
    return (array(dtype),) * 4 + (INT,) * 16 + (BOOL,) * 2


# the operand layouts the launch code uses: (name, a_k_contiguous, b_k_contiguous)
GEMM_LAYOUTS = (("gemm_nn", True, False),  # forward W @ cols, and gemm(): both row-major
                ("gemm_tn", False, False),  # im2col backward-input W^T @ dY
                ("gemm_nt", True, True))  # im2col backward-weight dY @ cols^T


def gemm_kernel(dtype_char: str, a, b):
    """The kernel ``launch_gemm`` runs for operands with strides a and b: one of GEMM_LAYOUTS
    (any layout computes the right product; it only decides which reads are coalesced)."""
    a_k = a[3] == 1
    b_k = a_k and b[2] == 1 and b[3] != 1  # B k-contiguous only beside a k-contiguous A
    return _gemm(dtype_char, a_k, b_k)


def kernel_specs(dtype) -> List[KernelSpec]:
    """Every GEMM kernel launch_gemm runs, at the numba types it passes."""
    dc = np.dtype(dtype).char
    return [KernelSpec(name, _gemm(dc, ak, bk), gemm_argtypes(dtype), gemm_threads(dc), 0,
                       "compute") for name, ak, bk in GEMM_LAYOUTS]


__all__ = ["gemm", "launch_gemm", "check_index_range", "kernel_specs", "GEMM_TILES",
           "GEMM_LAYOUTS", "GEMM_TARGET_BLOCKS", "GRID_Z_MAX", "INDEX_LIMIT", "gemm_shape",
           "gemm_threads", "gemm_argtypes"]
