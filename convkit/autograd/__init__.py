"""torch.autograd.Functions over convkit's operators (``convkit.autograd.ops``), one per op.

Arguments arrive validated and normalised from ``convkit.functional``. Every backward is itself
built from convkit Functions (Chainer's formulation: the input gradient of a convolution is a
transposed convolution, the weight gradient a correlation of input and output gradient), so
gradients of gradients work too (``gradgradcheck``). The only torch op used is ``gather`` in the
second derivative of max-pool.

Each Function is written for every tool at once: ``forward`` takes no ctx and calls the op,
``setup_context`` saves what backward needs, and ``generate_vmap_rule`` lets torch.func (grad,
vmap, jacrev) run it over the ops' own vmap rules; torch.compile and torch.export trace it into
a graph of ``torch.ops.convkit.*`` calls. The same ``setup_context`` / ``backward`` pairs are also
registered as the ops' autograd formulas (``torch.library.register_autograd``), so
``torch.ops.convkit.*`` called directly is differentiable too, twice.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from convkit.autograd import ops, vmap

_is_dynamo_compiling = torch.compiler.is_dynamo_compiling
_functorch_active = torch._C._are_functorch_transforms_active


def apply(function, *args):
    """``function.apply(*args)``; in plain eager mode through ``function.eager``, its twin with a
    ctx-taking forward. Why: for a Function with ``setup_context``, ``apply`` binds the arguments
    through ``inspect.signature`` on every call (measured: 61 vs 21 us a call for an 8-argument
    Function on a loaded 2-core machine), while torch.func needs exactly that style; dynamo
    traces either, and gets the setup_context one."""
    if _is_dynamo_compiling() or _functorch_active():
        return function.apply(*args)
    return function.eager.apply(*args)


def call_function(function, *args):
    """:func:`apply` when autograd has something to record: grad mode on and a tensor argument
    that requires grad (in a backward pass: ``create_graph=True``). Otherwise a plain call of
    its forward, which gives the same outputs without the graph bookkeeping (Function.apply
    costs ~10-20 us of Python per call: inference, and the dozen backward sub-calls of a
    training step). Not for in-place Functions: only ``apply`` bumps the version counter
    autograd checks saved tensors against."""
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return apply(function, *args)
    return function.forward(*args)


def _ctx_twin(function):
    """``function`` as an old-style Function: forward(ctx, *args) runs its forward, then its
    setup_context on that ctx; the same backward."""
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(function.__name__ + "Eager", (Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
                 "__doc__": f"{function.__name__} for plain eager calls (see apply)."})


def _conf(inputs) -> tuple:
    """stride, padding, dilation, groups, algorithm as tuples (the dispatcher passes lists)."""
    return tuple(tuple(a) if type(a) is list else a for a in inputs)


class Conv2dFunction(Function):
    """y = conv2d(x, w, b) with explicit (h, w) stride/padding/dilation pairs."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups, algorithm):
        return ops.conv2d(x, w, b, stride, padding, dilation, groups, algorithm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs[:3]
        ctx.conf = _conf(inputs[3:])
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w)

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

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups, algorithm):
        return ops.conv2d_relu(x, w, b, stride, padding, dilation, groups, algorithm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs[:3]
        ctx.conf = _conf(inputs[3:])
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w, output)

    @staticmethod
    def backward(ctx, gy):
        x, w, y = ctx.saved_tensors
        return _conv2d_grads(ctx, call_function(ReLUBackward, gy, y), x, w)


class Conv2dBackwardInput(Function):
    """gx = conv2d_input(gy, w): linear in gy and in w."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, w, input_shape, stride, padding, dilation, groups, algorithm):
        return ops.conv2d_backward_input(gy, w, input_shape, stride, padding, dilation, groups,
                                         algorithm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.conf = _conf(inputs[3:])
        ctx.save_for_backward(*inputs[:2])

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

    generate_vmap_rule = True

    @staticmethod
    def forward(x, gy, weight_shape, stride, padding, dilation, groups, algorithm):
        return ops.conv2d_backward_weight(x, gy, weight_shape, stride, padding, dilation, groups,
                                          algorithm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.conf = _conf(inputs[3:])
        ctx.save_for_backward(*inputs[:2])

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

    generate_vmap_rule = True

    @staticmethod
    def forward(gy):
        return ops.conv2d_backward_bias(gy)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.gy_shape = inputs[0].shape

    @staticmethod
    def backward(ctx, ggb):
        return ggb.view(1, -1, 1, 1).expand(ctx.gy_shape)


class ReLUFunction(Function):
    """y = max(x, 0)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return ops.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, gy, y)


