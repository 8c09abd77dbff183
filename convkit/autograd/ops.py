"""convkit's kernels as PyTorch operators: ``torch.ops.convkit.*``.

Every kernel-level op is defined with ``torch.library`` under the ``convkit`` namespace and
implemented for the CPU and CUDA dispatch keys (both call ``convkit.engine.engine_for(device)``),
with a fake (meta) implementation whose shapes come from ``convkit.kernels.shapes`` (and a vmap
rule, ``convkit.autograd.vmap``), so torch.compile, torch.export, FakeTensor tracing and
torch.func see them as ops::

    conv2d(input, weight, bias?, stride[2], padding[2], dilation[2], groups, algorithm) -> y
    conv2d_relu(...as conv2d...) -> relu(y)      bias and ReLU as the conv kernels' epilogue
    conv2d_backward_input(grad_output, weight, input_size[4], ...conv args...) -> grad_input
    conv2d_backward_weight(input, grad_output, weight_size[4], ...conv args...) -> grad_weight
    conv2d_backward_bias(grad_output) -> grad_bias
    relu(input) -> y            relu_(input!) -> ()            relu_backward(grad_output, y)
    max_pool2d(input, kernel_size[2], stride[2], padding[2], dilation[2], ceil_mode) -> (y, indices)
    max_pool2d_backward(grad_output, indices, input_size[4]) -> grad_input

Arguments are normalised (explicit pairs, 4-D tensors of one dtype and device):
``convkit.functional`` checks what users pass, and a call through the dispatcher is checked again
(``CHECKS``) before any kernel runs. float16 and bfloat16 are computed in float32, rounded once.
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
from torch.autograd.graph import increment_version

from convkit.engine import engine_for
from convkit.engine.algorithm import check_winograd
from convkit.kernels.shapes import (
    ArgumentError,
    DtypeError,
    check_conv2d,
    check_max_pool2d,
    conv_output_size,
    pool_output_size,
)

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
    """torch suggests the channels-last memory format for t (``suggest_memory_format``): its
    strides are ordered like channels-last (C, W, H, N from the smallest), gaps and size-1 dims
    allowed, ambiguous cases NCHW (``is_channels_last_strides_2d`` in c10). torch's CPU conv2d
    (any input or weight suggesting it) and max_pool2d (the input) then return channels-last
    results, and so do these ops (the kernels work in NCHW: copied in and out)."""
    if t is None or t.dim() != 4:
        return False
    if t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last):
        return False  # the common case, two C calls
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    least = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < least or (d == 0 and least == strides[1]):
            return False
        least = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def elementwise_strides(t: torch.Tensor) -> tuple:
    """The strides torch gives the result of an elementwise op on t (TensorIterator's rule): a
    contiguous or channels-last t gives the plain layout of that format, any other
    non-overlapping dense t its own strides; otherwise the dims are ordered by stride (equal
    strides: the smaller size inside, broadcast dims where the insertion sort leaves them) and
    the result is dense in that order."""
    if t.is_contiguous():
        return _dense_strides(t.shape, range(t.dim() - 1, -1, -1))
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return _dense_strides(t.shape, (1, 3, 2, 0))
    if _non_overlapping_and_dense(t):
        return t.stride()
    shape, strides = t.shape, t.stride()

    def should_swap(d0, d1):
        s0, s1 = strides[d0], strides[d1]
        if s0 == 0 or s1 == 0:
            return 0
        if s0 != s1:
            return 1 if s0 > s1 else -1
        return 1 if shape[d0] > shape[d1] else 0

    perm = list(range(t.dim() - 1, -1, -1))  # innermost first
    for i in range(1, t.dim()):
        d1 = i
        for d0 in range(i - 1, -1, -1):
            c = should_swap(perm[d0], perm[d1])
            if c > 0:
                perm[d0], perm[d1] = perm[d1], perm[d0]
                d1 = d0
            elif c < 0:
                break
    return _dense_strides(shape, perm)


def _dense_strides(shape, inner_first) -> tuple:
    """Strides of a dense tensor of ``shape`` whose dims, innermost first, are ``inner_first``."""
    strides, step = [0] * len(shape), 1
    for d in inner_first:
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def _non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """c10's is_non_overlapping_and_dense: sorted by stride (size-1 dims ignored), each stride
    is the product of the sizes inside it."""
    dims = sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=t.stride)
    step = 1
    for d in dims:
        if t.stride(d) != step:
            return False
        step *= t.shape[d]
    return True


def dense_in_order(t: Tensor, strides) -> tuple:
    """(t permuted so that a tensor with ``strides`` is contiguous in that order, the inverse
    permutation)."""
    order = sorted(range(t.dim()), key=lambda d: -strides[d])
    return t.permute(order), [order.index(d) for d in range(len(order))]


def with_strides(t: Tensor, strides) -> Tensor:
    """t given ``strides`` that describe its very memory (they differ on size-1 dims only)."""
    return t if t.stride() == tuple(strides) else t.as_strided(t.shape, strides)


def any_channels_last(*tensors) -> bool:
    """Whether one of the tensors is channels-last (torch lays their result out so). A loop, not
    ``any`` over a generator: dynamo 2.14 breaks the graph closing a generator left open."""
    for t in tensors:
        if channels_last(t):
            return True
    return False


def _result_format(*tensors) -> torch.memory_format:
    return torch.channels_last if any_channels_last(*tensors) else torch.contiguous_format


def _in_float32(impl, *args):
    """``impl(*args)`` with its float16 / bfloat16 tensors computed in float32 and the floating
    results rounded back once (torch's CPU rule); integer tensors (pool indices) pass through."""
    dtype = args[0].dtype
    out = impl(*(a.float() if isinstance(a, Tensor) and a.dtype == dtype else a for a in args))
    if isinstance(out, tuple):
        return tuple(o.to(dtype) if o.is_floating_point() else o for o in out)
    return out.to(dtype)


_cpu_engine = [None, None]  # (the engine_for that gave it, the CPU engine)


def _engine(t: Tensor):
    """``engine_for(t.device)``; the CPU engine is remembered (``t.device`` and the lookup cost
    ~1.5 us, a tenth of a tiny ReLU) for as long as ``engine_for`` is the same function."""
    if t.is_cpu:
        if _cpu_engine[0] is engine_for:
            return _cpu_engine[1]
        _cpu_engine[:] = engine_for, engine_for(t.device)
        return _cpu_engine[1]
    return engine_for(t.device)


# --- implementations: tensors in, the engine's kernels, tensors out --------------------------

def _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm, relu=False):
    if input.dtype in REDUCED_DTYPES:
        return _in_float32(_conv2d, input, weight, bias, stride, padding, dilation, groups,
                           algorithm, relu)
    y = _engine(input).conv2d_forward(input, weight, bias, stride, padding, dilation, groups,
                                      algorithm, relu)
    if channels_last(input) or channels_last(weight):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _conv2d_relu(input, weight, bias, stride, padding, dilation, groups, algorithm):
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, algorithm, True)


