"""im2col / col2im 2-D convolution: unfold the input, then GEMMs through BLAS.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW); G groups, Cg = C/G, Kg = K/G, P = OH*OW,
R = Cg*KH*KW. For a block of images the unfolded input (``unfold.im2col``) is

    cols[i, c*KH*KW + r*KW + s, oh*OW + ow]
        = x[n0 + i, c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

(0 outside the input), so group g's rows are one contiguous block and, with
Wg = w[g*Kg:(g+1)*Kg].reshape(Kg, R):

    forward          y[n, g]      = Wg @ cols[i, g]          a stack of GEMMs written straight
                                                             into NCHW, then + bias (and ReLU)
    backward-input   dcols[i, g]  = Wg^T @ gy[n, g]          then col2im adds overlapping taps
                                                             (stride 1 with K <= C: instead the
                                                             forward on gy with the transposed
                                                             filter, no fold; chosen here)
    backward-weight  dWg         += gy[:, g] @ cols[:, g]^T  one GEMM over the whole block: cols
                                                             is stored (R, nb*P) and gy copied to
                                                             (K, nb*P), so the reduction is long

Two pipelines run this, with the same functions and arguments:

- ``cblas_workers``: Numba workers on the OpenMP pool calling numpy's OpenBLAS ``cblas_?gemm``
  by address -- used wherever numpy's BLAS has it (``cblas_workers.available``). Where the conv
  is stride 1 along H and a row of taps is deep enough (``cblas_workers.uses_rows``), its
  forward and weight gradient run on a row-shift unfold instead (``unfold.unfold_rows``: only
  the KW taps of each padded row, KH times less to unfold, and KH accumulating GEMMs on column
  windows of it), and small output planes (``cblas_workers.MULTI_MAX_P``) run their forward and
  backward-input GEMMs on several images side by side (nb*P columns), so their rounding
  differs from the numpy pipeline's;
- ``numpy_matmul``: numpy.matmul from Python threads -- the portable fallback.

Which one runs is decided here (``pipeline_for``), and can be forced per call with
``pipeline="cblas"`` / ``"numpy"`` or for the process with the environment variable
CONVKIT_IM2COL_PIPELINE=cblas|numpy (read at each call; unset or "auto": cblas where available).
Either way, col2im walks one (n, c) input plane at a time, adding every tap that lands in it in a
fixed order, and the weight gradient keeps one partial per image block, summed in block order:
deterministic whichever worker takes which block.
"""
import functools
import os

import numpy as np

from convkit.kernels.cpu.conv_common import transposed_forward, transposed_padding
from convkit.kernels.cpu.conv_im2col import cblas_workers, numpy_matmul

PIPELINES = {"cblas": cblas_workers, "numpy": numpy_matmul}
PIPELINE_ENV = "CONVKIT_IM2COL_PIPELINE"


def pipeline_for(dtype, *sizes, pipeline=None):
    """The pipeline module that runs a problem of ``dtype`` whose sizes (N, C, K, P) are given:
    ``pipeline`` ("auto", "cblas", "numpy"; None: CONVKIT_IM2COL_PIPELINE, default "auto"), where
    "auto" is cblas wherever numpy's BLAS has it. A problem with a zero size has no GEMM to run:
    the numpy pipeline returns its (empty or zero) result."""
    source = "pipeline" if pipeline is not None else PIPELINE_ENV
    name = pipeline if pipeline is not None else os.environ.get(PIPELINE_ENV, "auto")
    if name not in ("auto", "cblas", "numpy"):
        raise ValueError(f"{source} must be 'auto', 'cblas' or 'numpy', got {name!r}")
    if name == "numpy" or (sizes and min(sizes) == 0):
        return numpy_matmul
    if cblas_workers.available(dtype):
        return cblas_workers
    if name == "cblas":
        raise ValueError(f"{source}='cblas', but numpy's BLAS exposes no ILP64 cblas_?gemm for "
                         f"{np.dtype(dtype)} here; use 'numpy' or 'auto'")
    return numpy_matmul


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False, pipeline=None):
    """y: (N, K, OH, OW); with ``relu`` the ReLU is applied as each block of y is stored."""
    sizes = (x.shape[0], x.shape[1], w.shape[0], out_hw[0] * out_hw[1])
    return pipeline_for(x.dtype, *sizes, pipeline=pipeline).forward(
        x, w, b, stride, padding, dilation, groups, out_hw, relu)


def backward_input(gy, w, input_shape, stride, padding, dilation, groups, pipeline=None):
    """grad_input: (N, C, H, W). Stride 1 with no more output than input channels: the forward
    on gy with the transposed filter, which unfolds no more than col2im would fold and skips the
    fold (a scattered add): ResNet 3x3 C64 0.93x, dilated 3x3 C64 0.88x the col2im time measured
    here; with more output channels (SimpleCNN conv2: 1.3x, C=1 conv1: 7x) col2im stays."""
    N, K, OH, OW = gy.shape
    C = input_shape[1]
    KH, KW = w.shape[2], w.shape[3]
    if (tuple(stride) == (1, 1) and KH * KW > 1 and K <= C
            and min(transposed_padding(w.shape, padding, dilation)) >= 0):
        return transposed_forward(functools.partial(forward, pipeline=pipeline), gy, w,
                                  input_shape, stride, padding, dilation, groups)
    return pipeline_for(gy.dtype, N, C, K, OH * OW, pipeline=pipeline).backward_input(
        gy, w, input_shape, stride, padding, dilation, groups)


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups, pipeline=None):
    """grad_weight: (K, Cg, KH, KW), the correlation of x with grad_output."""
    sizes = (x.shape[0], x.shape[1], weight_shape[0], gy.shape[2] * gy.shape[3])
    return pipeline_for(x.dtype, *sizes, pipeline=pipeline).backward_weight(
        x, gy, weight_shape, stride, padding, dilation, groups)


__all__ = ["forward", "backward_input", "backward_weight", "pipeline_for", "PIPELINES",
           "PIPELINE_ENV"]
