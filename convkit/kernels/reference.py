"""Plain reference loop nests for every op of the kernel contract: the textbook formulas, in order.

This is the oracle the tests check the fast kernels against, and the place to read what one
output pixel is. Each function has the same name and arguments as in ``convkit.kernels.cpu``
(arrays in NCHW layout; stride, padding, dilation, kernel_size as explicit (h, w) int pairs,
padding symmetric), its docstring states the formula for one pixel with the shape letters
below, and its loops run in the order the formula reads. Sums are accumulated in float64 (a
Python float) and rounded once to the input dtype, so the oracle is at least as accurate as
anything it checks. Plain Python loops: meant for small shapes, and slow by design.

Shape letters: x: (N, C, H, W) input; w: (K, C/groups, KH, KW) filter; y: (N, K, OH, OW)
output; stride (sh, sw), padding (ph, pw), dilation (dil_h, dil_w). With G = groups, a group
holds Cg = C/G input and Kg = K/G output channels, and output channel k reads input channels
g*Cg .. g*Cg + Cg - 1 of its group g = k // Kg. Output sizes come from ``convkit.kernels.shapes``
(``conv_output_size``, ``pool_output_size``): the very functions the fast kernels use.

Where the fast versions live (same function names, checked against this file by the tests):

    convkit/kernels/cpu/conv_direct/     direct loop nests, Numba @njit(parallel=True): one
                                         module per loop order, the table in __init__.py
    convkit/kernels/cpu/conv_im2col/     im2col / col2im + GEMM, blocked per core
    convkit/kernels/cpu/conv_winograd/   Winograd F(2x2,3x3), F(4x4,3x3): the one-tile
                                         algorithm is ``winograd_tile`` below
    convkit/kernels/cpu/pool.py          max-pool (branch-free arg-max, 2x2 fast path)
    convkit/kernels/cpu/relu.py          ReLU
    convkit/kernels/cuda/                the same files for NVIDIA GPUs (numba.cuda)
    tests/test_reference.py              this file against torch, and the CPU kernels against it
"""
import math

import numpy as np

from convkit.kernels.shapes import conv_output_size, pool_output_size


def conv2d_forward(x: np.ndarray, w: np.ndarray, b, stride, padding, dilation, groups: int,
                   algorithm=None, relu: bool = False) -> np.ndarray:
    """Cross-correlation (what deep learning calls convolution), zero padding, groups, dilation.

        y[n, k, oh, ow] = b[k] + sum_{c'=0}^{Cg-1} sum_{r=0}^{KH-1} sum_{s=0}^{KW-1}
                          x[n, g*Cg + c', oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]
                          * w[k, c', r, s]                      with g = k // Kg

    where x is 0 outside 0 <= ih < H, 0 <= iw < W (those taps are skipped), b[k] is 0 when
    ``b`` is None, OH = floor((H + 2*ph - dil_h*(KH-1) - 1) / sh) + 1 (likewise OW), and
    ``relu`` then applies ``relu_forward`` to y. ``algorithm`` is accepted for the contract and
    ignored: there is one way to compute it here.
    """
    N, C, H, W = x.shape
    K, Cg, KH, KW = w.shape
    sh, sw = stride
    ph, pw = padding
    dil_h, dil_w = dilation
    Kg = K // groups
    OH = conv_output_size(H, KH, sh, ph, dil_h)
    OW = conv_output_size(W, KW, sw, pw, dil_w)
    y = np.empty((N, K, OH, OW), x.dtype)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(Cg):
                        for r in range(KH):
                            ih = oh * sh - ph + r * dil_h
                            if not 0 <= ih < H:
                                continue
                            for s in range(KW):
                                iw = ow * sw - pw + s * dil_w
                                if 0 <= iw < W:
                                    acc += float(x[n, g * Cg + c, ih, iw]) * float(w[k, c, r, s])
                    y[n, k, oh, ow] = acc
    return relu_forward(y, out=y) if relu else y


