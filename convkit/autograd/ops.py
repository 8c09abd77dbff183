"""convkit's kernels as PyTorch operators: ``torch.ops.convkit.*``.

Every kernel-level op is defined with ``torch.library`` under the ``convkit`` namespace and
implemented for the CPU and CUDA dispatch keys (both call ``convkit.engine.engine_for(device)``),
with a fake (meta) implementation whose shapes come from ``convkit.kernels.shapes`` and a vmap
rule, so torch.compile, torch.export, FakeTensor tracing and torch.func see them as ops::

    conv2d(input, weight, bias?, stride[2], padding[2], dilation[2], groups, algorithm) -> y
    conv2d_relu(...as conv2d...) -> relu(y)      bias and ReLU as the conv kernels' epilogue
    conv2d_backward_input(grad_output, weight, input_size[4], ...conv args...) -> grad_input
    conv2d_backward_weight(input, grad_output, weight_size[4], ...conv args...) -> grad_weight
    conv2d_backward_bias(grad_output) -> grad_bias
    relu(input) -> y            relu_(input!) -> ()            relu_backward(grad_output, y)
    max_pool2d(input, kernel_size[2], stride[2], padding[2], dilation[2], ceil_mode) -> (y, indices)
    max_pool2d_backward(grad_output, indices, input_size[4]) -> grad_input

Arguments are assumed valid and normalised (explicit pairs, 4-D tensors of one dtype and device):
``convkit.functional`` checks them. float16 and bfloat16 are computed in float32 and rounded once.
Results are laid out as torch lays out its own: conv2d / conv2d_relu / max_pool2d give
channels-last results for a channels-last input (or conv weight); everything else is contiguous.
Autograd formulas are registered by ``convkit.autograd`` (the same formulas its Functions use).

The Python functions of the same names (``convkit.autograd.ops.conv2d`` ...) are what the
Functions call: in plain eager mode they run the implementation directly, which is what the
dispatcher would do minus its cost (~5 us a call); under torch.compile / export, a functorch
transform, a dispatch or torch-function mode, or for tensor subclasses they go through
``torch.ops.convkit``. ``engine_for`` and the heavy imports (Numba) are reached only when a kernel
runs, so importing this module registers the ops and changes nothing else.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from convkit.engine import engine_for
from convkit.kernels.shapes import conv_output_size, pool_output_size

NAMESPACE = "convkit"
LIB = torch.library.Library(NAMESPACE, "DEF")

# computed in float32 and rounded once at the end, as torch's CPU kernels do for them
REDUCED_DTYPES = (torch.float16, torch.bfloat16)

_CONV_ARGS = "int[2] stride, int[2] padding, int[2] dilation, int groups, str algorithm"
SCHEMAS = {
    "conv2d": f"conv2d(Tensor input, Tensor weight, Tensor? bias, {_CONV_ARGS}) -> Tensor",
    "conv2d_relu": f"conv2d_relu(Tensor input, Tensor weight, Tensor? bias, {_CONV_ARGS}) "
                   "-> Tensor",
    "conv2d_backward_input": "conv2d_backward_input(Tensor grad_output, Tensor weight, "
                             f"SymInt[4] input_size, {_CONV_ARGS}) -> Tensor",
    "conv2d_backward_weight": "conv2d_backward_weight(Tensor input, Tensor grad_output, "
                              f"SymInt[4] weight_size, {_CONV_ARGS}) -> Tensor",
    "conv2d_backward_bias": "conv2d_backward_bias(Tensor grad_output) -> Tensor",
    "relu": "relu(Tensor input) -> Tensor",
    "relu_": "relu_(Tensor(a!) input) -> ()",
    "relu_backward": "relu_backward(Tensor grad_output, Tensor result) -> Tensor",
    "max_pool2d": "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
                  "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)",
    "max_pool2d_backward": "max_pool2d_backward(Tensor grad_output, Tensor indices, "
                           "SymInt[4] input_size) -> Tensor",
}
DEVICE_KEYS = ("CPU", "CUDA")


def channels_last(t: Optional[Tensor]) -> bool:
    """t is laid out channels-last (and not also plainly contiguous): torch then returns
    channels-last results from conv2d and max_pool2d, and so do these ops (the kernels work in
    NCHW: the input is copied in and the result copied out)."""
    return (t is not None and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def _result_format(*tensors) -> torch.memory_format:
    return torch.channels_last if any(channels_last(t) for t in tensors) \
        else torch.contiguous_format


def _widen(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.float() if t is not None and t.dtype in REDUCED_DTYPES else t


def _narrow(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


# --- implementations: tensors in, the engine's kernels, tensors out --------------------------

def _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm, relu=False):
    y = engine_for(input.device).conv2d_forward(
        _widen(input), _widen(weight), _widen(bias), stride, padding, dilation, groups,
        algorithm, relu)
    y = _narrow(y, input.dtype)
    if channels_last(input) or channels_last(weight):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _conv2d_relu(input, weight, bias, stride, padding, dilation, groups, algorithm):
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm, True)


def _conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups,
                           algorithm):
    gx = engine_for(grad_output.device).conv2d_backward_input(
        _widen(grad_output), _widen(weight), tuple(input_size), stride, padding, dilation,
        groups, algorithm)
    return _narrow(gx, grad_output.dtype)


def _conv2d_backward_weight(input, grad_output, weight_size, stride, padding, dilation, groups,
                            algorithm):
    gw = engine_for(input.device).conv2d_backward_weight(
        _widen(input), _widen(grad_output), tuple(weight_size), stride, padding, dilation,
        groups, algorithm)
    return _narrow(gw, input.dtype)


def _conv2d_backward_bias(grad_output):
    gb = engine_for(grad_output.device).conv2d_backward_bias(_widen(grad_output))
    return _narrow(gb, grad_output.dtype)


def _relu(input):
    return _narrow(engine_for(input.device).relu_forward(_widen(input)), input.dtype)


def _relu_(input):
    if input.dtype in REDUCED_DTYPES or not input.is_contiguous():
        input.copy_(_relu(input))  # the kernel writes in place into contiguous memory only
    else:
        engine_for(input.device).relu_forward(input, input)


def _relu_backward(grad_output, result):
    gx = engine_for(grad_output.device).relu_backward(_widen(grad_output), _widen(result))
    return _narrow(gx, grad_output.dtype)


def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    y, indices = engine_for(input.device).max_pool2d_forward(
        _widen(input), kernel_size, stride, padding, dilation, ceil_mode)
    y = _narrow(y, input.dtype)
    if channels_last(input):
        y = y.contiguous(memory_format=torch.channels_last)
        indices = indices.contiguous(memory_format=torch.channels_last)
    return y, indices


def _max_pool2d_backward(grad_output, indices, input_size):
    gx = engine_for(grad_output.device).max_pool2d_backward(_widen(grad_output), indices,
                                                            tuple(input_size))
    return _narrow(gx, grad_output.dtype)


IMPLS = {"conv2d": _conv2d, "conv2d_relu": _conv2d_relu,
         "conv2d_backward_input": _conv2d_backward_input,
         "conv2d_backward_weight": _conv2d_backward_weight,
         "conv2d_backward_bias": _conv2d_backward_bias, "relu": _relu, "relu_": _relu_,
         "relu_backward": _relu_backward, "max_pool2d": _max_pool2d,
         "max_pool2d_backward": _max_pool2d_backward}


def _registered(impl):
    """The dispatcher hands int[2] arguments over as lists: the kernels index pairs, and the
    algorithm cache keys on tuples."""
    def kernel(*args):
        return impl(*(tuple(a) if type(a) is list else a for a in args))

    kernel.__name__ = impl.__name__
    return kernel


# --- fake implementations: shapes from convkit.kernels.shapes, no data --------------------------

def _empty(shape, like: Tensor, dtype=None, memory_format=torch.contiguous_format) -> Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                       memory_format=memory_format)


def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, algorithm):
    N, _, H, W = input.shape
    K, _, KH, KW = weight.shape
    OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    return _empty((N, K, OH, OW), input, memory_format=_result_format(input, weight))


def _conv2d_backward_input_fake(grad_output, weight, input_size, *conf):
    return _empty(tuple(input_size), grad_output)


def _conv2d_backward_weight_fake(input, grad_output, weight_size, *conf):
    return _empty(tuple(weight_size), input)


def _conv2d_backward_bias_fake(grad_output):
    return _empty((grad_output.shape[1],), grad_output)


def _relu_fake(input):
    return _empty(input.shape, input)


def _relu__fake(input):
    return None


def _relu_backward_fake(grad_output, result):
    return _empty(grad_output.shape, grad_output)


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    N, C, H, W = input.shape
    OH = pool_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    fmt = _result_format(input)
    return (_empty((N, C, OH, OW), input, memory_format=fmt),
            _empty((N, C, OH, OW), input, torch.int64, memory_format=fmt))


def _max_pool2d_backward_fake(grad_output, indices, input_size):
    return _empty(tuple(input_size), grad_output)


FAKES = {"conv2d": _conv2d_fake, "conv2d_relu": _conv2d_fake,
         "conv2d_backward_input": _conv2d_backward_input_fake,
         "conv2d_backward_weight": _conv2d_backward_weight_fake,
         "conv2d_backward_bias": _conv2d_backward_bias_fake, "relu": _relu_fake,
         "relu_": _relu__fake, "relu_backward": _relu_backward_fake,
         "max_pool2d": _max_pool2d_fake, "max_pool2d_backward": _max_pool2d_backward_fake}


for _name, _schema in SCHEMAS.items():
    LIB.define(_schema)
    for _key in DEVICE_KEYS:
        LIB.impl(_name, _registered(IMPLS[_name]), _key)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", FAKES[_name], lib=LIB)

OPS = {name: getattr(torch.ops.convkit, name).default for name in SCHEMAS}


# --- the Python entry points the autograd Functions call --------------------------------------

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_mode = torch._C._is_torch_function_mode_enabled
_is_compiling = torch.compiler.is_compiling


def eager(*tensors) -> bool:
    """True when a call can skip the dispatcher: plain tensors (no subclass), no torch.compile /
    export tracing, no functorch transform, no dispatch or torch-function mode active."""
    for t in tensors:
        if type(t) not in _PLAIN_TYPES:
            return False
    return not (_is_compiling() or _functorch_active() or _dispatch_modes() or _function_mode())


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation,
           groups: int, algorithm: str) -> Tensor:
    """``torch.ops.convkit.conv2d`` (run directly in plain eager mode, see :func:`eager`)."""
    if eager(input, weight):
        return _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm)
    return OPS["conv2d"](input, weight, bias, stride, padding, dilation, groups, algorithm)


def conv2d_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding,
                dilation, groups: int, algorithm: str) -> Tensor:
    """``torch.ops.convkit.conv2d_relu``."""
    if eager(input, weight):
        return _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm, True)
    return OPS["conv2d_relu"](input, weight, bias, stride, padding, dilation, groups, algorithm)


def conv2d_backward_input(grad_output: Tensor, weight: Tensor, input_size: Sequence[int],
                          stride, padding, dilation, groups: int, algorithm: str) -> Tensor:
    """``torch.ops.convkit.conv2d_backward_input``."""
    if eager(grad_output, weight):
        return _conv2d_backward_input(grad_output, weight, input_size, stride, padding,
                                      dilation, groups, algorithm)
    return OPS["conv2d_backward_input"](grad_output, weight, list(input_size), stride, padding,
                                        dilation, groups, algorithm)


def conv2d_backward_weight(input: Tensor, grad_output: Tensor, weight_size: Sequence[int],
                           stride, padding, dilation, groups: int, algorithm: str) -> Tensor:
    """``torch.ops.convkit.conv2d_backward_weight``."""
    if eager(input, grad_output):
        return _conv2d_backward_weight(input, grad_output, weight_size, stride, padding,
                                       dilation, groups, algorithm)
    return OPS["conv2d_backward_weight"](input, grad_output, list(weight_size), stride,
                                         padding, dilation, groups, algorithm)


def conv2d_backward_bias(grad_output: Tensor) -> Tensor:
    """``torch.ops.convkit.conv2d_backward_bias``."""
    if eager(grad_output):
        return _conv2d_backward_bias(grad_output)
    return OPS["conv2d_backward_bias"](grad_output)


def relu(input: Tensor) -> Tensor:
    """``torch.ops.convkit.relu``."""
    if eager(input):
        return _relu(input)
    return OPS["relu"](input)


def relu_(input: Tensor) -> Tensor:
    """``torch.ops.convkit.relu_`` (returns ``input``, now holding the result)."""
    if eager(input):
        _relu_(input)
    else:
        OPS["relu_"](input)
    return input


def relu_backward(grad_output: Tensor, result: Tensor) -> Tensor:
    """``torch.ops.convkit.relu_backward``."""
    if eager(grad_output, result):
        return _relu_backward(grad_output, result)
    return OPS["relu_backward"](grad_output, result)


def max_pool2d(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """``torch.ops.convkit.max_pool2d``: (y, indices)."""
    if eager(input):
        return _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    return OPS["max_pool2d"](input, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d_backward(grad_output: Tensor, indices: Tensor,
                        input_size: Sequence[int]) -> Tensor:
    """``torch.ops.convkit.max_pool2d_backward``."""
    if eager(grad_output, indices):
        return _max_pool2d_backward(grad_output, indices, input_size)
    return OPS["max_pool2d_backward"](grad_output, indices, list(input_size))


# --- vmap rules: the batch dimension folded into N, or into the groups -------------------------

def _batch_first(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """t with its vmapped dimension first (an unbatched t is expanded, not copied)."""
    return t.unsqueeze(0).expand(size, *t.shape) if bdim is None else t.movedim(bdim, 0)


def _into_groups(t: Tensor) -> Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W): B independent problems as B groups of one conv."""
    return t.transpose(0, 1).flatten(1, 2)


