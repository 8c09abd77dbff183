"""torch.autograd.Functions over convkit's kernels, one per op, routed by tensor device.

Arguments arrive validated and normalised from ``convkit.functional``. Every backward is itself
built from convkit Functions (Chainer's formulation: the input gradient of a convolution is a
transposed convolution, the weight gradient a correlation of input and output gradient), so
gradients of gradients work too (``gradgradcheck``). The only torch op used is ``gather`` in the
second derivative of max-pool.
"""
from __future__ import annotations

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
        return call


def _cpu_array(t: torch.Tensor):
    # contiguous() is free when the tensor already is; detach() shares memory.
    return t.detach().contiguous().numpy()


def _cpu_launch_kwargs() -> dict:
    """Keep Numba's thread count at torch's (torch.set_num_threads), capped by Numba's pool."""
    want = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
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
        gx = Conv2dBackwardInput.apply(gy, w, x.shape, *ctx.conf)
    if ctx.needs_input_grad[1]:
        gw = Conv2dBackwardWeight.apply(x, gy, w.shape, *ctx.conf)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = Conv2dBackwardBias.apply(gy)
    return gx, gw, gb, None, None, None, None, None


class Conv2dReLUFunction(Function):
    """y = relu(conv2d(x, w, b)) as one Function: the ReLU runs in place on the conv output and
    only y is kept for backward (no pre-activation tensor is stored)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, algorithm):
        ctx.conf = (stride, padding, dilation, groups, algorithm)
        ctx.has_bias = b is not None
        engine = engine_for(x.device)
        y = engine.conv2d_forward(x, w, b, stride, padding, dilation, groups, algorithm)
        engine.relu_forward(y, y)
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, y = ctx.saved_tensors
        return _conv2d_grads(ctx, ReLUBackward.apply(gy, y), x, w)


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
            d_gy = Conv2dFunction.apply(ggx, w, None, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_w = Conv2dBackwardWeight.apply(ggx, gy, w.shape, *ctx.conf)
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
            d_x = Conv2dBackwardInput.apply(gy, ggw, x.shape, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_gy = Conv2dFunction.apply(x, ggw, None, *ctx.conf)
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
        return ReLUBackward.apply(gy, y), None


class ReLUBackward(Function):
    """gx = gy * (y > 0): linear in gy, piecewise constant in y."""

    @staticmethod
    def forward(ctx, gy, y):
        ctx.save_for_backward(y)
        return engine_for(gy.device).relu_backward(gy, y)

    @staticmethod
    def backward(ctx, ggx):
        (y,) = ctx.saved_tensors
        return ReLUBackward.apply(ggx, y), None


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
        return MaxPool2dBackward.apply(gy, indices, ctx.input_shape), None, None, None, None, None


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
