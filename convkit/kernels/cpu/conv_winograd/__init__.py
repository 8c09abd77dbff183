"""Winograd 3x3 convolution F(m x m, 3 x 3), m = 2 or 4: fewer multiplies than the direct sum.

x: (N, C, H, W), w: (K, Cg, 3, 3), y: (N, K, OH, OW); stride 1, dilation 1, any zero padding,
G groups (the conv is checked above the kernels: ``convkit.engine.algorithm.check_winograd``).
Each m x m output tile is computed from its alpha x alpha input patch d (alpha = m+2) as (Lavin
& Gray 2016; ``convkit.kernels.reference.winograd_tile`` is the one-tile textbook version with
B, G, A written out)

    Y = A^T [ sum_c (G w[k, c] G^T) * (B^T d_c B) ] A          (* elementwise)

so the sum over channels is alpha^2 independent GEMMs, one per transform point t:
M[t] = U[t] @ V[t] with U (K, Cg) the transformed filters and V (Cg, tiles) the transformed
input. Multiplies per output pixel and channel pair: alpha^2/m^2 = 4 (F(2,3)), 2.25 (F(4,3))
instead of 9; the transforms add work linear in C + K. Float32 error grows with m (the
transforms' coefficients reach 8 and 1/24): docs/algorithms-winograd.md has the measured table.

    forward          filter transform, then per chunk of tile rows: input transform, GEMMs,
                     output transform with the bias/ReLU epilogue (``pipeline.forward_chunks``)
    backward_input   the forward on grad_output with the flipped, transposed filter
                     (``conv_common.transposed_filter``), padded by 2 - padding (cropped where
                     that is negative)
    backward_weight  per chunk: input and grad_output transforms, dU[t] += Yh[t] @ V[t]^T; then
                     dw = G^T dU G (``pipeline.weight_chunks``: cuDNN's WINOGRAD_NONFUSED form)

The GEMMs are numpy's OpenBLAS ``cblas_?gemm`` (as ``conv_im2col.cblas_workers``), so this
runs where ``available(dtype)``. Deterministic: the chunks depend on the shape only and every
sum has a fixed order (see ``pipeline``). Which m runs: ``tile_for``.
"""
import numpy as np

from convkit.kernels.cpu.conv_common import bias_operand, transposed_filter
from convkit.kernels.cpu.conv_im2col import cblas_workers
from convkit.kernels.cpu.conv_winograd import pipeline
from convkit.kernels.cpu.conv_winograd.transforms import TILES, constants
from convkit.runtime import blas, memory
from convkit.runtime.memory import empty

# bytes of one chunk's transforms (V and M, or V and Yh): a chunk's tiles go through three
# passes (transform, GEMMs, inverse transform), so they should stay in the cache in between
WORKSPACE_BYTES = 4 << 20
# forward work items (chunk x output-channel slice, ``pipeline.forward_chunks``) a conv has at
# least where its channels allow: each worker runs whole items with no barrier between a
# chunk's phases (each barrier cost a time slice on this busy machine: ResNet l3 forward at 2
# threads, 204 ms with a parallel loop per phase vs 18 ms on one thread). A function of the
# shape only, so the bits do not depend on the thread count
MIN_ITEMS = 4
# the weight gradient's partial sums (``weight_partials``): as many as workers on the machines
# convkit is measured on (2-16 cores: 4 keeps 2 workers balanced), within 64 MB (ResNet's
# 512 x 512 filter transformed by F(4,3) is 38 MB: it keeps one sum and the phase-parallel loop)
WEIGHT_PARTIALS = 4
PARTIALS_BYTES = 64 << 20
# tiles (GEMM columns) a chunk has at least, even past WORKSPACE_BYTES: OpenBLAS runs far below
# its peak on a few dozen columns (conv_im2col.cblas_workers.MULTI_MAX_P has the measurements)
MIN_TILES = 64


