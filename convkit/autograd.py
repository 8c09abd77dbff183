"""torch.autograd.Functions over convkit's kernels, one per op, routed by tensor device.

Arguments arrive validated and normalised from ``convkit.functional``. Every backward is itself
built from convkit Functions (Chainer's formulation: the input gradient of a convolution is a
transposed convolution, the weight gradient a correlation of input and output gradient), so
gradients of gradients work too (``gradgradcheck``). The only torch op used is ``gather`` in the
second derivative of max-pool.
"""
from __future__ import annotations

import threading
from typing import Callable

import numba
import torch
from torch.autograd import Function

from convkit.kernels import cpu as _cpu_kernels
from convkit.kernels.cpu import _openmp


class KernelEngine:
    """Calls a torch-free kernel module with torch tensors.

    ``engine.<name>(*args)`` converts tensor arguments with ``to_array`` (zero-copy views),
    calls ``kernels.<name>(*args, **launch_kwargs())`` and wraps array results with
    ``to_tensor`` (zero-copy), tuples included.
    """

    def __init__(self, kernels, to_array: Callable, to_tensor: Callable,
                 launch_kwargs: Callable[[], dict] = dict):
        self.kernels = kernels
        self.to_array = to_array
        self.to_tensor = to_tensor
        self.launch_kwargs = launch_kwargs

    def __getattr__(self, name: str):
        fn = getattr(self.kernels, name)

        def call(*args):
            args = [self.to_array(a) if isinstance(a, torch.Tensor) else a for a in args]
            out = fn(*args, **self.launch_kwargs())
            if isinstance(out, tuple):
                return tuple(self.to_tensor(o) for o in out)
            return self.to_tensor(out)

        call.__name__ = name
        self.__dict__[name] = call  # later lookups skip __getattr__
        return call


def _cpu_array(t: torch.Tensor):
    if t.requires_grad or not t.is_contiguous():
        t = t.detach().contiguous()  # detach() shares memory; contiguous() copies only if needed
    return t.numpy()


_threads = threading.local()


def _cpu_launch_kwargs() -> dict:
    """Keep Numba's thread count at torch's (torch.set_num_threads), capped by Numba's pool.

    Both counts are per Python thread; Numba's is set again only when torch's changed (asking
    Numba costs ~10 us a call)."""
    torch_threads = torch.get_num_threads()
    if getattr(_threads, "torch", None) != torch_threads:
        want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != want:
            numba.set_num_threads(want)
        _threads.torch = torch_threads
    return {}


CPU_ENGINE = KernelEngine(_cpu_kernels, _cpu_array, torch.from_numpy, _cpu_launch_kwargs)

# convkit's parallel CPU loops run on torch's own OpenMP pool when torch uses one (see
# kernels.cpu._openmp: a second pool would fight torch's spin-waiting workers for the cores)
if "parallel backend: OpenMP" in torch.__config__.parallel_info():
    _openmp.install(_openmp.find_openmp_runtime(prefer="torch"))


def engine_for(device: torch.device) -> KernelEngine:
    """The kernel engine for tensors on ``device``; never copies between devices."""
    if device.type == "cpu":
        return CPU_ENGINE
    if device.type == "cuda":
        try:
            from convkit._cuda import cuda_engine
        except ImportError as e:
            raise RuntimeError(
                f"convkit: got a tensor on {device}, but the CUDA engine is not available ({e}). "
                "Install the CUDA extra (pip install 'convkit[cuda]') on a machine with an NVIDIA "
                "GPU, or move the model and inputs to the CPU.") from e
        return cuda_engine(device)
    raise RuntimeError(f"convkit: tensors on device {device} are not supported; "
                       "expected a 'cpu' or 'cuda' device")


class _PlainContext:
    """Stands in for autograd's ctx when a Function's forward runs as a plain call."""

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_non_differentiable(self, *tensors) -> None:
        pass


def call_function(function, *args):
    """``function.apply(*args)`` when autograd has something to record: grad mode on and a
    tensor argument that requires grad (in a backward pass: ``create_graph=True``). Otherwise a
    plain call of its forward, which gives the same outputs without the graph bookkeeping
    (Function.apply costs ~10-20 us of Python per call: inference, and the dozen backward
    sub-calls of a training step). Not for in-place Functions: only ``apply`` bumps the
    version counter autograd checks saved tensors against."""
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return function.apply(*args)
    return function.forward(_PlainContext(), *args)


class Conv2dFunction(Function):
    """y = conv2d(x, w, b) with explicit (h, w) stride/padding/dilation pairs."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, algorithm):
        ctx.conf = (stride, padding, dilation, groups, algorithm)
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w)
        return engine_for(x.device).conv2d_forward(x, w, b, stride, padding, dilation, groups,
                                                   algorithm)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return _conv2d_grads(ctx, gy, x, w)


def _conv2d_grads(ctx, gy, x, w):
    """The gradients a conv Function's backward returns, for the inputs that need them."""
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = call_function(Conv2dBackwardInput, gy, w, x.shape, *ctx.conf)
    if ctx.needs_input_grad[1]:
        gw = call_function(Conv2dBackwardWeight, x, gy, w.shape, *ctx.conf)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = call_function(Conv2dBackwardBias, gy)
    return gx, gw, gb, None, None, None, None, None


