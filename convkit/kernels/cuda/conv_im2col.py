"""im2col / col2im 2-D convolution on device arrays with a hand-written tiled GEMM.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); G groups, Cg = C/G, Kg = K/G,
R = Cg*KH*KW, P = OH*OW. For a chunk of images the unfolded array is

    cols[n, c*KH*KW + r*KW + s, oh*OW + ow] = x[n, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

(0 outside the input), so group g of image n is the (R, P) matrix cols_ng and, with
Wg = w[g*Kg:(g+1)*Kg].reshape(Kg, R):

    forward          Y_ng   = Wg @ cols_ng (+ bias)        one GEMM batch entry per (n, g)
    backward-input   dcol_ng = Wg^T @ dY_ng, then col2im   one GEMM batch entry per (n, g)
    backward-weight  dWg = sum_n dY_ng @ cols_ng^T          one entry per (batch split, g)

Every GEMM is one launch of the tiled GEMM of tiled_gemm.py (128x128 block tiles, 8x8 per
thread in fp32). Operands are addressed through strides, so transposes and the NCHW layouts
need no copies; the forward GEMM adds the bias and applies ReLU (``relu=True``) as it stores.

col2im is a gather: one thread per input pixel adds, in a fixed (r, s) order, every unfolded
entry that was read from it. The weight gradient reduces over the batch inside each GEMM block
(images of a split in order) and adds the splits (and chunks) in order in a second kernel. No
atomics: all results are bitwise deterministic from run to run. Index arithmetic is unsigned
32-bit (every chunk's operands stay under tiled_gemm.INDEX_LIMIT elements).
"""
from typing import List

import numpy as np
from numba import cuda, int64, uint32

from convkit.kernels.cuda import _common
from convkit.kernels.cuda._common import (
    ceil_div,
    empty,
    flat,
    launch_config,
    numba_type,
    specialise,
    split_count,
    sum_splits,
    zeros,
)
from convkit.kernels.cuda._report import INT, KernelSpec, array
from convkit.kernels.cuda.tiled_gemm import (
    GEMM_TARGET_BLOCKS,
    GEMM_TILES,
    GRID_Z_MAX,
    INDEX_LIMIT,
    gemm,
    launch_gemm,
)

# Upper bound on the unfolded buffer: batch chunks are sized to fit it (at least one image).
IM2COL_CHUNK_BYTES = 256 * 1024 * 1024


