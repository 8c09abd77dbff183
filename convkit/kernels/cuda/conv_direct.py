"""Direct 2-D convolution (cross-correlation, as torch) on device arrays, no unfolded buffer.

x: (N, C, H, W), w: (K, C/G, KH, KW), y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg, r<KH, s<KW} w[k, c, r, s]
                             * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

Forward: a block owns a DIRECT_BH x DIRECT_BW tile of output pixels of one image and DIRECT_KB
output channels of one group. Per input channel it stages the input window under the tile (zeros
in the padding, so the FMA loop has no bounds tests) and the DIRECT_KB filters' taps in shared
memory; every thread then computes its pixel for DIRECT_KB channels held in registers, so each
staged input value feeds DIRECT_KB FMAs.

Backward-input is the same gather seen from the input side: a thread owns one input pixel for
DIRECT_KB input channels and sums the grad_output taps that read it, from a staged grad_output
window and the staged filter taps. Each output element is written by exactly one thread.

Filters or strides/dilations whose window does not fit the shared tiles run a plain kernel with
one thread per output element reading global memory.

Backward-weight is a reduction over (n, oh, ow): one block per (k, c) and per split of the
batch; threads accumulate fixed strided slices of the positions for up to WGRAD_TAPS taps in
registers, one fixed-order tree in shared memory adds the threads for all those taps at once,
and the splits are added in order by a second kernel. Bias gradient: one block per channel, a
fixed-order tree. No atomics anywhere: every result here is bitwise deterministic run to run.
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

DIRECT_BW = 16  # output columns per block; x runs along ow, the contiguous axis, for coalescing
DIRECT_BH = 8  # output rows per block: 128 threads, several blocks per SM
DIRECT_KB = 8  # channels per thread kept in registers: each staged input value feeds 8 FMAs
DIRECT_THREADS = DIRECT_BW * DIRECT_BH
DIRECT_MAX_TAPS = 49  # filter taps staged per channel: up to 7x7 (larger filters: plain kernel)
DIRECT_IN_H = 24  # staged window rows: (BH-1)*2 + 7 = 21 covers a 7x7 filter at stride 2
DIRECT_IN_W = 40  # staged window columns: (BW-1)*2 + 7 = 37, likewise
BIAS_THREADS = 256  # bias grad: threads per channel's fixed-order tree sum; a power of two
WGRAD_THREADS = 128  # weight grad: threads striding over (n, oh, ow) per (k, c); a power of two
WGRAD_TAPS = 16  # taps accumulated per pass in registers; the (16, 128) fp64 tree is 16 KiB
# Weight gradient: batch splits are added so that about this many blocks run (4 per SM of a
# 132-SM H100) when K*Cg alone is too few to fill the GPU.
WGRAD_TARGET_BLOCKS = 528


def _forward_window(KH, KW, sh, sw, dil_h, dil_w):
    return ((DIRECT_BH - 1) * sh + (KH - 1) * dil_h + 1,
            (DIRECT_BW - 1) * sw + (KW - 1) * dil_w + 1)


def _backward_window(KH, KW, sh, sw, dil_h, dil_w):
    # grad_output rows that reach DIRECT_BH input rows, +1 for the floor of the first one
    return ((DIRECT_BH - 1 + (KH - 1) * dil_h) // sh + 2,
            (DIRECT_BW - 1 + (KW - 1) * dil_w) // sw + 2)


def _fits(window, KH, KW):
    return window[0] <= DIRECT_IN_H and window[1] <= DIRECT_IN_W and KH * KW <= DIRECT_MAX_TAPS


@specialise
def _forward_tiled(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def forward(x, w, b, has_bias, sh, sw, ph, pw, dil_h, dil_w, G, n_kb, y):
        sX = cuda.shared.array((DIRECT_IN_H, DIRECT_IN_W), dt)
        sW = cuda.shared.array((DIRECT_KB, DIRECT_MAX_TAPS), dt)
        acc = cuda.local.array(DIRECT_KB, dt)
        H, W = x.shape[2], x.shape[3]
        K, Cg, KH, KW = w.shape
        OH, OW = y.shape[2], y.shape[3]
        Kg = K // G
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        bx, by, bz = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
        tid = ty * DIRECT_BW + tx
        ow, oh = bx * DIRECT_BW + tx, by * DIRECT_BH + ty
        kb, g, n = bz % n_kb, (bz // n_kb) % G, bz // (n_kb * G)
        k0 = g * Kg + kb * DIRECT_KB
        nk = min(DIRECT_KB, Kg - kb * DIRECT_KB)
        ih0, iw0 = by * DIRECT_BH * sh - ph, bx * DIRECT_BW * sw - pw
        win_h = (DIRECT_BH - 1) * sh + (KH - 1) * dil_h + 1
        win_w = (DIRECT_BW - 1) * sw + (KW - 1) * dil_w + 1
        taps = KH * KW
        for kk in range(DIRECT_KB):
            acc[kk] = 0
        for c in range(Cg):
            ci = g * Cg + c
            for e in range(tid, win_h * win_w, DIRECT_THREADS):
                ih, iw = ih0 + e // win_w, iw0 + e % win_w
                if 0 <= ih < H and 0 <= iw < W:
                    sX[e // win_w, e % win_w] = x[n, ci, ih, iw]
                else:
                    sX[e // win_w, e % win_w] = 0
            for e in range(tid, DIRECT_KB * taps, DIRECT_THREADS):
                kk, t = e // taps, e % taps
                if kk < nk:
                    sW[kk, t] = w[k0 + kk, c, t // KW, t % KW]
                else:
                    sW[kk, t] = 0
            cuda.syncthreads()  # channel c's input window and filter taps are staged
            for r in range(KH):
                for s in range(KW):
                    v = sX[ty * sh + r * dil_h, tx * sw + s * dil_w]
                    t = r * KW + s
                    for kk in range(DIRECT_KB):
                        acc[kk] += v * sW[kk, t]
            cuda.syncthreads()  # all threads are done with channel c before it is overwritten
        if oh < OH and ow < OW:
            for kk in range(DIRECT_KB):  # constant trip count keeps acc in registers
                if kk < nk:
                    y[n, k0 + kk, oh, ow] = acc[kk] + b[k0 + kk] if has_bias else acc[kk]

    return forward


@specialise
def _forward_plain(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def forward(x, w, b, has_bias, sh, sw, ph, pw, dil_h, dil_w, G, y):
        H, W = x.shape[2], x.shape[3]
        K, Cg, KH, KW = w.shape
        N, _, OH, OW = y.shape
        Kg = K // G
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, N * K * OH * OW, step):
            ow, oh = i % OW, (i // OW) % OH
            k, n = (i // (OW * OH)) % K, i // (OW * OH * K)
            c0 = (k // Kg) * Cg
            acc = dt(0)
            for c in range(Cg):
                for r in range(KH):
                    ih = oh * sh - ph + r * dil_h
                    for s in range(KW):
                        iw = ow * sw - pw + s * dil_w
                        if 0 <= ih < H and 0 <= iw < W:
                            acc += w[k, c, r, s] * x[n, c0 + c, ih, iw]
            y[n, k, oh, ow] = acc + b[k] if has_bias else acc

    return forward


@specialise
def _backward_input_tiled(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def backward_input(gy, w, sh, sw, ph, pw, dil_h, dil_w, G, n_cb, gx):
        sG = cuda.shared.array((DIRECT_IN_H, DIRECT_IN_W), dt)
        sW = cuda.shared.array((DIRECT_KB, DIRECT_MAX_TAPS), dt)
        acc = cuda.local.array(DIRECT_KB, dt)
        H, W = gx.shape[2], gx.shape[3]
        K, Cg, KH, KW = w.shape
        OH, OW = gy.shape[2], gy.shape[3]
        Kg = K // G
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        bx, by, bz = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
        tid = ty * DIRECT_BW + tx
        iw, ih = bx * DIRECT_BW + tx, by * DIRECT_BH + ty
        cb, g, n = bz % n_cb, (bz // n_cb) % G, bz // (n_cb * G)
        c0 = cb * DIRECT_KB
        nc = min(DIRECT_KB, Cg - c0)
        # first grad_output row/column whose window reaches this tile (floor division)
        oh0 = (by * DIRECT_BH + ph - (KH - 1) * dil_h) // sh
        ow0 = (bx * DIRECT_BW + pw - (KW - 1) * dil_w) // sw
        win_h = (DIRECT_BH - 1 + (KH - 1) * dil_h) // sh + 2
        win_w = (DIRECT_BW - 1 + (KW - 1) * dil_w) // sw + 2
        taps = KH * KW
        for cc in range(DIRECT_KB):
            acc[cc] = 0
        for k in range(g * Kg, (g + 1) * Kg):
            for e in range(tid, win_h * win_w, DIRECT_THREADS):
                oh, ow = oh0 + e // win_w, ow0 + e % win_w
                if 0 <= oh < OH and 0 <= ow < OW:
                    sG[e // win_w, e % win_w] = gy[n, k, oh, ow]
                else:
                    sG[e // win_w, e % win_w] = 0
            for e in range(tid, DIRECT_KB * taps, DIRECT_THREADS):
                cc, t = e // taps, e % taps
                if cc < nc:
                    sW[cc, t] = w[k, c0 + cc, t // KW, t % KW]
                else:
                    sW[cc, t] = 0
            cuda.syncthreads()  # channel k's grad_output window and filter taps are staged
            for r in range(KH):
                th = ih + ph - r * dil_h - oh0 * sh  # >= 0 by the choice of oh0
                if th % sh == 0:
                    for s in range(KW):
                        tw = iw + pw - s * dil_w - ow0 * sw
                        if tw % sw == 0:
                            v = sG[th // sh, tw // sw]
                            t = r * KW + s
                            for cc in range(DIRECT_KB):
                                acc[cc] += v * sW[cc, t]
            cuda.syncthreads()  # all threads are done with channel k before it is overwritten
        if ih < H and iw < W:
            for cc in range(DIRECT_KB):  # constant trip count keeps acc in registers
                if cc < nc:
                    gx[n, g * Cg + c0 + cc, ih, iw] = acc[cc]

    return backward_input


@specialise
def _backward_input_plain(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def backward_input(gy, w, sh, sw, ph, pw, dil_h, dil_w, G, gx):
        N, C, H, W = gx.shape
        K, Cg, KH, KW = w.shape
        OH, OW = gy.shape[2], gy.shape[3]
        Kg = K // G
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, N * C * H * W, step):
            iw, ih = i % W, (i // W) % H
            ci, n = (i // (W * H)) % C, i // (W * H * C)
            g, c = ci // Cg, ci % Cg
            acc = dt(0)
            for k in range(g * Kg, (g + 1) * Kg):
                for r in range(KH):
                    th = ih + ph - r * dil_h
                    if th < 0 or th % sh != 0 or th // sh >= OH:
                        continue
                    for s in range(KW):
                        tw = iw + pw - s * dil_w
                        if tw < 0 or tw % sw != 0 or tw // sw >= OW:
                            continue
                        acc += w[k, c, r, s] * gy[n, k, th // sh, tw // sw]
            gx[n, ci, ih, iw] = acc

    return backward_input


@specialise
def _backward_weight(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def backward_weight(x, gy, KH, KW, sh, sw, ph, pw, dil_h, dil_w, G, per, part):
        """part[split, k, c, t] = sum over the split's (n, oh, ow) of gy * x at tap t."""
        s_red = cuda.shared.array((WGRAD_TAPS, WGRAD_THREADS), dt)
        acc = cuda.local.array(WGRAD_TAPS, dt)
        N, C, H, W = x.shape
        K, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
        Cg, Kg = C // G, K // G
        k, c = cuda.blockIdx.x // Cg, cuda.blockIdx.x % Cg
        ci = (k // Kg) * Cg + c
        split = cuda.blockIdx.y
        n0 = split * per
        P, taps, tid = OH * OW, KH * KW, cuda.threadIdx.x
        npos = (min(N, n0 + per) - n0) * P
        for t0 in range(0, taps, WGRAD_TAPS):  # taps beyond the register block: another pass
            nt = min(WGRAD_TAPS, taps - t0)
            for t in range(WGRAD_TAPS):
                acc[t] = 0
            for q in range(tid, npos, WGRAD_THREADS):
                n, p = n0 + q // P, q % P
                oh, ow = p // OW, p % OW
                gv = gy[n, k, oh, ow]
                for t in range(WGRAD_TAPS):
                    if t < nt:
                        ih = oh * sh - ph + ((t0 + t) // KW) * dil_h
                        iw = ow * sw - pw + ((t0 + t) % KW) * dil_w
                        if 0 <= ih < H and 0 <= iw < W:
                            acc[t] += gv * x[n, ci, ih, iw]
            for t in range(WGRAD_TAPS):
                s_red[t, tid] = acc[t]
            cuda.syncthreads()  # every thread's partials of this pass are in s_red
            half = WGRAD_THREADS // 2
            while half > 0:
                if tid < half:
                    for t in range(WGRAD_TAPS):
                        s_red[t, tid] += s_red[t, tid + half]
                cuda.syncthreads()  # this tree level is complete for every tap
                half //= 2
            if tid < nt:
                part[((split * K + k) * Cg + c) * taps + t0 + tid] = s_red[tid, 0]
            cuda.syncthreads()  # the sums are read before the next pass overwrites s_red

    return backward_weight


@specialise
def _backward_bias(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def backward_bias(gy, gb):
        s_red = cuda.shared.array(BIAS_THREADS, dt)
        N, K, OH, OW = gy.shape
        k, tid, P = cuda.blockIdx.x, cuda.threadIdx.x, OH * OW
        acc = dt(0)
        for q in range(tid, N * P, BIAS_THREADS):
            p = q % P
            acc += gy[q // P, k, p // OW, p % OW]
        s_red[tid] = acc
        cuda.syncthreads()  # every thread's partial is in s_red
        half = BIAS_THREADS // 2
        while half > 0:
            if tid < half:
                s_red[tid] += s_red[tid + half]
            cuda.syncthreads()  # this level of the tree is complete
            half //= 2
        if tid == 0:
            gb[k] = s_red[0]

    return backward_bias


def conv2d_backward_bias(grad_output, *, stream=0):
    """grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow] (fixed-order tree sum)."""
    gy = as_device(grad_output)
    K = gy.shape[1]
    gb = empty((K,), gy.dtype, stream)
    if K:
        _backward_bias(gy.dtype.char)[K, BIAS_THREADS, stream](gy, gb)
    return gb


def forward(x, w, b, stride, padding, dilation, groups, out_hw, stream=0):
    N, K = x.shape[0], w.shape[0]
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = out_hw
    y = empty((N, K, OH, OW), x.dtype, stream)
    if y.size == 0:
        return y
    bias = b if b is not None else dummy(x.dtype)
    args = (x, w, bias, b is not None, *stride, *padding, *dilation, groups)
    if _fits(_forward_window(KH, KW, *stride, *dilation), KH, KW):
        n_kb = ceil_div(K // groups, DIRECT_KB)
        grid, block = launch_config((OW, OH, N * groups * n_kb), (DIRECT_BW, DIRECT_BH))
        _forward_tiled(x.dtype.char)[grid, block, stream](*args, n_kb, y)
    else:
        grid, block = launch_config((y.size,))
        _forward_plain(x.dtype.char)[grid, block, stream](*args, y)
    return y


def backward_input(gy, w, input_shape, stride, padding, dilation, groups, stream=0):
    N, C, H, W = input_shape
    KH, KW = w.shape[2], w.shape[3]
    gx = empty(input_shape, gy.dtype, stream)
    if gx.size == 0:
        return gx
    args = (gy, w, *stride, *padding, *dilation, groups)
    if _fits(_backward_window(KH, KW, *stride, *dilation), KH, KW):
        n_cb = ceil_div(C // groups, DIRECT_KB)
        grid, block = launch_config((W, H, N * groups * n_cb), (DIRECT_BW, DIRECT_BH))
        _backward_input_tiled(gy.dtype.char)[grid, block, stream](*args, n_cb, gx)
    else:
        grid, block = launch_config((gx.size,))
        _backward_input_plain(gy.dtype.char)[grid, block, stream](*args, gx)
    return gx


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups, stream=0):
    K, Cg, KH, KW = weight_shape
    N = x.shape[0]
    if N == 0 or K * Cg * KH * KW == 0:
        return zeros(weight_shape, x.dtype, stream)
    gw = empty(weight_shape, x.dtype, stream)
    S, per = split_count(N, K * Cg, WGRAD_TARGET_BLOCKS)
    part = gw if S == 1 else empty((S,) + tuple(weight_shape), x.dtype, stream)
    _backward_weight(x.dtype.char)[(K * Cg, S), WGRAD_THREADS, stream](
        x, gy, KH, KW, *stride, *padding, *dilation, groups, per, flat(part))
    if S > 1:
        sum_splits(flat(part), S, flat(gw), False, stream)
    return gw


__all__ = ["forward", "backward_input", "backward_weight", "conv2d_backward_bias",
           "DIRECT_BW", "DIRECT_BH", "DIRECT_KB", "DIRECT_MAX_TAPS", "DIRECT_IN_H", "DIRECT_IN_W"]
