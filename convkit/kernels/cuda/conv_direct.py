"""Direct 2-D convolution (cross-correlation, as torch) on device arrays, no unfolded buffer.

x: (N, C, H, W), w: (K, C/G, KH, KW), y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg, r<KH, s<KW} w[k, c, r, s]
                             * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

Forward and backward-input run one kernel, ``_window_conv``: a block owns DIRECT_KB output
channels and a (DIRECT_BH*DIRECT_PB) x DIRECT_BW tile of output pixels; each thread keeps
DIRECT_KB channels x DIRECT_PB pixels in registers, so per filter tap 2 wide shared loads of
weights and DIRECT_PB loads of input feed 32 FMAs. Per input channel the block stages, zero
padded, the input window under its tile (one slab per register row, so a thread's DIRECT_PB
input values sit at constant offsets from one address) and the taps' weights. A window larger
than the shared slabs is staged one filter row (column) at a time.

Backward-input is the same kernel on grad_output, once per stride phase (a, b) in sh x sw:
the input pixels ih = a + sh*i see only the filter rows r with (a + ph - r*dil_h) % sh == 0,
which form a progression r0, r0 + rstep, ...; over i that is a stride-1 correlation of
grad_output with those rows of w, read in reverse so its dilation is positive. Each gradient
element is written by exactly one thread.

Backward-weight is a reduction over (n, oh, ow): a block owns WGRAD_KB output channels, one
input channel and up to WGRAD_TAPS taps, each thread keeps those sums (8 x 9 in fp32) in
registers for its positions (grad_output and the input window staged per tile of positions),
one fixed-order tree in shared memory adds the threads, and the batch splits are added in order
by a second kernel. Bias gradient: one block per channel, a fixed-order tree. No atomics
anywhere: every result here is bitwise deterministic run to run.

Index arithmetic is 32-bit, unsigned wherever an index cannot be negative (see tiled_gemm.py:
numba's wrap-around of signed indices costs as much as the FMAs): no 64-bit division in any
loop, and no division by a runtime value in the FMA loops.
"""
import math
from typing import List

import numpy as np
from numba import cuda, int32, uint32
from numba.core import config as numba_config

from convkit.kernels.cuda._common import (
    as_device,
    ceil_div,
    dummy,
    empty,
    flat,
    numba_type,
    specialise,
    split_count,
    sum_splits,
    zeros,
)
from convkit.kernels.cuda._report import BOOL, INT, KernelSpec, array
from convkit.kernels.cuda.epilogue import relu_value

DIRECT_BW = 16  # threads along output columns (x, the contiguous axis: coalesced)
DIRECT_BH = 4  # threads along output rows: 64 threads per block
DIRECT_PB = 4  # pixels per thread, DIRECT_BH rows apart: a 16 x 16 tile per block
DIRECT_KB = 8  # output channels per thread: one staged input value feeds 8 FMAs
DIRECT_THREADS = DIRECT_BW * DIRECT_BH
DIRECT_MAX_TAPS = 49  # taps staged per step: a 7x7 filter at once, larger ones row by row
DIRECT_IN_H = 16  # rows of one slab: (BH-1)*2 + 7 = 13 covers a 7x7 filter at stride 2
DIRECT_IN_W = 40  # columns of a slab: (BW-1)*2 + 7 = 37, likewise
DIRECT_SLAB = DIRECT_IN_H * DIRECT_IN_W  # numba sizes shared arrays by a plain constant
GRID_Z_MAX = 65535  # CUDA's limit on gridDim.z, which counts (image, group, channel block)
# fp32: 16 blocks of 64 threads per SM (50 % occupancy) caps ptxas at 64 registers, none
# spilled (96 when free: it keeps the epilogue's addresses at hand); fp64 is left free (128)
DIRECT_LAUNCH_BOUNDS = {"f": (DIRECT_THREADS, 16), "d": None}
BIAS_THREADS = 256  # bias grad: threads per channel's fixed-order tree sum; a power of two
WGRAD_BW = 16  # weight grad: threads along output columns
WGRAD_BH = 8  # threads along output rows: 128 threads, each summing its own positions
WGRAD_THREADS = WGRAD_BW * WGRAD_BH  # a power of two, for the tree
# output channels per thread, per dtype: 8 x 9 float64 sums would take 144 registers
WGRAD_KB = {"f": 8, "d": 4}
# fp32: 4 blocks of 128 threads per SM (25 % occupancy) caps ptxas at 128 registers (161 when
# free, for loads in flight; none spill at 128); fp64 is left free: at 128 it spills
WGRAD_LAUNCH_BOUNDS = {"f": (WGRAD_THREADS, 4), "d": None}
WGRAD_TAPS = 9  # taps per thread: a 3x3 filter in one pass, 72 sums in registers
WGRAD_CW = 32  # output columns per staged tile (2 per thread)
WGRAD_TILE = WGRAD_BH * WGRAD_CW  # positions per staged tile
WGRAD_IN_H = 24  # rows of the staged input window: (BH-1)*2 + 2*1 + 1 = 17 for a stride-2 7x7
WGRAD_IN_W = 72  # its columns: (CW-1)*2 + 7 = 69 for a stride-2 7x7
WGRAD_IN_HW = WGRAD_IN_H * WGRAD_IN_W  # numba sizes shared arrays by a plain constant
# Weight gradient: batch splits are added so that about this many blocks run (4 per SM of a
# 132-SM H100) when the (channel, tap) blocks alone are too few to fill the GPU.
WGRAD_TARGET_BLOCKS = 528


