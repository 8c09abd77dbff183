"""The CPU kernels ``python -m convkit.runtime.isa`` compiles, each with example arguments of the
types its Python wrapper passes (small arrays of the dtype, rank and layout, and the scalars), so
every kernel can be compiled, and its machine code read, without running anything.

Each builder below mirrors its wrapper's call (the wrapper named in the comment), through the
same helpers (``kinner_filter``, ``group_channels_last``, ``bias_operand``, pool's key
constants); ``tests/test_runtime_isa.py`` checks that running the wrappers compiles exactly these
signatures, so a wrapper that changes its argument types fails there. Run as a main module by
``convkit.runtime.isa.run`` in a child process configured for the target CPU.
"""
import numpy as np

from convkit.kernels.cpu import conv_common, pool, relu
from convkit.kernels.cpu.conv_common import bias_operand, group_channels_last
from convkit.kernels.cpu.conv_direct import (
    backward_input_cinner,
    backward_input_kdot,
    backward_input_plane,
    backward_weight_kinner,
    backward_weight_plane,
    bias,
    forward_kinner,
    forward_plane,
    forward_shifted,
)
from convkit.kernels.cpu.conv_im2col import cblas_workers, unfold
from convkit.kernels.cpu.conv_winograd import pipeline as winograd
from convkit.kernels.cpu.conv_winograd.transforms import constants
from convkit.runtime import blas

# the example problem: N, C, H, W, K, 3x3 filter, stride 1, padding 1, one group
N, C, H, W, K, KH, KW = 2, 8, 10, 10, 8, 3, 3
STRIDE, PADDING, DILATION, GROUPS = (1, 1), (1, 1), (1, 1), 1
OH, OW = H, W


