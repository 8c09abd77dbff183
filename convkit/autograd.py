"""torch.autograd.Functions over convkit's kernels, one per op; ``convkit.engine`` runs them on the
tensors' device.

Arguments arrive validated and normalised from ``convkit.functional``. Every backward is itself
built from convkit Functions (Chainer's formulation: the input gradient of a convolution is a
transposed convolution, the weight gradient a correlation of input and output gradient), so
gradients of gradients work too (``gradgradcheck``). The only torch op used is ``gather`` in the
second derivative of max-pool.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from convkit.engine import engine_for


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
