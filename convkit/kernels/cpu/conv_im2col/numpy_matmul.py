"""im2col pipeline 1: numpy.matmul GEMMs from a pool of Python threads.

Each of T workers (Python threads of ``convkit.runtime.blas``; numpy's BLAS releases the GIL and
runs single-threaded meanwhile) takes the next block of images from a shared iterator and runs
unfold -> one numpy.matmul per group (-> fold) on it while the block is hot in its core's cache.
Portable: it needs only numpy. Pipeline 2 (``cblas_workers``) does the same work in Numba
workers on the OpenMP pool and is used wherever numpy's BLAS exposes ``cblas_?gemm``.
Same signatures as ``convkit.kernels.cpu.conv_im2col``'s forward / backward_input /
backward_weight (backward_input here is always GEMM + col2im).
"""
import numpy as np

from convkit.kernels.cpu.conv_common import bias_operand
from convkit.kernels.cpu.conv_im2col.unfold import (
    block_images,
    col2im,
    epilogue,
    im2col,
    nchw_to_kp,
    weight_block_images,
)
from convkit.runtime import blas
from convkit.runtime.memory import empty


def _in_workers(N, nb, flops, work):
    """Run ``work(blocks)`` on each worker; the image blocks are handed out one at a time from a
    shared iterator (a list iterator's next() is atomic under the GIL), so a worker whose core is
    busy with another thread pool's spin-wait simply takes fewer blocks."""
    blocks = [(n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]
    T = min(len(blocks), blas.workers(flops)) if blocks else 1
    shared = iter(blocks)
    return blas.run([lambda: work(shared) for _ in range(T)])


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y[n, g] = Wg @ cols[n, g] per image and group, written straight into NCHW, then bias and
    ReLU (as asked) on the block."""
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    OH, OW = out_hw
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    y = empty((N, K, P), x.dtype)
    wmat = w.reshape(K, R)
    nb = block_images(N, C * KH * KW, P, x.itemsize)
    bias, has_bias = bias_operand(b, y.dtype)

    def work(blocks):
        buf = np.empty((nb, C * KH * KW, P), dtype=x.dtype)
        for n0, n1 in blocks:
            cols = buf[:n1 - n0]
            im2col(x, n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH, OW,
                   cols.reshape(-1, P), C * KH * KW, 0)
            for g in range(G):
                np.matmul(wmat[g * Kg:(g + 1) * Kg], cols[:, g * R:(g + 1) * R],
                          out=y[n0:n1, g * Kg:(g + 1) * Kg])
            if has_bias or relu:
                epilogue(y, bias, has_bias, relu, n0, n1 - n0)

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return y.reshape(N, K, OH, OW)


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """dcols[n, g] = Wg^T @ gy[n, g] per image and group, then col2im into grad_input."""
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    _, Cg, KH, KW = w.shape
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gx = empty(tuple(input_shape), gy.dtype)
    wmat = w.reshape(K, R)
    gy3 = gy.reshape(N, K, P)
    nb = block_images(N, C * KH * KW, P, gy.itemsize)

    def work(blocks):
        buf = np.empty((nb, C * KH * KW, P), dtype=gy.dtype)
        for n0, n1 in blocks:
            dcols = buf[:n1 - n0]
            for g in range(G):
                np.matmul(wmat[g * Kg:(g + 1) * Kg].T, gy3[n0:n1, g * Kg:(g + 1) * Kg],
                          out=dcols[:, g * R:(g + 1) * R])
            col2im(dcols.reshape(-1, P), n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH,
                   OW, gx, C * KH * KW, 0)

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    """partial[block, g] = gy_block[:, g] @ cols_block[g]^T, one long GEMM per block and group
    (cols stored (CKK, nb*P), gy copied to (K, nb*P)); the partials summed in block order."""
    N, C = x.shape[:2]
    K, Cg, KH, KW = weight_shape
    OH, OW = gy.shape[2], gy.shape[3]
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    gy3 = gy.reshape(N, K, P)
    nb = weight_block_images(N, C * KH * KW, P, K, R, x.itemsize)
    blocks = -(-N // nb) if N else 0
    partials = np.zeros((max(blocks, 1), K, R), dtype=x.dtype)

    def work(shared):
        """Reduce each block this worker takes into that block's own partial, so the result
        does not depend on which worker took which block."""
        cbuf = np.empty(nb * C * KH * KW * P, dtype=x.dtype)
        gbuf = np.empty(nb * K * P, dtype=x.dtype)
        for n0, n1 in shared:
            c_ = cbuf[:(n1 - n0) * C * KH * KW * P].reshape(C * KH * KW, (n1 - n0) * P)
            g_ = gbuf[:(n1 - n0) * K * P].reshape(K, (n1 - n0) * P)
            im2col(x, n0, n1 - n0, KH, KW, *stride, *padding, *dilation, OH, OW, c_, 0, P)
            nchw_to_kp(gy3, n0, n1 - n0, g_)
            gw = partials[n0 // nb]
            for g in range(G):
                np.matmul(g_[g * Kg:(g + 1) * Kg], c_[g * R:(g + 1) * R].T,
                          out=gw[g * Kg:(g + 1) * Kg])

    _in_workers(N, nb, 2 * N * K * R * P, work)
    return partials.sum(axis=0).reshape(K, Cg, KH, KW)