def _conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups,
                           algorithm):
    if grad_output.dtype in REDUCED_DTYPES:
        return _in_float32(_conv2d_backward_input, grad_output, weight, input_size, stride,
                           padding, dilation, groups, algorithm)
    return _engine(grad_output).conv2d_backward_input(grad_output, weight, tuple(input_size),
                                                      stride, padding, dilation, groups,
                                                      algorithm)


def _conv2d_backward_weight(input, grad_output, weight_size, stride, padding, dilation, groups,
                            algorithm):
    if input.dtype in REDUCED_DTYPES:
        return _in_float32(_conv2d_backward_weight, input, grad_output, weight_size, stride,
                           padding, dilation, groups, algorithm)
    return _engine(input).conv2d_backward_weight(input, grad_output, tuple(weight_size), stride,
                                                 padding, dilation, groups, algorithm)


def _conv2d_backward_bias(grad_output):
    if grad_output.dtype in REDUCED_DTYPES:
        return _in_float32(_conv2d_backward_bias, grad_output)
    return _engine(grad_output).conv2d_backward_bias(grad_output)


def _relu(input):
    if input.dtype in REDUCED_DTYPES:
        return _in_float32(_relu, input)
    return _engine(input).relu_forward(input)


def _relu_(input):
    if input.dtype in REDUCED_DTYPES or not input.is_contiguous():
        input.copy_(_relu(input))  # the kernel writes in place into contiguous memory only
    else:
        _engine(input).relu_forward(input, input)
        # written behind autograd's back: bump the version, so a saved x refuses to be used
        increment_version(input)


