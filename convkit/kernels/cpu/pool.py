"""Max-pool 2-D forward (values and torch-style indices) and backward.

x: (N, C, H, W) -> y, indices: (N, C, OH, OW). indices[n, c, oh, ow] is the flat index ih*W + iw
of the maximum inside plane (n, c), as torch returns it. Torch's CPU rule, reproduced exactly: a
window's taps are ih = oh*sh - ph + i*dil_h (likewise for w), taps in the padding are skipped, the
index starts at the window's first in-bounds tap, a tap replaces the best so far when it is
greater or NaN (so the first maximum wins, and the last NaN), and the value is the one stored at
that index (-0.0 stays -0.0).

The forward kernel compares integer keys, not floats: the key of a float's bit pattern b is
``(b ^ (sign & MAG)) - sign`` (sign = b >> (bits - 1), MAG = 2^(bits-1) - 1), which orders like
the floats with -0.0 == 0.0, and NaN gets the largest key. Integer inputs (torch pools them too,
forward only) are their own keys: MAG = 0 and no sign correction. Integer selects compile to
conditional moves; float selects compile to branches on x86, and an arg-max over real data
mispredicts about every other tap (see ``convkit.runtime.jit``: this kernel is compiled
branch-free). Windows fully inside the plane take an unrolled path for the common 2x2 / 3x3
kernels; border windows clip their taps.

2x2 windows with stride 2 and no padding or dilation over an even width (SimpleCNN's pools, most
CNNs' downsampling) take ``_max_pool2d_2x2``: the maximum of each horizontal pair over the whole
plane in one long loop, then of each vertical pair of those. Choosing pairwise gives the same tap
as the sequential scan (the last NaN if any, else the first maximum), and its plain float selects
vectorise (~35-40 % faster than the general kernel on SimpleCNN's pools, measured here).
"""
import numpy as np
from numba import njit, prange

from convkit.kernels.shapes import pool_output_size
from convkit.runtime.jit import twin
from convkit.runtime.memory import empty

_NAN_KEY = np.iinfo(np.int64).max
_INT_DTYPE = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _key_constants(dtype):
    """(integer view dtype, sign bit, magnitude mask, bits of +inf, sign correction, value of an
    empty window: -inf or the lowest integer) of a dtype (see ``_max_pool2d_forward``)."""
    if dtype.kind in "iu":  # integers are their own keys, never NaN
        return dtype, 8 * dtype.itemsize - 1, 0, 0, 0, np.iinfo(dtype).min
    itype = _INT_DTYPE[dtype]
    bits = 8 * dtype.itemsize
    return (itype, bits - 1, (1 << (bits - 1)) - 1, int(np.array(np.inf, dtype).view(itype)), 1,
            np.array(-np.inf, dtype).view(itype)[()])


_KEYS = {dtype: _key_constants(dtype) for dtype in map(
    np.dtype, (np.float32, np.float64, np.uint8, np.int8, np.int16, np.int32, np.int64))}