def _jit_bounded(launch_bounds):
    """cuda.jit with launch bounds (max threads, min blocks per SM), which cap the registers
    ptxas may use; numba's simulator takes none."""
    if launch_bounds is None or numba_config.ENABLE_CUDASIM:
        return cuda.jit
    return cuda.jit(launch_bounds=launch_bounds)


@specialise
def _window_conv(dtype_char):
    dt = numba_type(dtype_char)

    @_jit_bounded(DIRECT_LAUNCH_BOUNDS[dtype_char])
    def conv(x1, wf, bias, y1, C_in, H, W, C_out, H_out, W_out, G, Qg, Og, n_ob, TR, TS, TRC,
             TSC, st_h, st_w, off_h, off_w, dl_h, dl_w, ss_h, ss_w, rs_h, rs_w, w_sg, w_so, w_sq,
             w_sr, w_ss, w_base, a_h, a_w, os_h, os_w, n_i, n_j, has_bias, relu):
        """out[n, g*Og + o, a_h + os_h*i, a_w + os_w*j] = (bias +) sum over q < Qg, tr < TR,
        ts < TS of W(g, o, q, tr, ts) * inp[n, g*Qg + q, i*st_h + off_h + tr*dl_h,
        j*st_w + off_w + ts*dl_w] (0 outside inp), W(...) = wf[g*w_sg + o*w_so + q*w_sq +
        tr*w_sr + ts*w_ss + w_base], for i < n_i, j < n_j. inp: (N, C_in, H, W) and
        out: (N, C_out, H_out, W_out) come flat (x1, y1): offsets are computed in 32 bits.

        Taps are staged TRC x TSC at a time. ss_h is the staged rows per output row: st_h when
        a slab holds the window of all TRC (= TR) filter rows, 1 when it holds the rows of one
        filter row (TRC = 1); likewise ss_w. rs_h = st_h / ss_h: input rows per staged row.
        """
        sX = cuda.shared.array((DIRECT_PB, DIRECT_SLAB), dt)  # [slab, row*DIRECT_IN_W + col]
        sW = cuda.shared.array((DIRECT_MAX_TAPS, DIRECT_KB), dt)
        acc = cuda.local.array((DIRECT_PB, DIRECT_KB), dt)
        wv = cuda.local.array(DIRECT_KB, dt)
        tx, ty = uint32(cuda.threadIdx.x), uint32(cuda.threadIdx.y)
        bz, Gu, n_obu = uint32(cuda.blockIdx.z), uint32(G), uint32(n_ob)
        ob, g, n = uint32(bz % n_obu), uint32(bz // n_obu % Gu), uint32(bz // (n_obu * Gu))
        i0 = uint32(cuda.blockIdx.y) * uint32(DIRECT_BH * DIRECT_PB)
        j0 = uint32(cuda.blockIdx.x) * uint32(DIRECT_BW)
        o0 = ob * uint32(DIRECT_KB)
        nko = min(uint32(DIRECT_KB), uint32(Og) - o0)
        for v in range(DIRECT_PB):
            for kk in range(DIRECT_KB):
                acc[v, kk] = 0
        for q in range(uint32(Qg)):
            plane = uint32((n * uint32(C_in) + g * uint32(Qg) + q) * uint32(H * W))
            for tr0 in range(uint32(0), uint32(TR), uint32(TRC)):
                nr = uint32(min(uint32(TRC), uint32(TR) - tr0))
                for ts0 in range(uint32(0), uint32(TS), uint32(TSC)):
                    ns = uint32(min(uint32(TSC), uint32(TS) - ts0))
                    for trl in range(ty, nr, DIRECT_BH):
                        for tsl in range(tx, ns, DIRECT_BW):
                            w0 = int32(int32(g) * w_sg + int32(q) * w_sq + int32(tr0 + trl) * w_sr
                                       + int32(ts0 + tsl) * w_ss + w_base)  # bwi reads backwards
                            for kk in range(DIRECT_KB):
                                sW[uint32(trl * ns + tsl), kk] = (
                                    wf[uint32(w0 + int32(o0 + uint32(kk)) * w_so)]
                                    if uint32(kk) < nko else dt(0))
                    win_h = uint32((DIRECT_BH - 1) * ss_h + int32(nr - uint32(1)) * dl_h + 1)
                    win_w = uint32((DIRECT_BW - 1) * ss_w + int32(ns - uint32(1)) * dl_w + 1)
                    # the rows of every slab, DIRECT_BH at a time (one loop, not one per slab:
                    # that kept each slab's row bases in registers all along)
                    # signed input coordinates (negative in the padding) in 32 bits
                    iw0 = int32(int32(j0) * st_w + off_w + int32(ts0) * dl_w)
                    v, rr = uint32(0), ty
                    while v < uint32(DIRECT_PB):
                        ih = int32(int32(i0 + v * uint32(DIRECT_BH)) * st_h + off_h
                                   + int32(tr0) * dl_h + int32(rr) * rs_h)
                        for cc in range(tx, win_w, DIRECT_BW):
                            iw = int32(iw0 + int32(cc) * rs_w)
                            sX[v, uint32(rr * uint32(DIRECT_IN_W) + uint32(cc))] = (
                                x1[plane + uint32(ih * W + iw)]
                                if 0 <= ih < H and 0 <= iw < W else dt(0))
                        rr = uint32(rr + uint32(DIRECT_BH))
                        if rr >= win_h:  # win_h >= DIRECT_BH: one slab at most
                            rr, v = uint32(rr - uint32(win_h)), uint32(v + uint32(1))
                    cuda.syncthreads()  # the input slabs and weights of these taps are staged
                    # Taps in order; 32-bit counters kept by hand (numba's range() over
                    # unsigned values counts in 64 bits).
                    t = uint32(0)
                    xr = uint32(ty * uint32(ss_h) * uint32(DIRECT_IN_W))
                    for _ in range(nr):
                        xo = uint32(xr + tx * uint32(ss_w))
                        tsl = uint32(0)
                        while tsl < ns:
                            for kk in range(DIRECT_KB):
                                wv[kk] = sW[t, kk]
                            for v in range(DIRECT_PB):
                                xv = sX[v, xo]
                                for kk in range(DIRECT_KB):
                                    acc[v, kk] += xv * wv[kk]
                            tsl = uint32(tsl + uint32(1))
                            t = uint32(t + uint32(1))
                            xo = uint32(xo + uint32(dl_w))
                        xr = uint32(xr + uint32(dl_h) * uint32(DIRECT_IN_W))
                    cuda.syncthreads()  # every thread is done with them before the next ones
        zero = dt(0)
        j = j0 + tx
        for kk in range(DIRECT_KB):  # constant trip counts keep acc in registers
            oc = g * uint32(Og) + o0 + uint32(kk)
            # adding -0.0 changes no value, -0.0 included: no branch per pixel without a bias
            bk = bias[oc] if has_bias and uint32(kk) < nko else -zero
            plane_out = uint32((n * uint32(C_out) + oc) * uint32(H_out * W_out))
            for v in range(DIRECT_PB):
                i = i0 + uint32(v * DIRECT_BH) + ty
                if uint32(kk) < nko and i < uint32(n_i) and j < uint32(n_j):
                    val = acc[v, kk] + bk
                    y1[uint32(plane_out + (uint32(a_h) + uint32(os_h) * i) * uint32(W_out)
                              + uint32(a_w) + uint32(os_w) * j)] = (
                        relu_value(val, zero) if relu else val)

    return conv


def _window_modes(TR, TS, st, dl):
    """(TRC, TSC, ss_h, ss_w): taps staged per step and staged rows/columns per output row/column.

    A slab holds the window of all filter rows when it fits DIRECT_IN_H (and all TR*TS taps
    fit DIRECT_MAX_TAPS), else the rows of one filter row at a time; columns likewise."""
    rows_fit = (DIRECT_BH - 1) * st[0] + (TR - 1) * dl[0] + 1 <= DIRECT_IN_H
    cols_fit = (DIRECT_BW - 1) * st[1] + (TS - 1) * dl[1] + 1 <= DIRECT_IN_W
    TSC = TS if cols_fit and TS <= DIRECT_MAX_TAPS else 1
    TRC = TR if rows_fit and TR * TSC <= DIRECT_MAX_TAPS else 1
    return (max(TRC, 1), max(TSC, 1), st[0] if TRC == TR else 1, st[1] if TSC == TS else 1)


def _launch_window_conv(inp, wf, bias, out, G, Qg, Og, taps, st, off, dl, wstrides, phase,
                        n_ij, relu, stream):
    """One _window_conv launch per chunk of images that fits grid z."""
    TR, TS = taps
    if TR == 0 or TS == 0:
        Qg = 0  # no tap reaches these outputs: the kernel writes the bias (or 0)
    TRC, TSC, ss_h, ss_w = _window_modes(TR, TS, st, dl)
    n_ob = ceil_div(Og, DIRECT_KB)
    N = inp.shape[0]
    per = max(1, GRID_Z_MAX // (G * n_ob))
    kernel = _window_conv(out.dtype.char)
    grid_xy = (ceil_div(n_ij[1], DIRECT_BW), ceil_div(n_ij[0], DIRECT_BH * DIRECT_PB))
    b = bias if bias is not None else dummy(out.dtype)
    for n0 in range(0, N, per):
        nb = min(per, N - n0)
        kernel[grid_xy + (nb * G * n_ob,), (DIRECT_BW, DIRECT_BH), stream](
            flat(inp[n0:n0 + nb]), wf, b, flat(out[n0:n0 + nb]), *inp.shape[1:], *out.shape[1:],
            G, Qg, Og, n_ob, TR, TS, TRC, TSC,
            *st, *off, *dl, ss_h, ss_w, st[0] // ss_h, st[1] // ss_w, *wstrides, *phase, *n_ij,
            bias is not None, relu)


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False, stream=0):
    N, K = x.shape[0], w.shape[0]
    _, Cg, KH, KW = w.shape
    OH, OW = out_hw
    y = empty((N, K, OH, OW), x.dtype, stream)
    if y.size == 0:
        return y
    Kg, T = K // groups, KH * KW
    wstrides = (Kg * Cg * T, Cg * T, T, KW, 1, 0)  # W(g, o=k, q=c, r, s) = w[g*Kg + k, c, r, s]
    _launch_window_conv(x, flat(w), b, y, groups, Cg, Kg, (KH, KW), stride,
                        (-padding[0], -padding[1]), dilation, wstrides, (0, 0, 1, 1), (OH, OW),
                        relu, stream)
    return y


def _phase_taps(a, p, d, s, k):
    """Filter taps reaching input positions a + s*i (one axis): (count, first, step, offset D of
    the grad_output index per tap, base) with tap j = first + j*step read at grad_output index
    i + base - j*D."""
    step = s // math.gcd(s, d)
    first = next((r for r in range(min(k, step)) if (a + p - r * d) % s == 0), None)
    if first is None:
        return 0, 0, step, 0, 0
    count = len(range(first, k, step))
    return count, first, step, step * d // s, (a + p - first * d) // s


def backward_input(gy, w, input_shape, stride, padding, dilation, groups, stream=0):
    N, C, H, W = input_shape
    K, Cg, KH, KW = w.shape
    gx = empty(input_shape, gy.dtype, stream)
    if gx.size == 0:
        return gx
    Kg, T = K // groups, KH * KW
    sh, sw = stride
    for a in range(min(sh, H)):
        nr, r0, rstep, Dh, bh = _phase_taps(a, padding[0], dilation[0], sh, KH)
        for b_ in range(min(sw, W)):
            ns, s0, sstep, Dw, bw = _phase_taps(b_, padding[1], dilation[1], sw, KW)
            # taps in reverse (tr = nr-1-j) so the correlation's dilation D is positive
            r_last, s_last = r0 + (nr - 1) * rstep, s0 + (ns - 1) * sstep
            wstrides = (Kg * Cg * T, T, Cg * T, -rstep * KW, -sstep, r_last * KW + s_last)
            _launch_window_conv(gy, flat(w), None, gx, groups, Kg, Cg, (nr, ns), (1, 1),
                                (bh - (nr - 1) * Dh, bw - (ns - 1) * Dw), (Dh, Dw), wstrides,
                                (a, b_, sh, sw), (len(range(a, H, sh)), len(range(b_, W, sw))),
                                False, stream)
    return gx


@specialise
def _backward_weight(dtype_char):
    dt = numba_type(dtype_char)
    KB = WGRAD_KB[dtype_char]

    @_jit_bounded(WGRAD_LAUNCH_BOUNDS[dtype_char])
    def backward_weight(x1, gy1, part, N, C, H, W, K, OH, OW, G, n_ob, n_tg, TG, KH, KW, sh, sw,
                        ph, pw, dil_h, dil_w, ss_h, ss_w, rs_h, rs_w, dls_h, dls_w, per):
        """part[split, k, c, t] = sum over the split's (n, oh, ow) of gy[n, k, oh, ow] * x at
        tap t, for KB channels k, one input channel c and TG <= WGRAD_TAPS taps; x: (N, C, H, W)
        and gy: (N, K, OH, OW) come flat.

        A staged tile is WGRAD_BH x WGRAD_CW output positions: its grad_output (sG[p, k]) and
        the input window under it (sX) for this block's taps: with dls = dil, the rows r_lo..
        of the window of consecutive flat taps t0..t0+TG-1 and all KW columns (ss = stride,
        rs = 1); with dls = 0 (TG = 1) the input values of the one tap only (ss = 1, rs = stride).
        """
        sX = cuda.shared.array(WGRAD_IN_HW, dt)  # flat: each tap is an offset in it
        sG = cuda.shared.array((WGRAD_TILE, KB), dt)
        s_red = cuda.shared.array((WGRAD_TAPS, WGRAD_THREADS), dt)
        acc = cuda.local.array((KB, WGRAD_TAPS), dt)
        xoff = cuda.local.array(WGRAD_TAPS, uint32)
        gv = cuda.local.array(KB, dt)
        Cg, Kg, KWu = uint32(C // G), uint32(K // G), uint32(KW)
        Hi, Wi, OHu, OWu = int32(H), int32(W), uint32(OH), uint32(OW)
        tx, ty = uint32(cuda.threadIdx.x), uint32(cuda.threadIdx.y)
        tid = uint32(ty * uint32(WGRAD_BW) + tx)
        bx, by = uint32(cuda.blockIdx.x), uint32(cuda.blockIdx.y)
        c, tg = uint32(bx // uint32(n_tg)), uint32(bx % uint32(n_tg))
        ob, g = uint32(by % uint32(n_ob)), uint32(by // uint32(n_ob))
        k0 = uint32(g * Kg + ob * uint32(KB))
        nk = uint32(min(uint32(KB), Kg - ob * uint32(KB)))
        ci = uint32(g * Cg + c)
        t0 = uint32(tg * uint32(TG))
        nt = uint32(min(uint32(TG), uint32(KH * KW) - t0))
        one_tap = dls_h == 0  # the window of one tap alone: it starts at the tap's column
        r_lo = uint32(t0 // KWu)
        s_lo = uint32(t0 % KWu) if one_tap else uint32(0)
        for t in range(WGRAD_TAPS):  # each tap's offset in the window, computed once
            r, s = uint32((t0 + uint32(t)) // KWu), uint32((t0 + uint32(t)) % KWu)
            xoff[t] = uint32((r - r_lo) * uint32(dls_h) * uint32(WGRAD_IN_W)
                             + (s - s_lo) * uint32(dls_w)) if uint32(t) < nt else uint32(0)
        for kk in range(KB):
            for t in range(WGRAD_TAPS):
                acc[kk, t] = 0
        span = uint32(0) if one_tap else uint32((t0 + nt - uint32(1)) // KWu - r_lo)
        win_h = uint32((WGRAD_BH - 1) * ss_h + int32(span) * dls_h + 1)
        n0 = uint32(uint32(cuda.blockIdx.z) * uint32(per))
        for n in range(n0, min(uint32(N), n0 + uint32(per))):
            xplane = uint32((uint32(n) * uint32(C) + ci) * uint32(H * W))
            for oh0 in range(uint32(0), OHu, uint32(WGRAD_BH)):
                for ow0 in range(uint32(0), OWu, uint32(WGRAD_CW)):
                    cw = uint32(min(uint32(WGRAD_CW), OWu - ow0))
                    win_w = uint32((cw - uint32(1)) * uint32(ss_w)
                                   + (KWu - uint32(1) - s_lo) * uint32(dls_w) + uint32(1))
                    for p in range(tid, WGRAD_TILE, WGRAD_THREADS):
                        oh = uint32(oh0 + uint32(p) // uint32(WGRAD_CW))
                        ow = uint32(ow0 + uint32(p) % uint32(WGRAD_CW))
                        gpix = uint32(((uint32(n) * uint32(K) + k0) * OHu + oh) * OWu + ow)
                        inside = oh < OHu and ow < OWu
                        for kk in range(KB):
                            sG[p, kk] = (gy1[uint32(gpix + uint32(kk) * OHu * OWu)]
                                         if uint32(kk) < nk and inside else dt(0))
                    # signed input coordinates (negative in the padding) in 32 bits
                    ih0 = int32(int32(oh0) * sh - ph + int32(r_lo) * dil_h)
                    iw0 = int32(int32(ow0) * sw - pw + int32(s_lo) * dil_w)
                    for rr in range(ty, win_h, WGRAD_BH):
                        ih = int32(ih0 + int32(rr) * rs_h)
                        for cc in range(tx, win_w, WGRAD_BW):
                            iw = int32(iw0 + int32(cc) * rs_w)
                            sX[uint32(uint32(rr) * uint32(WGRAD_IN_W) + uint32(cc))] = (
                                x1[uint32(xplane + uint32(ih * Wi + iw))]
                                if 0 <= ih < Hi and 0 <= iw < Wi else dt(0))
                    cuda.syncthreads()  # this tile's grad_output and input window are staged
                    # this thread's positions (ty, u), u = tx, tx + WGRAD_BW, ... < cw
                    u = tx
                    base = uint32(ty * uint32(ss_h) * uint32(WGRAD_IN_W) + u * uint32(ss_w))
                    while u < cw:
                        for kk in range(KB):
                            gv[kk] = sG[ty * uint32(WGRAD_CW) + u, kk]
                        for t in range(WGRAD_TAPS):
                            xv = sX[base + xoff[t]]
                            for kk in range(KB):
                                acc[kk, t] += gv[kk] * xv
                        u = uint32(u + uint32(WGRAD_BW))
                        base = uint32(base + uint32(WGRAD_BW) * uint32(ss_w))
                    cuda.syncthreads()  # every thread is done with the tile
        # fixed-order tree over the threads, one channel at a time
        for kk in range(KB):
            for t in range(WGRAD_TAPS):
                s_red[t, tid] = acc[kk, t]
            cuda.syncthreads()  # every thread's sums for channel kk are in s_red
            half = uint32(WGRAD_THREADS // 2)
            while half > uint32(0):
                if tid < half:
                    for t in range(WGRAD_TAPS):
                        s_red[t, tid] += s_red[t, tid + half]
                cuda.syncthreads()  # this tree level is complete for every tap
                half = uint32(half // uint32(2))
            if tid < nt and uint32(kk) < nk:
                part[uint32(((uint32(cuda.blockIdx.z) * uint32(K) + k0 + uint32(kk)) * Cg + c)
                            * uint32(KH * KW) + t0 + tid)] = s_red[tid, 0]
            cuda.syncthreads()  # the sums are read before the next channel overwrites s_red

    return backward_weight


def _wgrad_mode(KH, KW, stride, dilation):
    """(taps per block, staged rows/columns per output row/column, tap offsets' dilation):
    WGRAD_TAPS consecutive taps share one staged window when it fits, else one tap per block
    has its input values staged alone."""
    T = KH * KW
    # filter rows spanned by a group of WGRAD_TAPS consecutive taps, at most
    span = max((min(t0 + WGRAD_TAPS, T) - 1) // KW - t0 // KW for t0 in range(0, T, WGRAD_TAPS))
    rows_fit = (WGRAD_BH - 1) * stride[0] + span * dilation[0] + 1 <= WGRAD_IN_H
    cols_fit = (WGRAD_CW - 1) * stride[1] + (KW - 1) * dilation[1] + 1 <= WGRAD_IN_W
    if rows_fit and cols_fit:
        return WGRAD_TAPS, tuple(stride), tuple(dilation)
    return 1, (1, 1), (0, 0)


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups, stream=0):
    K, Cg, KH, KW = weight_shape
    N = x.shape[0]
    if N == 0 or K * Cg * KH * KW == 0:
        return zeros(weight_shape, x.dtype, stream)
    gw = empty(weight_shape, x.dtype, stream)
    T, Kg = KH * KW, K // groups
    sh, sw = stride
    dh, dw = dilation
    TG, ss, dls = _wgrad_mode(KH, KW, stride, dilation)
    KB = WGRAD_KB[x.dtype.char]
    n_tg, n_ob = ceil_div(T, TG), ceil_div(Kg, KB)
    S, per = split_count(N, Cg * n_tg * groups * n_ob, WGRAD_TARGET_BLOCKS)
    part = gw if S == 1 else empty((S,) + tuple(weight_shape), x.dtype, stream)
    _backward_weight(x.dtype.char)[(Cg * n_tg, groups * n_ob, S), (WGRAD_BW, WGRAD_BH), stream](
        flat(x), flat(gy), flat(part), *x.shape, *gy.shape[1:], groups, n_ob, n_tg, TG, KH, KW,
        sh, sw, *padding, dh, dw, *ss, sh // ss[0], sw // ss[1], *dls, per)
    if S > 1:
        sum_splits(flat(part), S, flat(gw), False, stream)
    return gw


@specialise
def _backward_bias(dtype_char):
    dt = numba_type(dtype_char)

    @cuda.jit
    def backward_bias(gy, gb):
        """gb[k] = sum of gy (flat (N, K, P)) over n and p: threads stride over p, in order."""
        s_red = cuda.shared.array(BIAS_THREADS, dt)
        N, K, P = gy.shape
        k, tid = uint32(cuda.blockIdx.x), uint32(cuda.threadIdx.x)
        acc = dt(0)
        for n in range(uint32(N)):
            for p in range(tid, uint32(P), uint32(BIAS_THREADS)):
                acc += gy[n, k, p]
        s_red[tid] = acc
        cuda.syncthreads()  # every thread's partial is in s_red
        half = BIAS_THREADS // 2
        while half > 0:
            if tid < half:
                s_red[tid] += s_red[tid + uint32(half)]
            cuda.syncthreads()  # this level of the tree is complete
            half //= 2
        if tid == 0:
            gb[k] = s_red[0]

    return backward_bias


def conv2d_backward_bias(grad_output, *, stream=0):
    """grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow] (fixed-order tree sum)."""
    gy = as_device(grad_output)
    N, K = gy.shape[0], gy.shape[1]
    gb = empty((K,), gy.dtype, stream)
    if K:
        _backward_bias(gy.dtype.char)[K, BIAS_THREADS, stream](
            gy.reshape(N, K, gy.shape[2] * gy.shape[3]), gb)
    return gb


def kernel_specs(dtype) -> List[KernelSpec]:
    """Every kernel this module launches, at the numba types its launch code passes."""
    dc = np.dtype(dtype).char
    a1, a3 = array(dtype, 1), array(dtype, 3)
    return [
        KernelSpec("direct_window_conv", _window_conv(dc),
                   (a1, a1, a1, a1) + (INT,) * 36 + (BOOL, BOOL), DIRECT_THREADS, 0, "compute"),
        KernelSpec("direct_backward_weight", _backward_weight(dc), (a1, a1, a1) + (INT,) * 26,
                   WGRAD_THREADS, 0, "compute"),
        KernelSpec("direct_backward_bias", _backward_bias(dc), (a3, a1), BIAS_THREADS, 0,
                   "memory"),
    ]


__all__ = ["forward", "backward_input", "backward_weight", "conv2d_backward_bias",
           "kernel_specs", "DIRECT_BW", "DIRECT_BH", "DIRECT_PB", "DIRECT_KB"]