def conv2d_backward_input(grad_output: np.ndarray, w: np.ndarray, input_shape, stride, padding,
                          dilation, groups: int, algorithm=None) -> np.ndarray:
    """grad_input: (N, C, H, W), the derivative of ``conv2d_forward``'s sum by x, pixel by pixel.

    Input pixel (ih, iw) was read by tap (r, s) of output pixel (oh, ow) when
    ih = oh*sh - ph + r*dil_h and iw = ow*sw - pw + s*dil_w, so with g = c // Cg:

        grad_input[n, c, ih, iw] = sum_{k=g*Kg}^{g*Kg+Kg-1} sum_{r=0}^{KH-1} sum_{s=0}^{KW-1}
                                   grad_output[n, k, oh, ow] * w[k, c - g*Cg, r, s]
            with oh = (ih + ph - r*dil_h) / sh, ow = (iw + pw - s*dil_w) / sw,

    summed only over the (r, s) where oh and ow are whole numbers inside [0, OH) x [0, OW)
    (a transposed convolution). Pixels no window reads get 0.
    """
    N, C, H, W = input_shape
    K, Cg, KH, KW = w.shape
    OH, OW = grad_output.shape[2], grad_output.shape[3]
    sh, sw = stride
    ph, pw = padding
    dil_h, dil_w = dilation
    Kg = K // groups
    grad_input = np.empty((N, C, H, W), grad_output.dtype)
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for ih in range(H):
                for iw in range(W):
                    acc = 0.0
                    for k in range(g * Kg, g * Kg + Kg):
                        for r in range(KH):
                            oh, rem_h = divmod(ih + ph - r * dil_h, sh)
                            if rem_h != 0 or not 0 <= oh < OH:
                                continue
                            for s in range(KW):
                                ow, rem_w = divmod(iw + pw - s * dil_w, sw)
                                if rem_w == 0 and 0 <= ow < OW:
                                    acc += (float(grad_output[n, k, oh, ow])
                                            * float(w[k, c - g * Cg, r, s]))
                    grad_input[n, c, ih, iw] = acc
    return grad_input


def conv2d_backward_weight(x: np.ndarray, grad_output: np.ndarray, weight_shape, stride, padding,
                           dilation, groups: int, algorithm=None) -> np.ndarray:
    """grad_weight: (K, C/groups, KH, KW), the correlation of x with grad_output.

        grad_weight[k, c', r, s] = sum_{n=0}^{N-1} sum_{oh=0}^{OH-1} sum_{ow=0}^{OW-1}
                                   grad_output[n, k, oh, ow]
                                   * x[n, g*Cg + c', oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]
            with g = k // Kg, x being 0 outside the input (the same taps as the forward).
    """
    N, C, H, W = x.shape
    K, Cg, KH, KW = weight_shape
    OH, OW = grad_output.shape[2], grad_output.shape[3]
    sh, sw = stride
    ph, pw = padding
    dil_h, dil_w = dilation
    Kg = K // groups
    grad_weight = np.empty((K, Cg, KH, KW), x.dtype)
    for k in range(K):
        g = k // Kg
        for c in range(Cg):
            for r in range(KH):
                for s in range(KW):
                    acc = 0.0
                    for n in range(N):
                        for oh in range(OH):
                            ih = oh * sh - ph + r * dil_h
                            if not 0 <= ih < H:
                                continue
                            for ow in range(OW):
                                iw = ow * sw - pw + s * dil_w
                                if 0 <= iw < W:
                                    acc += (float(grad_output[n, k, oh, ow])
                                            * float(x[n, g * Cg + c, ih, iw]))
                    grad_weight[k, c, r, s] = acc
    return grad_weight


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """grad_bias: (K,).

        grad_bias[k] = sum_{n=0}^{N-1} sum_{oh=0}^{OH-1} sum_{ow=0}^{OW-1} grad_output[n, k, oh, ow]
    """
    N, K, OH, OW = grad_output.shape
    grad_bias = np.empty(K, grad_output.dtype)
    for k in range(K):
        acc = 0.0
        for n in range(N):
            for oh in range(OH):
                for ow in range(OW):
                    acc += float(grad_output[n, k, oh, ow])
        grad_bias[k] = acc
    return grad_bias