class ReLUInplaceFunction(Function):
    """x = max(x, 0), written into x (``mark_dirty``: autograd then refuses a leaf that
    requires grad, and checks saved versions of x, as for torch's relu_).

    The one Function with a ctx in forward: the in-place result is the input itself, and
    autograd saves an input returned as-is only for such Functions. torch.func transforms accept
    only Functions with ``setup_context``, so under them :func:`relu_inplace` computes out of
    place and copies the result in instead."""

    @staticmethod
    def forward(ctx, x):
        ops.relu_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, gy, y)


def relu_inplace(x: torch.Tensor) -> torch.Tensor:
    """x = max(x, 0) in place, differentiable: :class:`ReLUInplaceFunction`, or under a
    torch.func transform (grad, vmap, jacrev) an out-of-place ReLU copied into x."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return ReLUInplaceFunction.apply(x)
    return x.copy_(call_function(ReLUFunction, x))


class ReLUBackward(Function):
    """gx = gy * (y > 0): linear in gy, piecewise constant in y."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, y):
        return ops.relu_backward(gy, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, ggx):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, ggx, y), None


class MaxPool2dFunction(Function):
    """(y, indices) = max_pool2d(x) with explicit (h, w) pairs; indices are not
    differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, dilation, ceil_mode):
        return ops.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        indices = output[1]
        ctx.input_shape = inputs[0].shape
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)

    @staticmethod
    def backward(ctx, gy, _gindices):
        (indices,) = ctx.saved_tensors
        gx = call_function(MaxPool2dBackward, gy, indices, ctx.input_shape)
        return gx, None, None, None, None, None


class MaxPool2dBackward(Function):
    """gx: each gy added at the input position its index names; linear in gy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, indices, input_shape):
        return ops.max_pool2d_backward(gy, indices, input_shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, ggx):
        (indices,) = ctx.saved_tensors
        picked = ggx.flatten(2).gather(2, indices.flatten(2)).view_as(indices)
        return picked, None, None


for _function in (Conv2dFunction, Conv2dReLUFunction, Conv2dBackwardInput, Conv2dBackwardWeight,
                  Conv2dBackwardBias, ReLUFunction, ReLUBackward, MaxPool2dFunction,
                  MaxPool2dBackward):
    _function.eager = _ctx_twin(_function)

vmap.register()
# the ops' own autograd formulas: the very setup_context / backward of the Functions above
FORMULAS = {"conv2d": Conv2dFunction, "conv2d_relu": Conv2dReLUFunction,
            "conv2d_backward_input": Conv2dBackwardInput,
            "conv2d_backward_weight": Conv2dBackwardWeight,
            "conv2d_backward_bias": Conv2dBackwardBias, "relu": ReLUFunction,
            "relu_backward": ReLUBackward, "max_pool2d": MaxPool2dFunction,
            "max_pool2d_backward": MaxPool2dBackward}
for _name, _function in FORMULAS.items():
    torch.library.register_autograd(f"{ops.NAMESPACE}::{_name}", _function.backward,
                                    setup_context=_function.setup_context, lib=ops.LIB)

__all__ = ["apply", "call_function", "Conv2dFunction", "Conv2dReLUFunction", "Conv2dBackwardInput",
           "Conv2dBackwardWeight", "Conv2dBackwardBias", "ReLUFunction", "ReLUInplaceFunction",
           "relu_inplace", "ReLUBackward", "MaxPool2dFunction", "MaxPool2dBackward", "FORMULAS",
           "ops"]