def _relu_backward(grad_output, result):
    if grad_output.dtype in REDUCED_DTYPES:
        return _in_float32(_relu_backward, grad_output, result)
    if result.is_contiguous():
        return _engine(grad_output).relu_backward(grad_output, result)
    # torch's threshold_backward lays its result out as the saved result (its first input)
    strides = elementwise_strides(result)
    (gy, inverse), (y, _) = dense_in_order(grad_output, strides), dense_in_order(result, strides)
    gx = _engine(gy).relu_backward(gy.contiguous(), y.contiguous())
    return with_strides(gx.permute(inverse), strides)


def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    if input.dtype in REDUCED_DTYPES:
        return _in_float32(_max_pool2d, input, kernel_size, stride, padding, dilation,
                           ceil_mode)
    y, indices = _engine(input).max_pool2d_forward(input, kernel_size, stride, padding,
                                                   dilation, ceil_mode)
    if channels_last(input):
        y = y.contiguous(memory_format=torch.channels_last)
        indices = indices.contiguous(memory_format=torch.channels_last)
    return y, indices


def _max_pool2d_backward(grad_output, indices, input_size):
    if grad_output.dtype in REDUCED_DTYPES:
        return _in_float32(_max_pool2d_backward, grad_output, indices, input_size)
    return _engine(grad_output).max_pool2d_backward(grad_output, indices, tuple(input_size))


IMPLS = {"conv2d": _conv2d, "conv2d_relu": _conv2d_relu,
         "conv2d_backward_input": _conv2d_backward_input,
         "conv2d_backward_weight": _conv2d_backward_weight,
         "conv2d_backward_bias": _conv2d_backward_bias, "relu": _relu, "relu_": _relu_,
         "relu_backward": _relu_backward, "max_pool2d": _max_pool2d,
         "max_pool2d_backward": _max_pool2d_backward}


# --- argument checks of dispatched calls --------------------------------------------------------
# convkit.functional validates what users pass; these guard torch.ops.convkit.* called directly
# (a kernel given inconsistent shapes would read or write out of bounds).

_FLOAT_DTYPES = (torch.float32, torch.float64) + REDUCED_DTYPES
# relu and max_pool2d compute integers too (forward only), as torch's do
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
ALGORITHMS = ("auto", "direct", "im2col", "winograd")


def _fail(op: str, what: str, cls=ArgumentError):
    raise cls(f"convkit::{op}: {what}")


def _check_tensors(op: str, *named, dtypes=_FLOAT_DTYPES) -> None:
    """4-D (or any-rank where the rank is None) tensors of one dtype (floating, or one of
    ``dtypes``) and device."""
    first = named[0][1]
    for name, t, rank in named:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _fail(op, f"expected {name} to be a Tensor, got {type(t).__name__}", TypeError)
        if rank is not None and t.dim() != rank:
            _fail(op, f"expected {name} to be {rank}-D, got size {list(t.shape)}")
        if t.dtype not in dtypes:
            _fail(op, f"expected {name} to have a dtype in {dtypes}, got {t.dtype}", DtypeError)
        if t is not first:
            if t.dtype != first.dtype:
                _fail(op, f"expected {name} to have dtype {first.dtype}, got {t.dtype}",
                      DtypeError)
            if t.device != first.device:
                _fail(op, f"expected {name} on {first.device}, got {t.device}", RuntimeError)


