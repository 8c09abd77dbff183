"""Output sizes, argument normalisation and validation shared by the CPU and CUDA kernels.

Torch-free: everything here works on plain ints, tuples and shapes, so ``functional`` can check
every argument once, up front, before any Numba code runs. Messages follow torch's wording, and
the exception classes derive from both the Python type a user expects (``ValueError`` /
``TypeError``) and ``RuntimeError`` (what torch itself raises), so code written against either
keeps working.
"""
from __future__ import annotations

import numbers
from typing import Sequence, Tuple, Union

IntPair = Tuple[int, int]


class ArgumentError(ValueError, RuntimeError):
    """A shape or value argument is outside what the op accepts."""


class DtypeError(TypeError, RuntimeError):
    """A tensor has a dtype the op does not accept, or dtypes do not match."""


class DtypeNotImplementedError(DtypeError, NotImplementedError):
    """The op has no kernel for a tensor's dtype (torch raises NotImplementedError then)."""


class ArgumentTypeError(TypeError, ArgumentError):
    """An argument has the wrong Python type (a float stride, say): a TypeError, as torch
    raises, that is also an ArgumentError."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length of a convolution along one axis: floor((L + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Output length of a max-pool along one axis, torch's rule for ceil_mode included.

    With ceil_mode the last window may hang over the right edge, but it must start inside the
    input or the left padding, so a window that would start in the right padding is dropped.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (ceil_div(span, stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _is_int(v) -> bool:
    # the exact-type test first: the ABC check costs ~1 us, and every call checks several ints
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def pair(value: Union[int, Sequence[int]], name: str, op: str = "conv2d") -> IntPair:
    """Normalise an int or a 1- or 2-sequence of ints to a pair, as torch's ``_pair`` does."""
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(_is_int(v) for v in value):
        return (int(value[0]), int(value[-1]))
    is_sequence = isinstance(value, (tuple, list))
    wrong_type = not is_sequence or not all(_is_int(v) for v in value)
    raise (ArgumentTypeError if wrong_type else ArgumentError)(
        f"{op}: expected {name} to be a single integer value or a list of 2 values to match "
        f"the convolution dimensions, but got {name}={value!r}")


def conv2d_padding(padding, weight_hw: IntPair, stride: IntPair,
                   dilation: IntPair) -> Tuple[IntPair, Tuple[int, int, int, int]]:
    """Resolve conv2d's ``padding`` (int, pair, 'same' or 'valid').

    Returns ``((ph, pw), extra)`` where ``(ph, pw)`` is the symmetric padding the kernels take and
    ``extra = (left, right, top, bottom)`` is additional zero padding the caller applies first.
    It is non-zero only for 'same' with an even effective kernel, where torch pads the extra
    row/column at the bottom/right.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0, 0, 0)
        if padding != "same":
            raise ArgumentError(f"Invalid padding string: {padding!r}; expected 'same', 'valid', "
                                "an int or a pair of ints")
        if stride != (1, 1):
            raise ArgumentError("padding='same' is not supported for strided convolutions")
        total_h = dilation[0] * (weight_hw[0] - 1)
        total_w = dilation[1] * (weight_hw[1] - 1)
        ph, pw = total_h // 2, total_w // 2
        return (ph, pw), (0, total_w - 2 * pw, 0, total_h - 2 * ph)
    return pair(padding, "padding"), (0, 0, 0, 0)


def check_conv2d_kernel(weight_shape: Sequence[int]) -> None:
    """A kernel of at least 1x1 (torch fails on an empty one deep inside its backend)."""
    if min(weight_shape[2:]) < 1:
        raise ArgumentError(f"conv2d: expected a kernel of at least 1x1, but got weight of size "
                            f"{list(weight_shape)}")


def check_conv2d(input_shape: Sequence[int], weight_shape: Sequence[int], bias_shape,
                 stride: IntPair, padding: IntPair, dilation: IntPair, groups) -> None:
    """Validate a 4-D conv2d call (input already batched). Raises ArgumentError in torch's words."""
    if len(weight_shape) != 4:
        raise ArgumentError(f"conv2d: expected weight to be 4-D (out_channels, in_channels/groups, "
                            f"kH, kW), but got weight of size {list(weight_shape)}")
    if not _is_int(groups):
        raise ArgumentTypeError(f"conv2d: expected groups to be an int, but got {groups!r}")
    if groups <= 0:
        raise ArgumentError(f"conv2d: non-positive groups is not supported (groups={groups!r}); "
                            "expected a positive int")
    if min(stride) <= 0:
        raise ArgumentError(f"conv2d: non-positive stride is not supported (stride={stride})")
    if min(padding) < 0:
        raise ArgumentError(f"conv2d: negative padding is not supported (padding={padding})")
    if min(dilation) <= 0:
        raise ArgumentError(f"conv2d: dilation should be greater than zero, but got "
                            f"dilation={list(dilation)}")
    K, Cg, KH, KW = weight_shape
    check_conv2d_kernel(weight_shape)
    if input_shape[0] and input_shape[1] and not (input_shape[2] and input_shape[3]):
        raise ArgumentError(f"conv2d: Only zero batch or zero channel inputs are supported, but "
                            f"got input shape: {list(input_shape)}")
    if K < groups:
        raise ArgumentError(f"Given groups={groups}, expected weight to be at least {groups} at "
                            f"dimension 0, but got weight of size {list(weight_shape)} instead")
    if K % groups != 0:
        raise ArgumentError(f"Given groups={groups}, expected weight to be divisible by {groups} "
                            f"at dimension 0, but got weight of size {list(weight_shape)} instead")
    if input_shape[1] != Cg * groups:
        raise ArgumentError(
            f"Given groups={groups}, weight of size {list(weight_shape)}, expected "
            f"input{list(input_shape)} to have {Cg * groups} channels, but got "
            f"{input_shape[1]} channels instead")
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ArgumentError(f"Given weight of size {list(weight_shape)}, expected bias to be "
                            f"1-dimensional with {K} elements, but got bias of size "
                            f"{list(bias_shape)} instead")
    H, W = input_shape[2], input_shape[3]
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    eff_h, eff_w = dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1
    if Hp < eff_h or Wp < eff_w:
        raise ArgumentError(
            f"Calculated padded input size per channel: ({Hp} x {Wp}). Kernel size: "
            f"({eff_h} x {eff_w}). Kernel size can't be greater than actual input size")