@njit(inline="always")
def _window(o, stride, pad, dil, K, size):
    """(first in-bounds tap, number of in-bounds taps) of window o along one axis."""
    start = o * stride - pad
    end = min(start + (K - 1) * dil + 1, size)
    first = start
    if first < 0:
        first += ((-first + dil - 1) // dil) * dil
    count = (end - first + dil - 1) // dil if end > first else 0
    return first, count


@njit(inline="always")
def _key(bits, shift, mag, inf_bits, fix):
    """(order key, is NaN) of the value whose bit pattern is ``bits`` (see the module
    docstring; ``fix`` is 1 for floats, 0 for integers)."""
    b = np.int64(bits)
    sign = b >> shift
    nan = (b & mag) > inf_bits
    return (_NAN_KEY if nan else (b ^ (sign & mag)) + (sign & fix)), nan


@njit(inline="always")
def _argmax(flat, W, h0, nh, dh, w0, nw, dw, shift, mag, inf_bits, fix):
    """Flat index of the window's maximum, by torch's rule (first max, last NaN)."""
    best_key = np.iinfo(np.int64).min  # below every key: the first tap is always taken
    best = h0 * W + w0
    for i in range(nh):
        for j in range(nw):
            k = (h0 + i * dh) * W + w0 + j * dw
            key, nan = _key(flat[k], shift, mag, inf_bits, fix)
            take = (key > best_key) | nan
            best = k if take else best
            best_key = key if take else best_key
    return best


@twin(branchless=True)
def _max_pool2d_forward(xb, H, W, KH, KW, sh, sw, ph, pw, dil_h, dil_w, yb, indices,
                        shift, mag, inf_bits, fix, neg_inf):
    """xb: (N*C, H*W) and yb: (N*C, OH, OW) are integer views of the input and output."""
    NC = xb.shape[0]
    OH, OW = yb.shape[1], yb.shape[2]
    # output columns whose KW taps all lie inside the row
    lo = min(OW, (pw + sw - 1) // sw)
    hi = max(lo, min(OW, (W - 1 - (KW - 1) * dil_w + pw) // sw + 1))
    for p in prange(NC):
        flat = xb[p]
        for oh in range(OH):
            h0, nh = _window(oh, sh, ph, dil_h, KH, H)
            yrow, irow = yb[p, oh], indices[p, oh]
            for ow in range(OW):
                if nh < KH or ow < lo or ow >= hi:  # border window: clip its taps
                    w0, nw = _window(ow, sw, pw, dil_w, KW, W)
                    k = _argmax(flat, W, h0, nh, dil_h, w0, nw, dil_w, shift, mag, inf_bits,
                                fix)
                    yrow[ow] = flat[k] if nh > 0 and nw > 0 else neg_inf
                    irow[ow] = k
            if nh < KH:
                continue
            # interior windows; constant trip counts unroll the common kernels
            if KH == 2 and KW == 2 and dil_h == 1 and dil_w == 1:
                for ow in range(lo, hi):
                    k = _argmax(flat, W, h0, 2, 1, ow * sw - pw, 2, 1, shift, mag, inf_bits,
                                fix)
                    yrow[ow], irow[ow] = flat[k], k
            elif KH == 3 and KW == 3 and dil_h == 1 and dil_w == 1:
                for ow in range(lo, hi):
                    k = _argmax(flat, W, h0, 3, 1, ow * sw - pw, 3, 1, shift, mag, inf_bits,
                                fix)
                    yrow[ow], irow[ow] = flat[k], k
            else:
                for ow in range(lo, hi):
                    k = _argmax(flat, W, h0, KH, dil_h, ow * sw - pw, KW, dil_w, shift, mag,
                                inf_bits, fix)
                    yrow[ow], irow[ow] = flat[k], k


# planes per parallel work item of the 2x2 kernel (one pair of scratch rows per item)
PAIR_PLANES = 8


@twin(branchless=True)
def _max_pool2d_2x2(x, y, indices):
    """x: (N*C, H, W) with W = 2*OW and H >= 2*OH; y, indices: (N*C, OH, OW)."""
    NC, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    HO = H * OW  # horizontal pairs per plane: never straddle two rows, as W is even
    for item in prange((NC + PAIR_PLANES - 1) // PAIR_PLANES):
        hv = np.empty(HO, x.dtype)    # maximum of each horizontal pair
        hk = np.empty(HO, np.int32)   # and which one it was (0 left, 1 right)
        for p in range(item * PAIR_PLANES, min(NC, (item + 1) * PAIR_PLANES)):
            flat = x[p].reshape(H * W)
            for q in range(HO):
                a = flat[2 * q]
                b = flat[2 * q + 1]
                t = (b > a) | (b != b)
                hv[q] = b if t else a
                hk[q] = np.int32(1) if t else np.int32(0)
            for oh in range(OH):
                top, bottom = 2 * oh * OW, (2 * oh + 1) * OW
                yrow, irow = y[p, oh], indices[p, oh]
                base = 2 * oh * W
                for ow in range(OW):
                    u = hv[top + ow]
                    v = hv[bottom + ow]
                    t = (v > u) | (v != v)
                    yrow[ow] = v if t else u
                    irow[ow] = base + 2 * ow + (W + hk[bottom + ow] if t else hk[top + ow])


@twin
def _max_pool2d_backward(gy, indices, gx):
    """Each plane is zeroed and then receives its gradients while it is in this core's cache."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    HW, OHW = H * W, OH * OW
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        plane = gx[n, c].reshape(HW)
        for i in range(HW):
            plane[i] = 0
        g = gy[n, c].reshape(OHW)
        idx = indices[n, c].reshape(OHW)
        for o in range(OHW):
            i = idx[o]
            if 0 <= i < HW:  # an index outside the plane is dropped, never written
                plane[i] += g[o]


def max_pool2d_forward(x: np.ndarray, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """Return (y, indices) for a C-contiguous float or integer x: (N, C, H, W); arguments are
    (h, w) pairs."""
    N, C, H, W = x.shape
    OH = pool_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = empty((N, C, OH, OW), x.dtype)
    indices = empty((N, C, OH, OW), np.int64)
    if (tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0)
            and tuple(dilation) == (1, 1) and W == 2 * OW and H >= 2 * OH):
        _max_pool2d_2x2(y.size * 4, x.reshape(N * C, H, W), y.reshape(N * C, OH, OW),
                        indices.reshape(N * C, OH, OW))
        return y, indices
    itype, *keys = _KEYS[x.dtype]
    _max_pool2d_forward(y.size * kernel_size[0] * kernel_size[1],
                        x.reshape(N * C, H * W).view(itype), H, W, *kernel_size, *stride,
                        *padding, *dilation, y.reshape(N * C, OH, OW).view(itype),
                        indices.reshape(N * C, OH, OW), *keys)
    return y, indices


def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray, input_shape) -> np.ndarray:
    """grad_input: each output gradient added at the input position its index names."""
    gx = empty(tuple(input_shape), grad_output.dtype)
    _max_pool2d_backward(gx.size, grad_output, indices, gx)
    return gx
