"""``convkit.use()``: torch's functional conv2d / relu / max-pool calls routed to convkit.

``convert`` swaps modules; calls a model makes in its ``forward`` (``F.relu(x)`` in GoogLeNet,
``F.relu(features, inplace=True)`` in DenseNet) stay on torch. Inside ``with convkit.use():``
a ``TorchFunctionMode`` sends them to :mod:`convkit.functional`:

====================================================  ===========================================
torch call                                            convkit
====================================================  ===========================================
``F.conv2d`` (= ``torch.conv2d``)                     ``conv2d``
``F.relu(x, inplace)``, ``torch.relu``, ``x.relu()``  ``relu``
``F.relu_`` (= ``torch.relu_``), ``x.relu_()``        ``relu_``
``F.max_pool2d`` (``return_indices`` either way),     ``max_pool2d`` (``torch.max_pool2d``'s
``torch.max_pool2d``                                  ``stride=()`` meaning the kernel size)
====================================================  ===========================================

with torch's signatures (positional or keyword arguments, defaults) and results. The modules
torch.nn builds on these (``nn.Conv2d`` with any padding mode, ``nn.ReLU``, ``nn.MaxPool2d``)
are routed too, through the calls they make.

A call convkit cannot do goes to torch unchanged: a dtype other than float32 / float64 /
float16 / bfloat16, a device other than the CPU or a CUDA GPU, a non-strided layout, a tensor
subclass with its own ``__torch_function__``, or a conv whose tensors' dtypes differ outside
``torch.autocast``. Every other call is convkit's, its argument errors included (raised in
torch's words). torch.compile and torch.export trace through the mode: the graph holds
``torch.ops.convkit.*`` ops.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode, _pop_mode, _push_mode

from convkit import functional as CF

_Tensor = torch.Tensor
_DISABLED = torch._C._disabled_torch_function_impl
_DEVICES = ("cpu", "cuda")
_TORCH = object()  # a handler's answer for "not convkit's: let torch run it"


def _convkit_can(input, *others) -> bool:
    """Whether convkit computes a call on these tensors (``others`` may hold None)."""
    for t in (input, *others):
        if t is None:
            continue
        if not isinstance(t, _Tensor):
            return False  # torch raises its own error
        cls = type(t)
        if cls is not _Tensor and cls.__torch_function__ is not _DISABLED:
            return False  # a subclass that wants its own __torch_function__
        if (t.dtype not in CF.FLOAT_DTYPES or t.device.type not in _DEVICES
                or t.layout != torch.strided):
            return False
    return True


def _same_dtype(input, *others) -> bool:
    """The tensors share input's dtype, or autocast is on for input's device (convkit casts
    them as torch's autocast would)."""
    if torch.is_autocast_enabled(input.device.type):
        return True
    for t in others:  # (a loop: see autograd.ops.any_channels_last)
        if t is not None and t.dtype != input.dtype:
            return False
    return True


def _conv2d(algorithm, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if not (_convkit_can(input, weight, bias) and _same_dtype(input, weight, bias)):
        return _TORCH
    return CF.conv2d(input, weight, bias, stride, padding, dilation, groups,
                     algorithm=algorithm)


def _relu(algorithm, input, inplace=False):
    if not _convkit_can(input):
        return _TORCH
    return CF.relu(input, inplace=inplace)


def _relu_(algorithm, input):
    return _relu(algorithm, input, True)


def _max_pool2d(algorithm, input, kernel_size, stride=None, padding=0, dilation=1,
                ceil_mode=False, return_indices=False):
    return _pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _max_pool2d_with_indices(algorithm, input, kernel_size, stride=None, padding=0,
                             dilation=1, ceil_mode=False, return_indices=False):
    return _pool(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def _torch_max_pool2d(algorithm, input, kernel_size, stride=(), padding=0, dilation=1,
                      ceil_mode=False):
    return _pool(input, kernel_size, stride, padding, dilation, ceil_mode, False)


def _pool(input, kernel_size, stride, padding, dilation, ceil_mode, indices):
    if not _convkit_can(input):
        return _TORCH
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = None  # torch.max_pool2d's stride=() means the kernel size, as None does
    return CF.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                         return_indices=indices)


# the torch functions routed and their handlers, each with the torch function's signature after
# the algorithm. F.max_pool2d is boolean_dispatch's wrapper: its output-only branch dispatches
# as the wrapper itself (return_indices among the arguments), the other as
# F.max_pool2d_with_indices (always a pair).
ROUTES: Dict[Callable, Callable] = {
    torch.conv2d: _conv2d,
    F.relu: _relu, torch.relu: _relu, _Tensor.relu: _relu,
    torch.relu_: _relu_, _Tensor.relu_: _relu_,
    F.max_pool2d: _max_pool2d, F.max_pool2d_with_indices: _max_pool2d_with_indices,
    torch.max_pool2d: _torch_max_pool2d,
}


class use(TorchFunctionMode):
    """``with convkit.use(): model(x)`` computes the conv2d, ReLU and max-pool calls made inside
    with convkit's kernels (see the module's docstring for the calls and what stays on torch).

    ``algorithm`` is the convs' ``algorithm=`` (see :func:`convkit.functional.conv2d`). Modes
    nest with other torch function modes as torch's do; calls convkit makes itself are not
    routed again.
    """

    def __init__(self, algorithm: str = "auto"):
        super().__init__()
        if algorithm not in CF.ALGORITHMS:
            raise ValueError(f"use(): algorithm must be one of {CF.ALGORITHMS}, "
                             f"got {algorithm!r}")
        self.algorithm = algorithm

    def __torch_function__(self, func, types, args=(), kwargs: Optional[dict] = None):
        kwargs = kwargs or {}
        handler = ROUTES.get(func)
        if handler is not None:
            out = handler(self.algorithm, *args, **kwargs)
            if out is not _TORCH:
                return out
        return func(*args, **kwargs)


def _routed(module: torch.nn.Module, algorithm: str, inner, *args, **kwargs):
    """``module``'s forward (``inner``, the instance's own, or its class's) inside use()."""
    with use(algorithm):
        if inner is not None:
            return inner(*args, **kwargs)
        return type(module).forward(module, *args, **kwargs)


class RoutedForward(functools.partial):
    """A module's ``forward`` run inside :class:`use`: ``convert(model, functional=True)`` sets
    ``model.forward = RoutedForward.of(model, algorithm)``. A ``functools.partial`` of
    :func:`_routed` (torch.export reads a partial's code; copies and pickles of the model carry
    their own); it keeps the signature of the forward it wraps, which export binds arguments
    by."""

    @classmethod
    def of(cls, module: torch.nn.Module, algorithm: str = "auto") -> "RoutedForward":
        inner = module.__dict__.get("forward")
        if isinstance(inner, RoutedForward):
            inner = inner.args[2]
        return cls(_routed, module, algorithm, inner)

    @property
    def module(self) -> torch.nn.Module:
        return self.args[0]

    @property
    def __signature__(self):
        module, _, inner = self.args
        return inspect.signature(inner if inner is not None else
                                 type(module).forward.__get__(module))


_mode_enabled = torch._C._is_torch_function_mode_enabled
_is_compiling = torch.compiler.is_compiling
_current_mode = _get_current_function_mode


def unrouted(method):
    """``method`` (a convkit module's forward, which calls convkit itself) run with an innermost
    :class:`use` mode set aside: under the mode every torch call the method makes would pass
    through it, and convkit's ops would take the dispatcher's path (a converted toy ResNet's
    forward took 1.8x as long under use(), measured). Under torch.compile the mode is traced,
    not run: nothing to set aside."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if _mode_enabled() and not _is_compiling():
            mode = _current_mode()
            if isinstance(mode, use):
                _pop_mode()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    _push_mode(mode)
        return method(self, *args, **kwargs)

    return run


__all__ = ["ROUTES", "RoutedForward", "unrouted", "use"]