def _conv_vmap(op):
    def rule(info, in_dims, input, weight, bias, stride, padding, dilation, groups, algorithm):
        B = info.batch_size
        x_dim, w_dim, b_dim = in_dims[:3]
        if w_dim is None and b_dim is None:  # one weight: the batch is more images
            x = input.movedim(x_dim, 0)
            y = op(x.flatten(0, 1), weight, bias, stride, padding, dilation, groups, algorithm)
            return y.unflatten(0, (B, x.shape[1])), 0
        x = _into_groups(_batch_first(input, x_dim, B))
        w = _batch_first(weight, w_dim, B).flatten(0, 1)
        b = None if bias is None else _batch_first(bias, b_dim, B).flatten(0, 1)
        y = op(x, w, b, stride, padding, dilation, groups * B, algorithm)
        return y.unflatten(1, (B, weight.shape[-4])), 1

    return rule


def _conv2d_backward_input_vmap(info, in_dims, grad_output, weight, input_size, *conf):
    B = info.batch_size
    gy_dim, w_dim = in_dims[:2]
    N, C, H, W = input_size
    stride, padding, dilation, groups, algorithm = conf
    if w_dim is None:
        gy = grad_output.movedim(gy_dim, 0).flatten(0, 1)
        gx = OPS["conv2d_backward_input"](gy, weight, [B * N, C, H, W], *conf)
        return gx.unflatten(0, (B, N)), 0
    gy = _into_groups(_batch_first(grad_output, gy_dim, B))
    w = weight.movedim(w_dim, 0).flatten(0, 1)
    gx = OPS["conv2d_backward_input"](gy, w, [N, B * C, H, W], stride, padding, dilation,
                                      groups * B, algorithm)
    return gx.unflatten(1, (B, C)), 1


