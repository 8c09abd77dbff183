"""The public ops, with torch.nn.functional's signatures plus ``algorithm=`` for conv2d.

Every argument is checked here, once, before any kernel runs (the kernels assume valid input):
wrong types, ranks, dtypes, devices and shapes raise a Python exception whose message names the
argument and what was expected, in torch's words where torch has them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from convkit.autograd import (
    Conv2dFunction,
    Conv2dReLUFunction,
    MaxPool2dFunction,
    ReLUFunction,
    apply,
    needs_autograd,
    ops,
    relu_inplace,
)
from convkit.autograd.ops import (
    INT_DTYPES,
    REDUCED_DTYPES,
    dense_in_order,
    elementwise_strides,
    with_strides,
)
from convkit.engine.algorithm import (
    check_winograd,
    select_algorithm,  # noqa: F401  (public name)
)
from convkit.kernels.shapes import (
    ArgumentError,
    DtypeError,
    DtypeNotImplementedError,
    check_conv2d,
    check_conv2d_kernel,
    check_max_pool2d,
    conv2d_padding,
    max_pool2d_args,
    pair,
)

IntOrPair = Union[int, Sequence[int]]
# the dtypes the kernels compute in; float16 / bfloat16 (REDUCED_DTYPES) are computed in float32
# and rounded once at the end by the ops (what torch's CPU kernels do for them: float32
# accumulation), so relu and max_pool2d are exact and conv2d is within one rounding of torch
KERNEL_DTYPES = (torch.float32, torch.float64)
FLOAT_DTYPES = KERNEL_DTYPES + REDUCED_DTYPES
_DTYPE_WORDS = "torch.float32, torch.float64, torch.float16 or torch.bfloat16"
ALGORITHMS = ("auto", "direct", "im2col", "winograd")


def _check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}(): argument '{name}' must be a torch.Tensor, "
                        f"not {type(t).__name__}")


def _check_float(t: torch.Tensor, name: str, op: str, integers: bool = False) -> None:
    """t has a dtype the op computes in: floating, or (``integers``) an integer dtype on the
    CPU, as torch's relu and max_pool2d take."""
    if t.dtype in FLOAT_DTYPES or (integers and t.dtype in INT_DTYPES and t.is_cpu):
        return
    if t.dtype == torch.bool and op == "relu":
        raise DtypeError("relu(): Boolean inputs not supported for relu")
    torch_name = t.type().rsplit(".", 1)[-1][:-len("Tensor")]  # torch.bool -> 'Bool'
    raise DtypeNotImplementedError(
        f"{op}(): \"{op}\" not implemented for '{torch_name}': expected {name} to have a "
        f"floating dtype ({_DTYPE_WORDS}){' or an integer dtype' if integers else ''}, but got "
        f"{t.dtype}")


def _autocast(*tensors):
    """The tensors as torch's autocast hands them to a lower-precision op such as conv2d: inside
    ``torch.autocast(device, dtype)``, float32 / float16 / bfloat16 tensors in the autocast dtype
    (float64 ones and None unchanged); outside it, unchanged."""
    if not _any_autocast():
        return tensors
    device_type = tensors[0].device.type
    if device_type not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t
                 for t in tensors)


_AUTOCAST_ELIGIBLE = (torch.float32,) + REDUCED_DTYPES
_AUTOCAST_DEVICES = ("cpu", "cuda")  # the devices convkit runs on (others have no kernels)
_any_autocast = torch._C._is_any_autocast_enabled  # one C call where no autocast is on


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: IntOrPair = 1, padding: Union[str, IntOrPair] = 0, dilation: IntOrPair = 1,
           groups: int = 1, *, algorithm: str = "auto") -> torch.Tensor:
    """2-D convolution (cross-correlation) as ``torch.nn.functional.conv2d``.

    input: (N, C, H, W) or unbatched (C, H, W); weight: (K, C/groups, KH, KW); bias: (K,) or None.
    ``padding`` is an int, a pair, 'valid' or 'same' (stride 1 only; for an even effective kernel
    the extra row/column goes bottom/right, as torch). ``algorithm`` is "direct", "im2col" or
    "auto" (``convkit.engine.algorithm``: a fixed rule of the shape per pass, the same on every
    device; :func:`select_algorithm` says which it picks).
    """
    return _conv2d(False, input, weight, bias, stride, padding, dilation, groups,
                   algorithm)


def conv2d_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride: IntOrPair = 1, padding: Union[str, IntOrPair] = 0,
                dilation: IntOrPair = 1, groups: int = 1, *,
                algorithm: str = "auto") -> torch.Tensor:
    """``relu(conv2d(...))`` fused into one autograd op: the ReLU is applied in place to the
    convolution's output and only that output is saved for backward (one tensor fewer per
    layer than conv2d followed by relu). Arguments as :func:`conv2d`."""
    return _conv2d(True, input, weight, bias, stride, padding, dilation, groups,
                   algorithm)


