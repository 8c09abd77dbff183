"""Direct 2-D convolution (cross-correlation, as torch) with no unfolded buffer: the dispatch table.

x: (N, C, H, W), w: (K, Cg, KH, KW), y: (N, K, OH, OW), G groups, Cg = C/G, Kg = K/G.

    y[n, k, oh, ow] = b[k] + sum_{c<Cg, r<KH, s<KW} w[k, c, r, s]
                             * x[n, g*Cg + c, oh*sh - ph + r*dil_h, ow*sw - pw + s*dil_w]

with g = k // Kg and taps outside the input read as zero (the plain loop nest is
``convkit.kernels.reference.conv2d_forward``). Each version below is one module, named for its
loop order, with the formula it computes in its docstring and a function with the signature of
its pass (``forward``, ``backward_input``, ``backward_weight``: each can be called, and tested,
on its own); this table chooses between them:

  pass             version: module.function                    taken when (first match)
  forward          3 shifted planes: forward_shifted.forward   stride 1, Cg <= SHIFTED_MAX_CHANNELS
                   2 channel-inner: forward_kinner.forward     Kg >= KINNER_MIN_CHANNELS
                   1 plane: forward_plane.forward              otherwise
  backward_input   forward 2 on the transposed filter:         stride 1, transposed padding >= 0,
                     forward_kinner.backward_input               Cg >= KINNER_MIN_CHANNELS
                   forward 3 on the transposed filter:         stride 1, transposed padding >= 0,
                     forward_shifted.backward_input              Kg <= SHIFTED_MAX_CHANNELS
                   2 gather, channel-inner:                    Cg >= KINNER_MIN_CHANNELS
                     backward_input_cinner.backward_input
                   3 gather, dot over Kg:                      Kg >= KINNER_MIN_CHANNELS
                     backward_input_kdot.backward_input
                   1 plane scatter:                            otherwise
                     backward_input_plane.backward_input
  backward_weight  2 channel-inner:                            Kg >= KINNER_MIN_CHANNELS
                     backward_weight_kinner.backward_weight
                   1 plane:                                    otherwise
                     backward_weight_plane.backward_weight
  bias             bias.conv2d_backward_bias                   always (shared with im2col)

A stride-1 backward-input is a transposed convolution (as Chainer writes it): a forward conv of
grad_output, padded by dilation*(K-1) - padding, with the filter flipped in space and its in/out
channels swapped within each group (``conv_common.transposed_forward``), so it reuses forward
versions 2 and 3, with the roles of Cg and Kg swapped. Every version computes, once per tap, the
output columns whose taps land inside the input (``conv_common.col_range``), so no inner loop
has a bounds test; each parallel task owns whole output rows or planes, so no two threads write
the same element and the results are deterministic.
"""
from convkit.kernels.cpu.conv_common import transposed_padding
from convkit.kernels.cpu.conv_direct import (
    backward_input_cinner,
    backward_input_kdot,
    backward_input_plane,
    backward_weight_kinner,
    backward_weight_plane,
    forward_kinner,
    forward_plane,
    forward_shifted,
)
from convkit.kernels.cpu.conv_direct.bias import conv2d_backward_bias

# channels per group from which a loop over them is the innermost one (channel-inner forward and
# weight gradient, the gathering input gradients): it must fill at least one AVX2 float32 vector.
# Measured here (float32, N16 C16 28^2 3x3 stride 2, ms channel-inner/plane): forward 6.1/5.0 at
# Kg=2, 4.8/7.7 at 4, 6.4/14.2 at 8; weight gradient 6.7/5.0, 7.5/8.0, 7.6/16.4
KINNER_MIN_CHANNELS = 8
# input channels per group up to which a stride-1 forward uses shifted planes: chosen for conv1
# (C=1) and depthwise convs (depthwise 3x3 forward 25.8 -> ~8 ms when it came in). Measured here
# since (float32, N16 28^2 K32 3x3, ms shifted/channel-inner): 0.7/2.2 at Cg=1, 3.5/8.3 at 4,
# 5.0/14.8 at 8, 8.2/24.2 at 16: conservative for this shape; not raised (other shapes unmeasured)
SHIFTED_MAX_CHANNELS = 4


def forward_version(weight_shape, stride, groups):
    """The forward function the table picks for this filter shape, stride and groups."""
    K, Cg = weight_shape[0], weight_shape[1]
    if tuple(stride) == (1, 1) and Cg <= SHIFTED_MAX_CHANNELS:
        return forward_shifted.forward
    if K // groups >= KINNER_MIN_CHANNELS:
        return forward_kinner.forward
    return forward_plane.forward


def backward_input_version(weight_shape, stride, padding, dilation, groups):
    """The backward-input function the table picks."""
    K, Cg = weight_shape[0], weight_shape[1]
    Kg = K // groups
    if tuple(stride) == (1, 1) and min(transposed_padding(weight_shape, padding, dilation)) >= 0:
        if Cg >= KINNER_MIN_CHANNELS:
            return forward_kinner.backward_input
        if Kg <= SHIFTED_MAX_CHANNELS:
            return forward_shifted.backward_input
    if Cg >= KINNER_MIN_CHANNELS:
        return backward_input_cinner.backward_input
    if Kg >= KINNER_MIN_CHANNELS:
        return backward_input_kdot.backward_input
    return backward_input_plane.backward_input


def backward_weight_version(weight_shape, groups):
    """The backward-weight function the table picks."""
    if weight_shape[0] // groups >= KINNER_MIN_CHANNELS:
        return backward_weight_kinner.backward_weight
    return backward_weight_plane.backward_weight


def forward(x, w, b, stride, padding, dilation, groups, out_hw, relu=False):
    """y: (N, K, OH, OW); with ``relu`` the ReLU is applied as each block of y is stored."""
    return forward_version(w.shape, stride, groups)(x, w, b, stride, padding, dilation, groups,
                                                    out_hw, relu)


def backward_input(gy, w, input_shape, stride, padding, dilation, groups):
    """grad_input: (N, C, H, W), the transposed convolution of grad_output with w."""
    return backward_input_version(w.shape, stride, padding, dilation, groups)(
        gy, w, input_shape, stride, padding, dilation, groups)


def backward_weight(x, gy, weight_shape, stride, padding, dilation, groups):
    """grad_weight: (K, Cg, KH, KW), the correlation of x with grad_output."""
    return backward_weight_version(weight_shape, groups)(x, gy, weight_shape, stride, padding,
                                                         dilation, groups)


__all__ = ["forward", "backward_input", "backward_weight", "conv2d_backward_bias",
           "forward_version", "backward_input_version", "backward_weight_version",
           "KINNER_MIN_CHANNELS", "SHIFTED_MAX_CHANNELS"]