def _conv2d_backward_weight_vmap(info, in_dims, input, grad_output, weight_size, *conf):
    B = info.batch_size
    x = _into_groups(_batch_first(input, in_dims[0], B))
    gy = _into_groups(_batch_first(grad_output, in_dims[1], B))
    K = weight_size[0]
    stride, padding, dilation, groups, algorithm = conf
    gw = OPS["conv2d_backward_weight"](x, gy, [B * K, *weight_size[1:]], stride, padding,
                                       dilation, groups * B, algorithm)
    return gw.unflatten(0, (B, K)), 0


def _conv2d_backward_bias_vmap(info, in_dims, grad_output):
    gy = _into_groups(grad_output.movedim(in_dims[0], 0))
    return OPS["conv2d_backward_bias"](gy).unflatten(0, (info.batch_size, -1)), 0


def _relu_vmap(info, in_dims, input):
    return OPS["relu"](input), in_dims[0]


def _relu__vmap(info, in_dims, input):
    OPS["relu_"](input)
    return None, None


def _relu_backward_vmap(info, in_dims, grad_output, result):
    B = info.batch_size
    gy, y = (_batch_first(t, d, B) for t, d in zip((grad_output, result), in_dims))
    return OPS["relu_backward"](gy, y), 0


def _max_pool2d_vmap(info, in_dims, input, *args):
    x = input.movedim(in_dims[0], 0)
    y, indices = OPS["max_pool2d"](x.flatten(0, 1), *args)
    size = (info.batch_size, x.shape[1])
    return (y.unflatten(0, size), indices.unflatten(0, size)), (0, 0)