def kernel_specs(dtype) -> list:
    """[(name, kernel, args)] for ``dtype`` (float32 or float64): kernel is a ``runtime.jit.Twin``
    or a Numba dispatcher, args what its wrapper passes it."""
    dt = np.dtype(dtype)
    x = np.zeros((N, C, H, W), dt)
    w = np.zeros((K, C // GROUPS, KH, KW), dt)
    y = np.zeros((N, K, OH, OW), dt)
    b, has_bias = bias_operand(np.zeros(K, dt), dt)
    conv = (*STRIDE, *PADDING, *DILATION)
    gyt = group_channels_last(y, GROUPS)
    Cg, Kg = C // GROUPS, K // GROUPS
    P, CKK = OH * OW, C * KH * KW
    Hp = OH + (KH - 1) * DILATION[0]
    itype, *keys = pool._KEYS[dt]
    PH, PW = H // 2, W // 2
    # conv_winograd: F(2x2, 3x3) transforms of 4 x 4 points; V and M as the wrapper's scratch
    # (slots, points, channels, tiles), the weight gradient's chunks one slot of each
    A2, TILES = 16, 25
    U, cs = np.zeros((A2, K, Cg), dt), constants(dt)
    V, M = np.zeros((1, A2, C, TILES), dt), np.zeros((1, A2, K, TILES), dt)
    gemm = blas.gemm_address(dt.char) or 0
    wino = (2, *PADDING, GROUPS, 1)
    return [
        # conv_direct/<module>.forward / backward_input / backward_weight / bias
        ("conv_direct.forward_shifted", forward_shifted._forward_shifted,
         (x, np.ascontiguousarray(w), b, has_bias, False, *PADDING, *DILATION, GROUPS, y)),
        ("conv_direct.forward_kinner", forward_kinner._forward_kinner,
         (x, forward_kinner.kinner_filter(w, GROUPS), b, has_bias, False, *conv, y)),
        ("conv_direct.forward_plane", forward_plane._forward_plane,
         (x, w, b, has_bias, False, *conv, GROUPS, y)),
        ("conv_direct.backward_input_cinner", backward_input_cinner._backward_input_cinner,
         (gyt, np.zeros((GROUPS, KH, KW, Kg, Cg), dt), *conv, x)),
        ("conv_direct.backward_input_kdot", backward_input_kdot._backward_input_kdot,
         (gyt, np.zeros((GROUPS, KH, KW, Cg, Kg), dt), *conv, x)),
        ("conv_direct.backward_input_plane", backward_input_plane._backward_input_plane,
         (y, w, *conv, GROUPS, x)),
        ("conv_direct.backward_weight_kinner", backward_weight_kinner._backward_weight_kinner,
         (x, gyt, *conv, np.zeros((GROUPS, Cg, KH, KW, Kg), dt))),
        ("conv_direct.backward_weight_plane", backward_weight_plane._backward_weight_plane,
         (x, y, *conv, GROUPS, w)),
        ("conv_direct.backward_bias", bias._backward_bias, (y, np.zeros(K, dt))),
        # conv_common.transposed_filter (direct backward-input as a forward conv)
        ("conv_common.transposed_filter", conv_common._transpose_filter,
         (np.ascontiguousarray(w), GROUPS, np.zeros((C, K // GROUPS, KH, KW), dt))),
        # conv_im2col/numpy_matmul.py and cblas_workers.py (where they are called from compiled
        # code, the scalars are int64 elements of the argument block, as here)
        ("conv_im2col.im2col", unfold.im2col,
         (x, 0, N, KH, KW, *conv, OH, OW, np.zeros((N * CKK, P), dt), CKK, 0)),
        ("conv_im2col.col2im", unfold.col2im,
         (np.zeros((N * CKK, P), dt), 0, N, KH, KW, *conv, OH, OW, x, CKK, 0)),
        ("conv_im2col.unfold_rows", unfold.unfold_rows,
         (x, 0, KW, STRIDE[1], *PADDING, DILATION[1], Hp, OW, np.zeros((C * KW, Hp * OW), dt))),
        ("conv_im2col.epilogue", unfold.epilogue,
         (y.reshape(N, K, P), b, has_bias, False, 0, N)),
        ("conv_im2col.nchw_to_kp", unfold.nchw_to_kp,
         (y.reshape(N, K, P), 0, N, np.zeros((K, N * P), dt))),
        # conv_im2col/cblas_workers._run: each pass's team of T workers (compiling a team
        # compiles its worker, which T == 1 calls alone)
        *((f"conv_im2col.cblas_{name}", team, (np.zeros(cblas_workers.NARGS, np.int64), dt, 2))
          for name, (_, team) in cblas_workers._PASSES.items()),
        # conv_winograd.forward / backward_weight (backward_input runs forward's kernels)
        ("conv_winograd.filter_transform", winograd.filter_transform,
         (np.ascontiguousarray(w), 2, cs, U)),
        ("conv_winograd.grad_filter_transform", winograd.grad_filter_transform,
         (U, 2, cs, np.zeros_like(w))),
        ("conv_winograd.forward_chunks", winograd.forward_chunks,
         (x, U, b, has_bias, False, y, V, M, *wino, 1, gemm, dt, np.zeros(2, np.int64))),
        ("conv_winograd.weight_chunks", winograd.weight_chunks,
         (x, y, U, V[0], M[0], *wino, gemm, dt)),
        ("conv_winograd.weight_workers", winograd.weight_workers,
         (x, y, U[None], V, M, *wino, gemm, dt, np.zeros(2, np.int64))),
        # pool.max_pool2d_forward (general and 2x2 paths) / max_pool2d_backward
        ("pool.max_pool2d_forward", pool._max_pool2d_forward,
         (x.reshape(N * C, H * W).view(itype), H, W, 3, 3, 2, 2, 1, 1, 1, 1,
          np.zeros((N * C, PH, PW), itype), np.zeros((N * C, PH, PW), np.int64), *keys)),
        ("pool.max_pool2d_2x2", pool._max_pool2d_2x2,
         (x.reshape(N * C, H, W), np.zeros((N * C, PH, PW), dt),
          np.zeros((N * C, PH, PW), np.int64))),
        ("pool.max_pool2d_backward", pool._max_pool2d_backward,
         (np.zeros((N, C, PH, PW), dt), np.zeros((N, C, PH, PW), np.int64), x)),
        # relu.relu_forward / relu_backward (NCHW activations)
        ("relu.relu_forward", relu._relu_forward, (x, np.zeros_like(x))),
        ("relu.relu_backward", relu._relu_backward, (x, x, np.zeros_like(x))),
    ]


if __name__ == "__main__":
    from convkit.runtime.isa import child_main

    child_main(kernel_specs)
