"""The unfold and fold kernels of im2col, and how many images are unfolded at once.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); P = OH*OW, T = KH*KW. Image n's unfolded
matrix has one row per (input channel, tap) and one column per output pixel:

    cols[c*T + r*KW + s, oh*OW + ow] = x[n, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

(0 outside the input); ``col2im`` is its adjoint, adding each entry back onto the input pixel it
came from. Both pipelines (``numpy_matmul``, ``cblas_workers``) call these serial kernels from
their workers, one block of images at a time (``block_images``).
"""
import numpy as np
from numba import njit

from convkit.kernels.cpu.relu import relu_value

# Unfolded images per block: each GEMM worker unfolds a block this size (at least one image) and
# multiplies it at once, while it is still in that core's L2 cache. The unfolded memory in use is
# bounded by workers x max(this, one image), so N64 C64 224^2 never holds the whole matrix.
IM2COL_BLOCK_BYTES = 512 * 1024
# the weight gradient keeps one (K, R) partial per image block (summed in block order, so the
# result is deterministic); blocks grow so the partials stay below this
PARTIALS_BYTES = 64 << 20


def block_images(N, rows, P, itemsize):
    """Images per block so that a block's unfolded (rows, nb*P) matrix fits IM2COL_BLOCK_BYTES."""
    return max(1, min(N, IM2COL_BLOCK_BYTES // max(1, rows * P * itemsize)))


def weight_block_images(N, rows, P, K, R, itemsize):
    """Images per block of the weight gradient: as ``block_images``, grown so the blocks' (K, R)
    partials stay within PARTIALS_BYTES."""
    nb = block_images(N, rows, P, itemsize)
    return min(max(N, 1), max(nb, -(-N * K * R * itemsize // PARTIALS_BYTES)))


@njit(cache=True, nogil=True, inline="always")
def zero_columns(rows, OW, oh0, oh1, lo, hi):
    """rows[oh*OW + ow] = 0 for oh0 <= oh < oh1 and ow outside [lo, hi): the padding columns of
    a plane copied or added as one shifted run. Column by column (a tap has one or two of them),
    so each loop runs over the rows instead of many loops of a column or two."""
    for ow in range(lo):
        for oh in range(oh0, oh1):
            rows[oh * OW + ow] = 0
    for ow in range(hi, OW):
        for oh in range(oh0, oh1):
            rows[oh * OW + ow] = 0


@njit(cache=True, nogil=True)
def taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW):
    """Per tap t = r*KW + s: [dr, oh0, oh1, off, lo, hi] -- the input row offset dr of output row
    0, the output rows [oh0, oh1) whose input row exists, the input column offset off of output
    column 0, and the output columns [lo, hi) whose input column exists."""
    table = np.empty((KH * KW, 6), dtype=np.int64)
    for r in range(KH):
        for s in range(KW):
            dr = r * dil_h - ph
            oh0 = min(OH, max(0, (-dr + sh - 1) // sh))
            off = s * dil_w - pw
            lo = min(OW, max(0, (-off + sw - 1) // sw))
            table[r * KW + s] = (dr, oh0, max(oh0, min(OH, (H - 1 - dr) // sh + 1)),
                                 off, lo, max(lo, min(OW, (W - 1 - off) // sw + 1)))
    return table


@njit(cache=True, nogil=True)
def im2col(x, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, cols, row_step, col_step):
    """Unfold images n0 .. n0+nb-1 of x into the C-contiguous 2-D ``cols``: row c*KH*KW + t of
    image i goes to ``cols[i*row_step + c*KH*KW + t, i*col_step : i*col_step + OH*OW]``, so
    (row_step, col_step) = (C*KH*KW, 0) stacks the images' (CKK, P) matrices and (0, P) puts
    them side by side in one (CKK, nb*P) matrix."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P, T = OH * OW, KH * KW
    table = taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW)
    # stride 1 with OW == W: a tap's whole row of cols is the plane shifted by dr*W + off,
    # copied in one run, then the columns that fell into the left/right padding are zeroed
    shifted = sh == 1 and sw == 1 and OW == W
    for ic in range(nb * C):
        i, c = ic // C, ic % C
        flat = x[n0 + i, c].reshape(H * W)
        for t in range(T):
            dst = cols[i * row_step + c * T + t, i * col_step:i * col_step + P]
            dr, oh0, oh1, off, lo, hi = table[t]
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
                zero_columns(dst, OW, oh0, oh1, lo, hi)
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
def col2im(cols, n0, nb, KH, KW, sh, sw, ph, pw, dil_h, dil_w, OH, OW, gx, row_step, col_step):
    """gx[n0 + i, c] = sum over taps of the cols entries that land on it, in tap order, where
    ``cols`` is laid out as ``im2col`` writes it (same row_step, col_step): row c*KH*KW + t of
    image i is ``cols[i*row_step + c*KH*KW + t, i*col_step : i*col_step + OH*OW]``. ``cols`` is
    scratch: its entries that fall into the left/right padding are zeroed here."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    T = KH * KW
    table = taps(KH, KW, sh, sw, ph, pw, dil_h, dil_w, H, W, OH, OW)
    shifted = sh == 1 and sw == 1 and OW == W
    for ic in range(nb * C):
        i, c = ic // C, ic % C
        flat = gx[n0 + i, c].reshape(H * W)
        for k in range(H * W):
            flat[k] = 0
        for t in range(T):
            src = cols[i * row_step + c * T + t, i * col_step:i * col_step + OH * OW]
            dr, oh0, oh1, off, lo, hi = table[t]
            if shifted:
                # padding columns would land on a neighbour row
                zero_columns(src, OW, oh0, oh1, lo, hi)
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
def nchw_to_kp(a, n0, nb, out):
    """out[k, i*P + p] = a[n0 + i, k, p] for a: (N, K, P): a block of grad_output as one (K, nb*P)
    matrix, the weight gradient's long GEMM operand."""
    K, P = a.shape[1], a.shape[2]
    for k in range(K):
        for i in range(nb):
            out[k, i * P:(i + 1) * P] = a[n0 + i, k]


@njit(cache=True, nogil=True)
def kp_to_nchw(src, y, n0, nb):
    """y[n0 + i, k, p] = src[k, i*P + p] for y: (N, K, P): a block's output computed as one
    (K, nb*P) matrix, stored back image by image (the inverse of ``nchw_to_kp``)."""
    K, P = y.shape[1], y.shape[2]
    for i in range(nb):
        for k in range(K):
            y[n0 + i, k] = src[k, i * P:(i + 1) * P]


@njit(cache=True, nogil=True)
def epilogue(y, b, has_bias, relu, n0, nb):
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


@njit(cache=True, nogil=True)
def unfold_rows(x, n, KW, sw, ph, pw, dil_w, Hp, OW, rows):
    """The row-shift unfold of image n (stride 1 along H): only the KW taps of a row, for every
    row of the vertically padded image,

        rows[c*KW + s, h*OW + ow] = x[n, c, h - ph, ow*sw - pw + s*dil_w]   (0 outside x)

    for h < Hp = OH + (KH-1)*dil_h, so tap row r of output row oh is row oh + r*dil_h here and
    the (C*KW, OH*OW) operand of tap row r is the column window starting at r*dil_h*OW: KH
    GEMMs on one KH-times smaller unfold."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    L = Hp * OW
    # sw == 1 with OW == W: a tap's whole row is the plane shifted by -ph*W + off, copied in one
    # run, then the columns that fell into the left/right padding are zeroed (as im2col does)
    shifted = sw == 1 and OW == W
    for c in range(C):
        flat = x[n, c].reshape(H * W)
        for s in range(KW):
            dst = rows[c * KW + s]
            off = s * dil_w - pw
            lo = min(OW, max(0, (-off + sw - 1) // sw))
            hi = max(lo, min(OW, (W - 1 - off) // sw + 1))
            if shifted:
                shift = off - ph * W
                k0 = min(L, max(0, -shift))
                k1 = max(k0, min(L, H * W - shift))
                for k in range(k0):
                    dst[k] = 0
                for k in range(k1, L):
                    dst[k] = 0
                d = dst[k0:k1]
                src = flat[k0 + shift:k1 + shift]
                for k in range(k1 - k0):
                    d[k] = src[k]
                zero_columns(dst, OW, 0, Hp, lo, hi)
                continue
            for h in range(Hp):
                d = dst[h * OW:(h + 1) * OW]
                ih = h - ph
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        d[ow] = 0
                    continue
                for ow in range(lo):
                    d[ow] = 0
                for ow in range(hi, OW):
                    d[ow] = 0
                src = flat[ih * W:]
                for ow in range(lo, hi):
                    d[ow] = src[ow * sw + off]

