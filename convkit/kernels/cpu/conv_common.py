"""Index arithmetic and filter layouts shared by the CPU convolution kernels (direct and im2col).

Shape letters as in ``convkit.kernels.reference``: x: (N, C, H, W), w: (K, Cg, KH, KW),
y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G; tap (r, s) of output pixel (oh, ow) reads input
pixel (oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w).
"""
import numpy as np
from numba import njit, prange

from convkit.runtime.jit import twin
from convkit.runtime.memory import empty


@njit(inline="always")
def col_range(s, W, OW, sw, pw, dil_w):
    """(lo, hi, off): the output columns lo <= ow < hi whose tap s reads an input column
    iw = ow*sw + off inside [0, W), off = s*dil_w - pw. Computed once per tap, so the loops over
    ow need no bounds test."""
    off = s * dil_w - pw
    lo = max(0, -((off) // sw)) if off < 0 else 0
    hi = min(OW, (W - 1 - off) // sw + 1)
    return lo, hi, off


@njit(inline="always")
def gathered_row(ih, r, sh, ph, dil_h, OH):
    """The output row oh whose tap r reads input row ih (oh*sh - ph + r*dil_h == ih), or -1."""
    num = ih + ph - r * dil_h
    if num < 0 or num % sh != 0 or num // sh >= OH:
        return -1
    return num // sh


def transposed_filter(w, groups):
    """The filter of the transposed convolution: a stride-1 backward-input is a forward conv of
    gy, padded by dilation*(KH-1) - padding, with the filter flipped in space and its in/out
    channels swapped within each group: (K, Cg, KH, KW) -> (C, Kg, KH, KW), a new C-contiguous
    array (one compiled pass: numpy's copy of the flipped, transposed view walks 3x3 blocks
    backwards, 6.9 ms for ResNet's 512x512x3x3 filter, measured here, a quarter of that
    backward-input's time)."""
    K, Cg, KH, KW = w.shape
    out = empty((groups * Cg, K // groups, KH, KW), w.dtype)  # recycled: no page faults
    _transpose_filter(out.size, np.ascontiguousarray(w), groups, out)
    return out


@twin
def _transpose_filter(w, groups, out):
    """Flipping both spatial axes reverses each filter's KH*KW taps; tiles of 16 x 16
    (in, out) channel pairs keep both sides' cache lines in use."""
    K, Cg, KH, KW = w.shape
    Kg, T = K // groups, KH * KW
    src, dst = w.reshape(w.size), out.reshape(out.size)
    tiles_c = (Cg + 15) // 16
    for gt in prange(groups * tiles_c):
        g, c0 = gt // tiles_c, (gt % tiles_c) * 16
        for k0 in range(0, Kg, 16):
            for c in range(c0, min(c0 + 16, Cg)):
                for k in range(k0, min(k0 + 16, Kg)):
                    a = ((g * Kg + k) * Cg + c) * T + T - 1
                    b = ((g * Cg + c) * Kg + k) * T
                    for t in range(T):
                        dst[b + t] = src[a - t]


def transposed_padding(weight_shape, padding, dilation):
    """The padding of that forward conv: dilation*(K-1) - padding per axis (negative where the
    original padding reaches past the dilated kernel; no forward conv then)."""
    KH, KW = weight_shape[2], weight_shape[3]
    return dilation[0] * (KH - 1) - padding[0], dilation[1] * (KW - 1) - padding[1]


def transposed_forward(forward, gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input of a stride-1 conv computed by ``forward`` (a forward launcher) as the
    transposed convolution: gy convolved with ``transposed_filter``, padded by
    ``transposed_padding``. Valid for stride 1 where that padding is >= 0."""
    pads = transposed_padding(w.shape, padding, dilation)
    if tuple(stride) != (1, 1) or min(pads) < 0:
        raise ValueError(f"the transposed forward needs stride (1, 1) and padding <= "
                         f"dilation*(kernel - 1), got stride {tuple(stride)}, padding "
                         f"{tuple(padding)}, dilation {tuple(dilation)}, kernel {w.shape[2:]}")
    return forward(gy, transposed_filter(w, groups), None, (1, 1), pads,
                   dilation, groups, tuple(input_shape[2:]))


def group_channels_last(gy, groups):
    """gy: (N, K, OH, OW) -> (N, G, OH, OW, Kg), contiguous: each output pixel's channels of a
    group side by side, for kernels whose innermost loop runs over them."""
    N, K, OH, OW = gy.shape
    return np.ascontiguousarray(gy.reshape(N, groups, K // groups, OH, OW).transpose(0, 1, 3, 4, 2))


def bias_operand(b, dtype):
    """(array, has_bias) for a kernel: ``b`` itself, or a one-element placeholder (never read) so
    the kernel's argument types stay the same with and without a bias."""
    return (np.zeros(1, dtype=dtype), False) if b is None else (b, True)