def _pool_pair(value, name: str, words: str) -> IntPair:
    """max_pool2d's int or 1-/2-sequence of ints as a pair; torch's message otherwise."""
    try:
        return pair(value, name, "max_pool2d")
    except ArgumentError as e:
        raise type(e)(f"max_pool2d: {name} must {words}; got {name}={value!r}") from None


def max_pool2d_args(kernel_size, stride, padding, dilation) -> Tuple[IntPair, IntPair, IntPair,
                                                                   IntPair]:
    """Normalise max_pool2d's arguments; ``stride`` None or empty means ``kernel_size``."""
    kernel = _pool_pair(kernel_size, "kernel_size",
                        "either be a single int, or a tuple of two ints")
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pool_pair(stride, "stride",
                        "either be omitted, a single int, or a tuple of two ints")
    return kernel, stride, \
        _pool_pair(padding, "padding", "either be a single int, or a tuple of two ints"), \
        _pool_pair(dilation, "dilation", "be either a single int, or a tuple of two ints")


def _trunc_half(a: int) -> int:
    """a / 2 rounded toward zero, as C++ divides."""
    return a // 2 if a >= 0 else -(-a // 2)


def check_max_pool2d(input_shape: Sequence[int], kernel: IntPair, stride: IntPair,
                     padding: IntPair, dilation: IntPair, ceil_mode: bool,
                     given_shape: Sequence[int] = None) -> IntPair:
    """Validate a 4-D max_pool2d call and return the output size (OH, OW): torch's checks in
    torch's order (``pooling_output_shape`` for each axis, then ``pool2d_shape_check``), so the
    same bad call raises the same message (naming ``given_shape``, the unbatched input's, where
    the caller batched it)."""
    for k, s, p, d in zip(kernel, stride, padding, dilation):
        if s == 0:
            raise ArgumentError("max_pool2d: stride should not be zero")
        if p < 0:
            raise ArgumentError(f"max_pool2d: pad must be non-negative, but got pad: {p}")
        if p > _trunc_half((k - 1) * d + 1):
            raise ArgumentError(f"max_pool2d: pad should be at most half of effective kernel "
                                f"size, but got pad={p}, kernel_size={k} and dilation={d}")
    if min(kernel) <= 0:
        raise ArgumentError(f"max_pool2d: kernel size should be greater than zero, but got kH: "
                            f"{kernel[0]} kW: {kernel[1]}")
    if min(stride) <= 0:
        raise ArgumentError(f"max_pool2d: stride should be greater than zero, but got dH: "
                            f"{stride[0]} dW: {stride[1]}")
    if min(dilation) <= 0:
        raise ArgumentError(f"max_pool2d: dilation should be greater than zero, but got "
                            f"dilationH: {dilation[0]} dilationW: {dilation[1]}")
    N, C, H, W = input_shape
    if C == 0 or H == 0 or W == 0:
        raise ArgumentError(f"max_pool2d: Expected 3D or 4D (batch mode) tensor with optional 0 "
                            f"dim batch size for input, but got:{list(given_shape or input_shape)}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ArgumentError(f"max_pool2d: pad should be smaller than or equal to half of kernel "
                            f"size, but got padW = {padding[1]}, padH = {padding[0]}, "
                            f"kW = {kernel[1]}, kH = {kernel[0]}")
    OH = pool_output_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ArgumentError(f"max_pool2d: Given input size: ({C}x{H}x{W}). Calculated output "
                            f"size: ({C}x{OH}x{OW}). Output size is too small")
    return OH, OW


def conv2d_flops(input_shape, weight_shape, output_shape) -> int:
    """Multiply-adds x 2 of one conv2d forward (bias excluded)."""
    K, Cg, KH, KW = weight_shape
    N, _, OH, OW = output_shape
    return 2 * N * K * OH * OW * Cg * KH * KW


__all__ = ["ArgumentError", "ArgumentTypeError", "DtypeError", "DtypeNotImplementedError",
           "ceil_div", "conv_output_size",
           "pool_output_size", "pair", "conv2d_padding", "check_conv2d_kernel", "check_conv2d",
           "max_pool2d_args", "check_max_pool2d", "conv2d_flops"]