def _check_conv(op, input_size, weight_size, bias, output, stride, padding, dilation, groups,
                algorithm) -> None:
    """The conv arguments as functional.conv2d checks them; ``output``: the grad_output given
    to a backward op, whose size must be the forward result's."""
    if algorithm not in ALGORITHMS:
        _fail(op, f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if len(input_size) != 4 or len(weight_size) != 4:
        _fail(op, f"expected 4-D input and weight sizes, got {list(input_size)} and "
                  f"{list(weight_size)}")
    check_conv2d(tuple(input_size), tuple(weight_size), None if bias is None else bias.shape,
                 stride, padding, dilation, groups)
    if algorithm == "winograd":
        check_winograd(tuple(weight_size), stride, dilation, f"convkit::{op}")
    if output is not None:
        expected = [input_size[0], weight_size[0]] + [
            conv_output_size(input_size[2 + i], weight_size[2 + i], stride[i], padding[i],
                             dilation[i]) for i in (0, 1)]
        if list(output.shape) != expected:
            _fail(op, f"expected grad_output of size {expected} (the forward result's), got "
                      f"{list(output.shape)}")


def _check_conv2d(input, weight, bias, *conf):
    _check_tensors("conv2d", ("input", input, 4), ("weight", weight, 4), ("bias", bias, 1))
    _check_conv("conv2d", input.shape, weight.shape, bias, None, *conf)


def _check_conv2d_backward_input(grad_output, weight, input_size, *conf):
    op = "conv2d_backward_input"
    _check_tensors(op, ("grad_output", grad_output, 4), ("weight", weight, 4))
    _check_conv(op, input_size, weight.shape, None, grad_output, *conf)


def _check_conv2d_backward_weight(input, grad_output, weight_size, *conf):
    op = "conv2d_backward_weight"
    _check_tensors(op, ("input", input, 4), ("grad_output", grad_output, 4))
    _check_conv(op, input.shape, weight_size, None, grad_output, *conf)


def _check_conv2d_backward_bias(grad_output):
    _check_tensors("conv2d_backward_bias", ("grad_output", grad_output, 4))


def _check_relu(input):
    _check_tensors("relu", ("input", input, None), dtypes=_FLOAT_DTYPES + INT_DTYPES)


def _check_relu_backward(grad_output, result):
    _check_tensors("relu_backward", ("grad_output", grad_output, None),
                   ("result", result, None))
    if grad_output.shape != result.shape:
        _fail("relu_backward", f"expected result of size {list(grad_output.shape)}, got "
                               f"{list(result.shape)}")


def _check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    _check_tensors("max_pool2d", ("input", input, 4), dtypes=_FLOAT_DTYPES + INT_DTYPES)
    check_max_pool2d(tuple(input.shape), kernel_size, stride, padding, dilation, ceil_mode)


def _check_max_pool2d_backward(grad_output, indices, input_size):
    op = "max_pool2d_backward"
    _check_tensors(op, ("grad_output", grad_output, 4))
    if not (isinstance(indices, Tensor) and indices.dtype == torch.int64
            and indices.device == grad_output.device):
        _fail(op, f"expected indices to be an int64 tensor on {grad_output.device}", TypeError)
    if indices.shape != grad_output.shape:
        _fail(op, f"expected indices of size {list(grad_output.shape)}, got "
                  f"{list(indices.shape)}")
    if len(input_size) != 4 or list(input_size[:2]) != list(grad_output.shape[:2]):
        _fail(op, f"expected input_size (N, C, H, W) with (N, C) = "
                  f"{list(grad_output.shape[:2])}, got {list(input_size)}")


CHECKS = {"conv2d": _check_conv2d, "conv2d_relu": _check_conv2d,
          "conv2d_backward_input": _check_conv2d_backward_input,
          "conv2d_backward_weight": _check_conv2d_backward_weight,
          "conv2d_backward_bias": _check_conv2d_backward_bias, "relu": _check_relu,
          "relu_": _check_relu, "relu_backward": _check_relu_backward,
          "max_pool2d": _check_max_pool2d, "max_pool2d_backward": _check_max_pool2d_backward}


def _registered(name: str):
    """The kernel registered for ``name``: its arguments checked, int[2] lists (what the
    dispatcher hands over) made tuples (the kernels index pairs; the algorithm cache keys on
    tuples), then the implementation."""
    impl, check = IMPLS[name], CHECKS[name]

    def kernel(*args):
        args = tuple(tuple(a) if type(a) is list else a for a in args)
        check(*args)
        return impl(*args)

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
        LIB.impl(_name, _registered(_name), _key)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", FAKES[_name], lib=LIB)

OPS = {name: getattr(torch.ops.convkit, name).default for name in SCHEMAS}

# torch's autocast policy for the ops called directly (convkit.functional applies the same rule
# itself before its fast path): conv2d and conv2d_relu are lower-precision ops, their float32 /
# float16 / bfloat16 tensors cast to the autocast dtype of the moment (torch.library's
# register_autocast fixes one dtype, so this is its kernel with the dtype read per call)
AUTOCAST_OPS = ("conv2d", "conv2d_relu")
_AUTOCAST_ELIGIBLE = (torch.float32,) + REDUCED_DTYPES


def _autocast_kernel(name: str, device_type: str):
    op = OPS[name]
    key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(
        device_type))

    def cast(t):
        dtype = torch.get_autocast_dtype(device_type)
        return t.to(dtype) if isinstance(t, Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t

    def run(*args):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*(cast(a) for a in args))

    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key)
    op.py_impl(key)(run)  # what tracing (export, make_fx) runs
    return key.name, lambda _keyset, *args: run(*args)