def _max_pool2d_backward_vmap(info, in_dims, grad_output, indices, input_size):
    B = info.batch_size
    gy = _batch_first(grad_output, in_dims[0], B)
    idx = _batch_first(indices, in_dims[1], B)
    N = input_size[0]
    gx = OPS["max_pool2d_backward"](gy.flatten(0, 1), idx.flatten(0, 1),
                                    [B * N, *input_size[1:]])
    return gx.unflatten(0, (B, N)), 0


VMAP_RULES = {"conv2d": _conv_vmap(OPS["conv2d"]), "conv2d_relu": _conv_vmap(OPS["conv2d_relu"]),
              "conv2d_backward_input": _conv2d_backward_input_vmap,
              "conv2d_backward_weight": _conv2d_backward_weight_vmap,
              "conv2d_backward_bias": _conv2d_backward_bias_vmap, "relu": _relu_vmap,
              "relu_": _relu__vmap, "relu_backward": _relu_backward_vmap,
              "max_pool2d": _max_pool2d_vmap, "max_pool2d_backward": _max_pool2d_backward_vmap}

for _name, _rule in VMAP_RULES.items():
    torch.library.register_vmap(f"{NAMESPACE}::{_name}", _rule, lib=LIB)


def op_names() -> List[str]:
    """The qualified names of every op registered here (``convkit::conv2d`` ...)."""
    return [f"{NAMESPACE}::{name}" for name in SCHEMAS]


__all__ = ["LIB", "OPS", "SCHEMAS", "REDUCED_DTYPES", "channels_last", "eager", "op_names",
           "conv2d", "conv2d_relu", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu", "relu_", "relu_backward", "max_pool2d",
           "max_pool2d_backward"]