class Conv2dReLUFunction(Function):
    """y = relu(conv2d(x, w, b)) as one Function: bias and ReLU are the conv kernels' epilogue
    (applied as each block of y is stored) and only y is kept for backward (no pre-activation
    tensor is stored)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, algorithm):
        ctx.conf = (stride, padding, dilation, groups, algorithm)
        ctx.has_bias = b is not None
        y = engine_for(x.device).conv2d_forward(x, w, b, stride, padding, dilation, groups,
                                                algorithm, True)
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, y = ctx.saved_tensors
        return _conv2d_grads(ctx, call_function(ReLUBackward, gy, y), x, w)


class Conv2dBackwardInput(Function):
    """gx = conv2d_input(gy, w): linear in gy and in w."""

    @staticmethod
    def forward(ctx, gy, w, input_shape, stride, padding, dilation, groups, algorithm):
        ctx.conf = (stride, padding, dilation, groups, algorithm)
        ctx.save_for_backward(gy, w)
        return engine_for(gy.device).conv2d_backward_input(gy, w, tuple(input_shape), stride,
                                                           padding, dilation, groups, algorithm)

    @staticmethod
    def backward(ctx, ggx):
        gy, w = ctx.saved_tensors
        d_gy = d_w = None
        if ctx.needs_input_grad[0]:
            d_gy = call_function(Conv2dFunction, ggx, w, None, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_w = call_function(Conv2dBackwardWeight, ggx, gy, w.shape, *ctx.conf)
        return d_gy, d_w, None, None, None, None, None, None


class Conv2dBackwardWeight(Function):
    """gw = conv2d_weight(x, gy): linear in x and in gy."""

    @staticmethod
    def forward(ctx, x, gy, weight_shape, stride, padding, dilation, groups, algorithm):
        ctx.conf = (stride, padding, dilation, groups, algorithm)
        ctx.save_for_backward(x, gy)
        return engine_for(x.device).conv2d_backward_weight(x, gy, tuple(weight_shape), stride,
                                                           padding, dilation, groups, algorithm)

    @staticmethod
    def backward(ctx, ggw):
        x, gy = ctx.saved_tensors
        d_x = d_gy = None
        if ctx.needs_input_grad[0]:
            d_x = call_function(Conv2dBackwardInput, gy, ggw, x.shape, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_gy = call_function(Conv2dFunction, x, ggw, None, *ctx.conf)
        return d_x, d_gy, None, None, None, None, None, None


class Conv2dBackwardBias(Function):
    """gb[k] = sum of gy[:, k]."""

    @staticmethod
    def forward(ctx, gy):
        ctx.gy_shape = gy.shape
        return engine_for(gy.device).conv2d_backward_bias(gy)

    @staticmethod
    def backward(ctx, ggb):
        return ggb.view(1, -1, 1, 1).expand(ctx.gy_shape)


class ReLUFunction(Function):
    """y = max(x, 0); with ``inplace`` the result is written into x."""

    @staticmethod
    def forward(ctx, x, inplace):
        engine = engine_for(x.device)
        if inplace:
            engine.relu_forward(x, x)
            ctx.mark_dirty(x)
            y = x
        else:
            y = engine.relu_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, gy, y), None


class ReLUBackward(Function):
    """gx = gy * (y > 0): linear in gy, piecewise constant in y."""

    @staticmethod
    def forward(ctx, gy, y):
        ctx.save_for_backward(y)
        return engine_for(gy.device).relu_backward(gy, y)

    @staticmethod
    def backward(ctx, ggx):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, ggx, y), None


class MaxPool2dFunction(Function):
    """(y, indices) = max_pool2d(x) with explicit (h, w) pairs."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        y, indices = engine_for(x.device).max_pool2d_forward(x, kernel_size, stride, padding,
                                                             dilation, ceil_mode)
        ctx.input_shape = x.shape
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        return y, indices

    @staticmethod
    def backward(ctx, gy, _gindices):
        (indices,) = ctx.saved_tensors
        gx = call_function(MaxPool2dBackward, gy, indices, ctx.input_shape)
        return gx, None, None, None, None, None


class MaxPool2dBackward(Function):
    """gx: each gy added at the input position its index names; linear in gy."""

    @staticmethod
    def forward(ctx, gy, indices, input_shape):
        ctx.save_for_backward(indices)
        return engine_for(gy.device).max_pool2d_backward(gy, indices, tuple(input_shape))

    @staticmethod
    def backward(ctx, ggx):
        (indices,) = ctx.saved_tensors
        picked = ggx.flatten(2).gather(2, indices.flatten(2)).view_as(indices)
        return picked, None, None