def relu_forward(x: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """Any shape; ``out=x`` works in place.

        y[i] = 0 if x[i] < 0 else x[i]

    (torch's clamp_min(x, 0): a NaN is not < 0, so it propagates, and -0.0 stays -0.0.)
    """
    y = np.empty_like(x) if out is None else out
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    for i in range(flat_x.size):
        v = flat_x[i]
        flat_y[i] = 0 if v < 0 else v
    return y


def relu_backward(grad_output: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Any shape; y is relu_forward's output.

        grad_input[i] = 0 if y[i] <= 0 else grad_output[i]

    (torch's threshold_backward: a NaN output is not <= 0, so it passes its gradient on.)
    """
    grad_input = np.empty_like(grad_output)
    flat_gy, flat_y, flat_gx = grad_output.reshape(-1), y.reshape(-1), grad_input.reshape(-1)
    for i in range(flat_gy.size):
        flat_gx[i] = 0 if flat_y[i] <= 0 else flat_gy[i]
    return grad_input


def _first_tap_inside(start: int, dil: int) -> int:
    """The first tap start, start + dil, ... of a window that is not in the top / left padding."""
    return start if start >= 0 else start + math.ceil(-start / dil) * dil


def max_pool2d_forward(x: np.ndarray, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """(y, indices), both (N, C, OH, OW); kernel_size (KH, KW). Torch's CPU semantics exactly.

        y[n, c, oh, ow] = max_{i=0}^{KH-1} max_{j=0}^{KW-1}
                          x[n, c, oh*sh - ph + i*dil_h, ow*sw - pw + j*dil_w]
        indices[n, c, oh, ow] = ih*W + iw of the tap that max chose (flat in the plane x[n, c])

    x is -inf outside the input (padding never wins). The taps are scanned row by row, and a
    tap replaces the best so far when it is greater or NaN: ties keep the first maximum, a NaN
    wins (the last NaN of the window). The scan starts from -inf at the window's first tap
    inside the input, so a window of -inf values points there; a window with no tap inside the
    input (possible only with dilation) gives -inf and the index ih0*W + iw0 of its first tap
    row and column that are not in the top / left padding, which lies outside the plane (torch's
    rule).

    OH = floor((H + 2*ph - dil_h*(KH-1) - 1) / sh) + 1, or with ceil_mode the ceiling instead
    of the floor, less one if that last window would start in the bottom padding (it must start
    inside the input or the top padding; likewise OW).
    """
    N, C, H, W = x.shape
    KH, KW = kernel_size
    sh, sw = stride
    ph, pw = padding
    dil_h, dil_w = dilation
    OH = pool_output_size(H, KH, sh, ph, dil_h, ceil_mode)
    OW = pool_output_size(W, KW, sw, pw, dil_w, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    indices = np.empty((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best = -math.inf
                    best_index = (_first_tap_inside(oh * sh - ph, dil_h) * W
                                  + _first_tap_inside(ow * sw - pw, dil_w))
                    for i in range(KH):
                        ih = oh * sh - ph + i * dil_h
                        if not 0 <= ih < H:
                            continue
                        for j in range(KW):
                            iw = ow * sw - pw + j * dil_w
                            if not 0 <= iw < W:
                                continue
                            v = x[n, c, ih, iw]
                            if v > best or math.isnan(v):
                                best, best_index = v, ih * W + iw
                    y[n, c, oh, ow] = best  # the stored value itself: -0.0 stays -0.0
                    indices[n, c, oh, ow] = best_index
    return y, indices


def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray, input_shape) -> np.ndarray:
    """grad_input: (N, C, H, W); each output gradient goes back to the input its index names.

        grad_input[n, c, ih, iw] = sum over (oh, ow) with indices[n, c, oh, ow] == ih*W + iw
                                   of grad_output[n, c, oh, ow]

    An index outside the plane (a window with no tap inside the input) is dropped.
    """
    N, C, H, W = input_shape
    OH, OW = grad_output.shape[2], grad_output.shape[3]
    acc = np.zeros((N, C, H * W), np.float64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    index = indices[n, c, oh, ow]
                    if 0 <= index < H * W:
                        acc[n, c, index] += float(grad_output[n, c, oh, ow])
    return acc.reshape(N, C, H, W).astype(grad_output.dtype)


# Winograd F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
# CVPR 2016), alpha = m + 2 points: (B^T, G, A^T) per output tile size m, from the interpolation
# points 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4), plus the point at infinity
WINOGRAD_MATRICES = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}


def winograd_tile(d: np.ndarray, g: np.ndarray, m: int) -> np.ndarray:
    """One output tile of a 3x3 correlation by Winograd's minimal filtering F(m x m, 3 x 3):

        Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise; Lavin & Gray, eq. 8)

    d: the (m+2, m+2) input patch, g: the (3, 3) filter, Y: the (m, m) outputs
    Y[i, j] = sum_{r,s} d[i + r, j + s] g[r, s], with (m+2)^2 multiplies instead of 9 m^2.
    In float64. Summed over channels, the elementwise product becomes the (m+2)^2 GEMMs the
    fast kernels run (``convkit.kernels.cpu.conv_winograd``).
    """
    BT, G, AT = WINOGRAD_MATRICES[m]
    U = G @ g @ G.T            # the filter, transformed
    V = BT @ d @ BT.T          # the input patch, transformed
    return AT @ (U * V) @ AT.T


def conv2d_forward_winograd(x: np.ndarray, w: np.ndarray, b, padding, groups: int,
                            m: int) -> np.ndarray:
    """``conv2d_forward`` with stride 1, dilation 1 and a 3x3 filter computed tile by tile with
    ``winograd_tile``: for each image n, output channel k and m x m output tile at (oh0, ow0),

        y[n, k, oh0:oh0+m, ow0:ow0+m] = b[k] + sum_{c'} winograd_tile(
            xp[n, g*Cg + c', oh0 : oh0+m+2, ow0 : ow0+m+2], w[k, c'], m)

    where xp is x zero-padded by ``padding`` (and past the last tile), cropped to (OH, OW).
    Summed in float64 and rounded once: the exact answer of the algorithm the fast kernels
    run, up to float64 rounding.
    """
    N, C, H, W = x.shape
    K, Cg = w.shape[:2]
    ph, pw = padding
    Kg = K // groups
    OH, OW = conv_output_size(H, 3, 1, ph, 1), conv_output_size(W, 3, 1, pw, 1)
    TH, TW = -(-OH // m), -(-OW // m)
    xp = np.zeros((N, C, TH * m + 2, TW * m + 2), np.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x  # TH*m + 2 >= OH + 2 = H + 2*ph: x fits
    y = np.zeros((N, K, TH * m, TW * m), np.float64)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for th in range(TH):
                for tw in range(TW):
                    oh0, ow0 = th * m, tw * m
                    for c in range(Cg):
                        y[n, k, oh0:oh0 + m, ow0:ow0 + m] += winograd_tile(
                            xp[n, g * Cg + c, oh0:oh0 + m + 2, ow0:ow0 + m + 2],
                            w[k, c].astype(np.float64), m)
            if b is not None:
                y[n, k] += float(b[k])
    return y[:, :, :OH, :OW].astype(x.dtype)


__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu_forward", "relu_backward", "max_pool2d_forward",
           "max_pool2d_backward", "winograd_tile", "conv2d_forward_winograd",
           "WINOGRAD_MATRICES"]