def _conv2d(relu, input, weight, bias, stride, padding, dilation, groups, algorithm):
    """Validate and normalise the arguments, then run the conv (then ReLU, fused, if ``relu``):
    its Function where autograd has something to record, else the op itself."""
    _check_tensor(input, "input", "conv2d")
    _check_tensor(weight, "weight", "conv2d")
    if bias is not None:
        _check_tensor(bias, "bias", "conv2d")
    input, weight, bias = _autocast(input, weight, bias)
    stride, padding, dilation, extra, unbatched = _planned(
        _CONV2D_PLANS, (input, weight, bias), (stride, padding, dilation, groups, algorithm), (),
        _conv2d_plan, input, weight, bias, stride, padding, dilation, groups, algorithm)
    if unbatched:
        input = input.unsqueeze(0)
    if extra is not None:  # 'same' with an even effective kernel: the extra row/column first
        input = F.pad(input, extra)
    if needs_autograd(input, weight, bias):
        y = apply(Conv2dReLUFunction if relu else Conv2dFunction, input, weight, bias,
                  *stride, *padding, *dilation, groups, algorithm)
    else:
        y = (ops.conv2d_relu if relu else ops.conv2d)(input, weight, bias, stride, padding,
                                                     dilation, groups, algorithm)
    return y.squeeze(0) if unbatched else y


# Validated calls, remembered: a conv2d or max_pool2d whose tensors' shapes and dtypes and whose
# arguments (of exactly the types seen before: 1.0 is not 1 here) were validated once skips the
# checks and the normalisation (~5 us of a tiny call). CPU tensors only: a device comparison
# costs as much as it saves. Bounded: a table is cleared when full.
_CONV2D_PLANS: dict = {}
_POOL_PLANS: dict = {}
_MAX_PLANS = 512
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_is_dynamo_compiling = torch.compiler.is_dynamo_compiling


def _planned(plans: dict, tensors, args, flags, make, *make_args):
    """``make(*make_args)`` (it checks the call and returns its normalised arguments, or
    raises), looked up in ``plans`` first and remembered there where :func:`_plan_key` gives a
    key: only calls that passed the checks are remembered."""
    key = _plan_key(tensors, args, flags)
    plan = plans.get(key) if key is not None else None
    if plan is None:
        plan = make(*make_args)
        if key is not None:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = plan
    return plan


def _plan_key(tensors, args, flags):
    """The key of a call: its arguments and its tensors' shapes and dtypes; None (not remembered)
    where a tensor is not a plain CPU tensor (or None), an argument is not None or of an exact
    type (:func:`_exact_args`), a flag is not a bool, or dynamo traces the call (fake or symbolic
    tensors, whose shapes may not hash). Exact types keep 1.0 and True from matching a key of 1
    (they hash alike): they take the checks, and their errors, every call."""
    if _is_dynamo_compiling():
        return None
    for a in args:
        if a is not None and not _exact_args(a):
            return None
    for f in flags:
        if type(f) is not bool:
            return None
    key = [*args, *flags]
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) in _PLAIN and t.is_cpu:
            key += (t.shape, t.dtype)
        else:
            return None
    return tuple(key)


def _exact_args(value) -> bool:
    """``value`` is an int, a str or a tuple of ints, of exactly those types (no bool, no float,
    no numpy scalar, no list: those take the full check every call)."""
    kind = type(value)
    if kind is int or kind is str:
        return True
    if kind is not tuple:
        return False
    for v in value:
        if type(v) is not int:
            return False
    return True