def available(dtype) -> bool:
    """Whether numpy's BLAS has the ``cblas_?gemm`` the GEMMs call."""
    return cblas_workers.available(dtype)


def tile_for(out_hw, dtype) -> int:
    """The output tile m: 4 (2.25 multiplies per pixel and channel pair instead of 4) on planes
    of at least 16 pixels a side, else 2. ResNet's 14^2 plane padded to 16^2 by 4 x 4 tiles
    (31 % more) measured 1.2-1.9x F(2,3)'s time; its 7^2 pads to 8^2 either way. F(4,3)'s
    float32 error is 9-28x im2col's on the 28^2 and 56^2 ResNet/VGG shapes
    (docs/algorithms-winograd.md), inside engine.algorithm.WINOGRAD_ERROR_BOUND."""
    return 4 if min(out_hw) >= 16 else 2


def chunk_rows(units, TW, alpha, channels, itemsize) -> int:
    """Tile rows per chunk: as many as fit WORKSPACE_BYTES (``channels`` = C + K rows of
    transforms per tile), at least MIN_TILES tiles, at most all ``units``."""
    per_row = alpha * alpha * channels * TW * itemsize
    return max(1, min(units, max(-(-MIN_TILES // TW), WORKSPACE_BYTES // per_row)))


def output_slices(nchunks, Kg) -> int:
    """Output-channel slices per chunk: enough for MIN_ITEMS items, at most Kg / 16 (a GEMM of
    fewer rows wastes OpenBLAS's register tiles)."""
    return max(1, min(-(-MIN_ITEMS // nchunks), Kg // 16))


def weight_partials(nchunks, partial_bytes) -> int:
    """Partial sums of the weight gradient's transformed filter (``pipeline.weight_workers``):
    up to WEIGHT_PARTIALS, one per chunk at most, within PARTIALS_BYTES; 1 runs
    ``pipeline.weight_chunks`` instead (all workers on each chunk, one sum in place). A
    function of the shape only: the summation order must not depend on the thread count."""
    return max(1, min(WEIGHT_PARTIALS, nchunks, PARTIALS_BYTES // max(1, partial_bytes)))


def _check(dtype, tile):
    """The conv itself was checked above the kernels (``engine.algorithm.check_winograd``)."""
    if tile not in TILES:
        raise ValueError(f"tile must be one of {TILES}, got {tile!r}")
    if not available(dtype):
        raise ValueError(f"algorithm='winograd' needs numpy's BLAS to expose an ILP64 "
                         f"cblas_?gemm for {np.dtype(dtype)}; use 'im2col' or 'direct'")


def _plan(N, C, K, out_hw, m, itemsize):
    """(rows per chunk, ntmax): the chunking of N images' tile rows."""
    TH, TW = -(-out_hw[0] // m), -(-out_hw[1] // m)
    rows = chunk_rows(N * TH, TW, m + 2, C + K, itemsize)
    return rows, rows * TW


def transformed_filter(w, m):
    """U: (alpha^2, K, Cg), the transformed filters."""
    K, Cg = w.shape[:2]
    U = memory.scratch("winograd_u", (m + 2) ** 2 * K * Cg, w.dtype).reshape((m + 2) ** 2, K, Cg)
    pipeline.filter_transform(w.size * (m + 2) * 4, np.ascontiguousarray(w), m,
                              constants(w.dtype), U)
    return U


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False, tile=None):
    """y: (N, K, OH, OW); with ``relu`` the ReLU is applied as each tile row is stored."""
    N, C = x.shape[:2]
    K = w.shape[0]
    m = tile_for(out_hw, x.dtype) if tile is None else tile
    _check(x.dtype, m)
    y = empty((N, K) + tuple(out_hw), x.dtype)
    if y.size == 0 or C == 0:
        if y.size:
            y[...] = 0 if b is None else b.reshape(1, K, 1, 1)
            if relu:
                np.maximum(y, 0, out=y)
        return y
    x = np.ascontiguousarray(x)
    U = transformed_filter(w, m)
    rows, ntmax = _plan(N, C, K, out_hw, m, x.itemsize)
    nchunks = -(-N * -(-out_hw[0] // m) // rows)
    S = output_slices(nchunks, K // groups)
    A2 = (m + 2) ** 2
    work = N * K * out_hw[0] * out_hw[1] * (C // groups)
    slots = min(nchunks * S, blas.workers(2 * work))
    V = memory.scratch("winograd_v", slots * A2 * C * ntmax, x.dtype).reshape(slots, A2, C, ntmax)
    M = memory.scratch("winograd_m", slots * A2 * K * ntmax, x.dtype).reshape(slots, A2, K, ntmax)
    bias, has_bias = bias_operand(None if b is None else np.ascontiguousarray(b), x.dtype)
    args = (x, U, bias, has_bias, bool(relu), y)
    with blas.single_threaded():
        pipeline.forward_chunks(work, *args, V, M, m, padding[0], padding[1], groups, rows, S,
                                blas.gemm_address(x.dtype.char), x.dtype, np.zeros(2, np.int64))
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups, tile=None):
    """grad_input: (N, C, H, W), the forward on gy with the flipped, transposed filter, padded by
    2 - padding (where that is negative, gy's border is cropped instead)."""
    _check(gy.dtype, 2 if tile is None else tile)
    pads = [2 - padding[0], 2 - padding[1]]
    crop_h, crop_w = max(0, -pads[0]), max(0, -pads[1])
    if crop_h or crop_w:
        gy = gy[:, :, crop_h:gy.shape[2] - crop_h, crop_w:gy.shape[3] - crop_w]
        pads = [max(0, pads[0]), max(0, pads[1])]
    return forward(gy, transposed_filter(w, groups), None, (1, 1), tuple(pads), (1, 1), groups,
                   tuple(input_shape[2:]), tile=tile)


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups, tile=None):
    """grad_weight: (K, Cg, 3, 3) = G^T [sum over tiles (A gy A^T) * (B^T x B)] G."""
    N, C = x.shape[:2]
    K, Cg = weight_shape[:2]
    out_hw = gy.shape[2:]
    m = tile_for(out_hw, x.dtype) if tile is None else tile
    _check(x.dtype, m)
    dw = np.zeros(tuple(weight_shape), x.dtype)
    if gy.size == 0 or x.size == 0:
        return dw
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy)
    rows, ntmax = _plan(N, C, K, out_hw, m, x.itemsize)
    nchunks = -(-N * -(-out_hw[0] // m) // rows)
    A2 = (m + 2) ** 2
    S = weight_partials(nchunks, A2 * K * Cg * x.itemsize)
    work = N * K * out_hw[0] * out_hw[1] * Cg
    slots = min(S, blas.workers(2 * work)) if S > 1 else 1
    V = memory.scratch("winograd_v", slots * A2 * C * ntmax, x.dtype).reshape(slots, A2, C, ntmax)
    Yh = memory.scratch("winograd_m", slots * A2 * K * ntmax, x.dtype).reshape(slots, A2, K, ntmax)
    dU = memory.scratch("winograd_u", S * A2 * K * Cg, x.dtype).reshape(S, A2, K, Cg)
    conf = (m, padding[0], padding[1], groups, rows, blas.gemm_address(x.dtype.char), x.dtype)
    with blas.single_threaded():
        if S > 1:
            pipeline.weight_workers(work, x, gy, dU, V, Yh, *conf, np.zeros(2, np.int64))
            for p in range(1, S):  # in partial order: the same bits for any number of workers
                dU[0] += dU[p]
        else:
            pipeline.weight_chunks(work, x, gy, dU[0], V[0], Yh[0], *conf)
    dU = dU[0]
    pipeline.grad_filter_transform(dw.size * (m + 2) * 4, dU, m, constants(x.dtype), dw)
    return dw


__all__ = ["forward", "backward_input", "backward_weight", "available",
           "tile_for", "transformed_filter", "TILES"]