@cuda.jit
def _im2col(x, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, cols):
    """cols (flat (nb, C*KH*KW, OH*OW)) from the chunk x: (nb, C, H, W)."""
    nb, C, H, W = x.shape
    P, R = uint32(OH * OW), uint32(C * KH * KW)
    KWu, KHWu, OWu = uint32(KW), uint32(KH * KW), uint32(OW)
    start, step = uint32(cuda.grid(1)), uint32(cuda.gridsize(1))
    for e in range(start, uint32(nb * R * P), step):
        e = uint32(e)  # numba's range() over unsigned values counts in 64 bits
        p, row = uint32(e % P), uint32(e // P)
        c, rs = uint32(row % R // KHWu), uint32(row % KHWu)
        n = uint32(row // R)
        ih = int64(p // OWu) * sh - ph + int64(rs // KWu) * dil_h
        iw = int64(p % OWu) * sw - pw + int64(rs % KWu) * dil_w
        if 0 <= ih < H and 0 <= iw < W:
            cols[e] = x[n, c, uint32(ih), uint32(iw)]
        else:
            cols[e] = 0


@specialise
def _col2im(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def col2im(cols, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, gx):
        """gx: (nb, C, H, W) gathers every entry of cols (flat (nb, C*KH*KW, P)) read from it."""
        nb, C, H, W = gx.shape
        P, R = uint32(OH * OW), uint32(C * KH * KW)
        shu, swu, OHu, OWu = uint32(sh), uint32(sw), uint32(OH), uint32(OW)
        Wu, Hu, Cu = uint32(W), uint32(H), uint32(C)
        start, step = uint32(cuda.grid(1)), uint32(cuda.gridsize(1))
        for e in range(start, uint32(nb * C * H * W), step):
            e = uint32(e)  # numba's range() over unsigned values counts in 64 bits
            iw, ih = uint32(e % Wu), uint32(e // Wu % Hu)
            plane = uint32(e // uint32(Wu * Hu))
            c, n = uint32(plane % Cu), uint32(plane // Cu)
            acc = dt(0)
            for r in range(KH):
                th = int64(ih) + ph - r * dil_h  # output row * sh, if a whole multiple
                if th < 0 or uint32(th) % shu != 0 or uint32(th) // shu >= OHu:
                    continue
                row = uint32((n * R + (c * uint32(KH) + uint32(r)) * uint32(KW)) * P
                             + uint32(th) // shu * OWu)
                for s in range(KW):
                    tw = int64(iw) + pw - s * dil_w
                    if tw < 0 or uint32(tw) % swu != 0 or uint32(tw) // swu >= OWu:
                        continue
                    acc += cols[uint32(row + uint32(s) * P + uint32(tw) // swu)]
            gx[n, c, ih, iw] = acc

    return col2im


def _chunk(N, C, K, KH, KW, P, itemsize, G):
    """Images per chunk: the (nb, C*KH*KW, P) buffer fits IM2COL_CHUNK_BYTES, nb*G fits grid z,
    and every operand of the chunk (unfolded buffer, output) has fewer than INDEX_LIMIT
    elements."""
    per_image = max(1, C * KH * KW * P, K * P)
    if per_image >= INDEX_LIMIT:
        raise ValueError(f"one image's unfolded input or output has {per_image} elements: "
                         f"too many for the CUDA im2col kernels (fewer than {INDEX_LIMIT})")
    by_bytes = IM2COL_CHUNK_BYTES // max(1, C * KH * KW * P * itemsize)
    return max(1, min(N, by_bytes, (INDEX_LIMIT - 1) // per_image, GRID_Z_MAX // G))


def _unfold(x, KH, KW, stride, padding, dilation, OH, OW, cols, stream):
    grid, block = launch_config((cols.size,))
    _im2col[grid, block, stream](x, KH, KW, *stride, *padding, *dilation, OH, OW, cols)


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False, stream=0):
    N, C = x.shape[:2]
    K, Cg, KH, KW = w.shape
    OH, OW = out_hw
    P, G, Kg, R = OH * OW, groups, K // groups, Cg * KH * KW
    y = empty((N, K, OH, OW), x.dtype, stream)
    if y.size == 0:
        return y
    nb_max = _chunk(N, C, K, KH, KW, P, x.dtype.itemsize, G)
    cols = empty((nb_max * C * KH * KW * P,), x.dtype, stream)
    wf = flat(w)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_ = cols[:nb * C * KH * KW * P]
        _unfold(x[n0:n0 + nb], KH, KW, stride, padding, dilation, OH, OW, c_, stream)
        launch_gemm(wf, c_, flat(y[n0:n0 + nb]), Kg, P, R, nb * G, G=G, nmax=nb,
                    a=(Kg * R, 0, R, 1), b=(R * P, G * R * P, P, 1), c=(Kg * P, P),
                    bias=b, relu=relu, stream=stream)
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
    nb_max = _chunk(N, C, K, KH, KW, P, gy.dtype.itemsize, G)
    dcols = empty((nb_max * C * KH * KW * P,), gy.dtype, stream)
    col2im = _col2im(gy.dtype.char)
    wf = flat(w)
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        d_ = dcols[:nb * C * KH * KW * P]
        launch_gemm(wf, flat(gy[n0:n0 + nb]), d_, R, P, Kg, nb * G, G=G, nmax=nb,
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
    nb_max = _chunk(N, C, K, KH, KW, P, x.dtype.itemsize, G)
    cols = empty((nb_max * C * KH * KW * P,), x.dtype, stream)
    tile = GEMM_TILES[x.dtype.char]
    tiles = G * ceil_div(Kg, tile.TM) * ceil_div(R, tile.TN)
    S_max, _ = split_count(nb_max, tiles, GEMM_TARGET_BLOCKS)
    # one partial per split (and per chunk when there are several), added in order
    part = empty((S_max * K * R,), x.dtype, stream) if S_max > 1 or N > nb_max else None
    for n0 in range(0, N, nb_max):
        nb = min(nb_max, N - n0)
        c_ = cols[:nb * C * KH * KW * P]
        _unfold(x[n0:n0 + nb], KH, KW, stride, padding, dilation, OH, OW, c_, stream)
        S, per = split_count(nb, tiles, GEMM_TARGET_BLOCKS)
        out = flat(gw) if part is None else part[:S * K * R]
        launch_gemm(flat(gy[n0:n0 + nb]), c_, out, Kg, R, P, S * G, G=G, nrep=per, nmax=nb,
                    a=(Kg * P, K * P, P, 1), b=(R * P, G * R * P, 1, P), c=(Kg * R, R),
                    stream=stream)
        if part is not None:
            sum_splits(out, S, flat(gw), n0 > 0, stream)
    return gw


def kernel_specs(dtype) -> List[KernelSpec]:
    """Every kernel this module launches, at the numba types its launch code passes (its GEMMs
    are tiled_gemm's and listed there)."""
    a1, a4 = array(dtype, 1), array(dtype, 4)
    threads = _common.THREADS_1D  # launch_config's block, read at call time as it does
    return [KernelSpec("im2col", _im2col, (a4,) + (INT,) * 10 + (a1,), threads, 0, "memory"),
            KernelSpec("col2im", _col2im(np.dtype(dtype).char), (a1,) + (INT,) * 10 + (a4,),
                       threads, 0, "memory")]


__all__ = ["forward", "backward_input", "backward_weight", "gemm", "kernel_specs",
           "IM2COL_CHUNK_BYTES"]