for _name in AUTOCAST_OPS:
    for _device in ("cpu", "cuda"):
        _key_name, _kernel = _autocast_kernel(_name, _device)
        LIB.impl(_name, _kernel, _key_name, with_keyset=True)


# --- the Python entry points the autograd Functions call --------------------------------------

_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_is_dynamo_compiling = torch.compiler.is_dynamo_compiling  # dynamo folds it to True
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_mode = torch._C._is_torch_function_mode_enabled
_tls_included = torch._C._dispatch_tls_is_dispatch_key_included
# autograd's own batched gradients (is_grads_batched, gradcheck's check_batched_grad,
# jacobian(vectorize=True)) run the backward under the legacy vmap: its BatchedTensors are plain
# Tensors with no data of their own, batched by the dispatcher
_LEGACY_VMAP = torch._C._dispatch_key_parse("VmapMode")


def legacy_vmap() -> bool:
    """Inside the legacy vmap: autograd's batched gradients (see ``_LEGACY_VMAP``)."""
    return _tls_included(_LEGACY_VMAP)


def eager(*tensors) -> bool:
    """True when a call can skip the dispatcher: plain tensors (no subclass such as FakeTensor),
    not traced by dynamo (torch.compile, strict export), no functorch transform, no dispatch mode
    (non-strict export, make_fx, FakeTensorMode, FlopCounterMode), no torch-function mode and
    no legacy vmap (autograd's batched gradients)."""
    for t in tensors:
        if type(t) is not _Tensor and type(t) is not _Parameter:
            return False
    return not (_is_dynamo_compiling() or _functorch_active() or _dispatch_modes()
                or _function_mode() or _tls_included(_LEGACY_VMAP))


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


def op_names() -> List[str]:
    """The qualified names of every op registered here (``convkit::conv2d`` ...)."""
    return [f"{NAMESPACE}::{name}" for name in SCHEMAS]


__all__ = ["LIB", "OPS", "SCHEMAS", "REDUCED_DTYPES", "INT_DTYPES", "channels_last", "eager",
           "any_channels_last", "op_names",
           "conv2d", "conv2d_relu", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "relu", "relu_", "relu_backward", "max_pool2d",
           "max_pool2d_backward"]