def _conv2d_plan(input, weight, bias, stride, padding, dilation, groups, algorithm):
    """Check every argument (raising in torch's words) and normalise them: (stride, padding,
    dilation) pairs, the extra 'same' padding (None when there is none) and whether the input
    is unbatched."""
    if algorithm not in ALGORITHMS:
        raise ArgumentError(f"conv2d(): algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if input.dim() not in (3, 4):
        raise ArgumentError(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got "
                            f"input of size: {list(input.shape)}")
    if weight.dim() != 4:
        batched = [1] * (input.dim() == 3) + list(input.shape)  # torch reports it batched
        raise ArgumentError(f"conv2d(): Expected {weight.dim()}-dimensional input for "
                            f"{weight.dim()}-dimensional weight{list(weight.shape)}, but got "
                            f"{len(batched)}-dimensional input of size {batched} instead: "
                            f"expected weight to be 4-D (out_channels, in_channels/groups, kH, "
                            f"kW)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise DtypeError(f"conv2d(): Input type ({input.dtype}) and {name} type ({t.dtype}) "
                             f"should be the same")
    _check_float(input, "input", "conv2d")
    device = input.device
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != device:
            raise RuntimeError(f"conv2d(): expected all tensors to be on the same device, but "
                               f"input is on {device} and {name} on {t.device}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    extra = None
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if isinstance(padding, str):
        check_conv2d_kernel(tuple(weight.shape))  # before 'same' padding is worked out from it
        padding, extra = conv2d_padding(padding, tuple(weight.shape[2:]), stride, dilation)
        if any(extra):  # 'same' with an even effective kernel: checked on the padded input
            input = F.pad(input, extra)
        else:
            extra = None
    else:
        padding = pair(padding, "padding")
    check_conv2d(tuple(input.shape), tuple(weight.shape),
                 None if bias is None else tuple(bias.shape),
                 stride, padding, dilation, groups)
    if algorithm == "winograd":
        check_winograd(tuple(weight.shape), stride, dilation, "conv2d()")
    return stride, padding, dilation, extra, unbatched


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0) elementwise for any shape and layout, bit for bit as
    ``torch.nn.functional.relu`` (NaN propagates, -0.0 stays); the result keeps the input's
    stride order."""
    _check_tensor(input, "input", "relu")
    _check_float(input, "input", "relu", integers=True)
    if not input.is_contiguous():
        # work on the permutation that makes torch's result layout contiguous (a dense input,
        # channels-last say, is then not copied), and give the result torch's very strides
        strides = elementwise_strides(input)
        permuted, inverse = dense_in_order(input, strides)
        if inplace and not permuted.is_contiguous():
            return input.copy_(apply(ReLUFunction, input))
        y = relu(permuted if permuted.is_contiguous() else permuted.contiguous(), inplace)
        return input if inplace else with_strides(y.permute(inverse), strides)
    if inplace:
        return relu_inplace(input)
    if needs_autograd(input):
        return apply(ReLUFunction, input)
    return ops.relu(input)


def relu_(input: torch.Tensor) -> torch.Tensor:
    """In-place :func:`relu`."""
    return relu(input, inplace=True)


def max_pool2d_with_indices(input: torch.Tensor, kernel_size: IntOrPair,
                            stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
                            dilation: IntOrPair = 1, ceil_mode: bool = False,
                            return_indices: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D max-pool returning (output, indices); indices index each input plane's H*W."""
    _check_tensor(input, "input", "max_pool2d")
    kernel, stride, padding, dilation, ceil_mode, unbatched = _planned(
        _POOL_PLANS, (input,), (kernel_size, stride, padding, dilation), (ceil_mode,),
        _max_pool2d_plan, input, kernel_size, stride, padding, dilation, ceil_mode)
    if unbatched:
        input = input.unsqueeze(0)
    if needs_autograd(input):
        y, indices = apply(MaxPool2dFunction, input, *kernel, *stride, *padding, *dilation,
                           ceil_mode)
    else:
        y, indices = ops.max_pool2d(input, kernel, stride, padding, dilation, ceil_mode)
    if unbatched:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return y, indices


def _max_pool2d_plan(input, kernel_size, stride, padding, dilation, ceil_mode):
    """Check max_pool2d's arguments (raising in torch's words) and normalise them."""
    if input.dim() not in (3, 4):
        raise ArgumentError(f"max_pool2d(): non-empty 3D or 4D (batch mode) tensor expected for "
                            f"input, but got input of size: {list(input.shape)}")
    _check_float(input, "input", "max_pool2d", integers=True)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"max_pool2d(): argument 'ceil_mode' must be bool, not "
                        f"{type(ceil_mode).__name__}")
    kernel, stride, padding, dilation = max_pool2d_args(kernel_size, stride, padding, dilation)
    unbatched = input.dim() == 3
    shape = (1,) + tuple(input.shape) if unbatched else tuple(input.shape)
    check_max_pool2d(shape, kernel, stride, padding, dilation, ceil_mode, tuple(input.shape))
    return kernel, stride, padding, dilation, ceil_mode, unbatched


def max_pool2d(input: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
               padding: IntOrPair = 0, dilation: IntOrPair = 1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max-pool as ``torch.nn.functional.max_pool2d`` (stride defaults to kernel_size)."""
    y, indices = max_pool2d_with_indices(input, kernel_size, stride, padding, dilation,
                                         ceil_mode)
    return (y, indices) if return_indices else y


PAD_MODES = ("constant", "reflect", "replicate", "circular", "symmetric")


def pad(input: torch.Tensor, pad: Sequence[int], mode: str = "constant",
        value: Optional[float] = None) -> torch.Tensor:
    """``torch.nn.functional.pad`` plus ``mode="symmetric"`` on the last two dims.

    symmetric repeats the edge when it mirrors (numpy's 'symmetric', scipy's boundary='symm'):
    a row [a b c] padded by 2 becomes [b a | a b c | c b]; any pad width, built from index_select
    so it is differentiable.
    """
    if mode not in PAD_MODES:
        raise ArgumentError(f"pad(): mode must be one of {PAD_MODES}, got {mode!r}")
    if mode != "symmetric":
        return F.pad(input, list(pad), mode=mode, value=value)
    if len(pad) != 4 or input.dim() < 2 or min(pad) < 0:
        raise ArgumentError(f"pad(): symmetric mode takes 4 non-negative pads (left, right, top, "
                            f"bottom) on an input of at least 2 dims, got pad={list(pad)}")
    left, right, top, bottom = pad
    for dim, before, after in ((-1, left, right), (-2, top, bottom)):
        n = input.shape[dim]
        i = torch.arange(-before, n + after, device=input.device) % (2 * n)
        input = input.index_select(dim, torch.where(i >= n, 2 * n - 1 - i, i))
    return input
