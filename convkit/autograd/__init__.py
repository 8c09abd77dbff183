"""torch.autograd.Functions over convkit's operators (``convkit.autograd.ops``), one per op.

Arguments arrive validated and normalised from ``convkit.functional``. Every backward is itself
built from convkit Functions (Chainer's formulation: the input gradient of a convolution is a
transposed convolution, the weight gradient a correlation of input and output gradient), so
gradients of gradients work too (``gradgradcheck``), and so is every forward-mode derivative
(``tangent``, the jvp: each op is linear in each tensor argument, or piecewise so). The only
torch ops used are ``gather`` / ``masked_fill`` where max-pool's derivatives pick the maxima.

Each Function is written for every tool at once: ``forward`` takes no ctx and calls the op,
``setup_context`` saves what backward and the forward-mode ``tangent`` need, and
``generate_vmap_rule`` lets torch.func (grad, vmap, jacrev, jacfwd, hessian) run it over the
ops' own vmap rules; torch.compile and torch.export trace it into a graph of
``torch.ops.convkit.*`` calls. :func:`apply` picks the variant each context takes. The same
``setup_context`` / ``backward`` pairs are also registered as the ops' autograd formulas
(``torch.library.register_autograd``), so ``torch.ops.convkit.*`` called directly is
differentiable too, twice.
"""
from __future__ import annotations

import torch
from torch.autograd import Function
from torch.autograd import forward_ad as _forward_ad

from convkit.autograd import ops, vmap

_is_dynamo_compiling = torch.compiler.is_dynamo_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_Tensor = torch.Tensor
_C_APPLY = torch._C._FunctionBase.__dict__["apply"]  # autograd's apply, below Function.apply


def _forward_mode() -> bool:
    """Forward-mode AD is on: ``forward_ad.dual_level`` or a torch.func jvp (jacfwd, hessian).
    Its tangents show in no ``requires_grad``: they ride on the Functions' jvp."""
    if _forward_ad._current_level >= 0:
        return True
    if not _functorch_active():
        return False
    return any(i.key() == _JVP for i in torch._C._functorch.get_interpreter_stack())


_JVP = torch._C._functorch.TransformType.Jvp


def _save_for_forward(ctx, *tensors) -> None:
    """``ctx.save_for_forward`` where forward-mode AD is on (a tangent can only flow then): it
    costs ~8 us a Function call, a third of a tiny conv's, measured."""
    if not _is_dynamo_compiling() and _forward_mode():
        ctx.save_for_forward(*tensors)


def needs_autograd(*tensors) -> bool:
    """Whether a call must go through Function.apply rather than a plain call of the op: grad
    mode on and a tensor that requires grad (in a backward pass: ``create_graph=True``; under
    torch.func.grad the tensors it differentiates), or forward-mode AD. A plain call gives the
    same outputs without the graph bookkeeping (Function.apply costs ~10-20 us of Python a
    call: inference, and the dozen backward sub-calls of a training step); under a vmap alone
    the ops' own vmap rules serve."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return not _is_dynamo_compiling() and _forward_mode()


def apply(function, *args):
    """``function.apply(*args)`` through the variant of ``function`` each context takes:

    - dynamo (torch.compile, export): the Function itself (forward, ``setup_context``,
      backward); it has no ``jvp``, which dynamo refuses ("Unsupported custom jvp");
    - torch.func transforms: ``function.functorch``, the same plus ``jvp`` (its ``tangent``)
      and a generated vmap rule;
    - plain eager: ``function.eager``, a twin with a ctx-taking forward (and the jvp, for
      forward-mode AD), because for a Function with ``setup_context`` ``apply`` binds the
      arguments through ``inspect.signature`` on every call (measured: 61 vs 21 us a call for an
      8-argument Function on a loaded 2-core machine). The twin is applied by autograd's C++
      ``apply`` itself: Python's ``Function.apply`` only adds a pytree pass over the arguments
      that unwraps functorch tensors outliving their transform (none among plain tensors; such
      a tensor takes ``Function.apply``): 13.1 vs 6.7 us for an 11-argument Function, measured.
    """
    if _is_dynamo_compiling():
        return function.apply(*args)
    if _functorch_active():
        return function.functorch.apply(*args)
    for a in args:
        if type(a) is _Tensor and _is_wrapped(a):  # a functorch wrapper outliving its transform
            return function.eager.apply(*args)  # Function.apply unwraps it first
    return function.eager.c_apply(*args)


def call_function(function, *args):
    """:func:`apply` when :func:`needs_autograd` says so, else a plain call of the forward. Not
    for in-place Functions: only ``apply`` bumps the version counter autograd checks saved
    tensors against."""
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return apply(function, *args)
    if not _is_dynamo_compiling() and _forward_mode():
        return apply(function, *args)
    return function.forward(*args)


def _ctx_twin(function):
    """``function`` as an old-style Function: forward(ctx, *args) runs its forward, then its
    setup_context on that ctx; the same backward, and its tangent as jvp."""
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(function.__name__ + "Eager", (Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
                 "jvp": staticmethod(function.tangent),
                 "__doc__": f"{function.__name__} for plain eager calls (see apply)."})


def _with_jvp(function):
    """``function`` with its tangent as jvp, for torch.func (see :func:`apply`)."""
    return type(function.__name__ + "Func", (Function,),
                {"forward": staticmethod(function.forward),
                 "setup_context": staticmethod(function.setup_context),
                 "backward": staticmethod(function.backward),
                 "jvp": staticmethod(function.tangent), "generate_vmap_rule": True,
                 "__doc__": f"{function.__name__} for torch.func (see apply)."})


def flat(args) -> tuple:
    """The arguments with every pair or size spelled out: ``(x, w, b, (1, 2), ...)`` ->
    ``(x, w, b, 1, 2, ...)``. The Functions take flat arguments because torch.func pairs each
    argument with one tangent when it runs jvp over vmap (hessian = jacfwd of jacrev), which a
    tuple argument breaks."""
    out = []
    for a in args:
        if type(a) in (tuple, list, torch.Size):
            out.extend(a)
        else:
            out.append(a)
    return tuple(out)


def _pairs(sh, sw, ph, pw, dh, dw, groups, algorithm) -> tuple:
    """The flat conv arguments back as (stride, padding, dilation, groups, algorithm)."""
    return (sh, sw), (ph, pw), (dh, dw), groups, algorithm


def _sum(terms):
    """The sum of the terms that are not None (None if none is)."""
    terms = [t for t in terms if t is not None]
    return None if not terms else terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])


class Conv2dFunction(Function):
    """y = conv2d(x, w, b); arguments (x, w, b, sh, sw, ph, pw, dil_h, dil_w, groups,
    algorithm) (see :func:`flat`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, *conf):
        return ops.conv2d(x, w, b, *_pairs(*conf))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs[:3]
        ctx.conf = inputs[3:]
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w)
        _save_for_forward(ctx, x, w)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return _conv2d_grads(ctx, gy, x, w)

    @staticmethod
    def tangent(ctx, tx, tw, tb, *_):
        x, w = ctx.saved_tensors
        return _conv2d_tangent(ctx, x, w, tx, tw, tb)


def _batched() -> bool:
    """Under a vmap (torch.func's, or the legacy one of autograd's batched gradients): batched
    tensors have no memory format to follow. Dynamo traces neither."""
    return not _is_dynamo_compiling() and (_functorch_active() or ops.legacy_vmap())


def _suggests_channels_last(*tensors) -> bool:
    """torch would lay a result of these tensors out channels-last (never under a vmap)."""
    return not _batched() and ops.any_channels_last(*tensors)


def _laid_out(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t channels-last where ``channels_last`` (a gradient laid out as torch's)."""
    if channels_last and not _batched():
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _conv2d_grads(ctx, gy, x, w):
    """The gradients a conv Function's backward returns, for the inputs that need them."""
    gx = gw = gb = None
    # torch's CPU conv gives channels-last gradients where the forward ran channels-last
    layout = _suggests_channels_last(x, w)
    if ctx.needs_input_grad[0]:
        gx = _laid_out(call_function(Conv2dBackwardInput, gy, w, *x.shape, *ctx.conf), layout)
    if ctx.needs_input_grad[1]:
        gw = _laid_out(call_function(Conv2dBackwardWeight, x, gy, *w.shape, *ctx.conf), layout)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = call_function(Conv2dBackwardBias, gy)
    return (gx, gw, gb) + (None,) * len(ctx.conf)


def _conv2d_tangent(ctx, x, w, tx, tw, tb):
    """d conv2d(x, w, b) = conv2d(dx, w, db) + conv2d(x, dw): bilinear in (x, w), affine in b."""
    terms = []
    if tx is not None:
        terms.append(call_function(Conv2dFunction, tx, w, tb, *ctx.conf))
        tb = None
    if tw is not None:
        terms.append(call_function(Conv2dFunction, x, tw, tb, *ctx.conf))
        tb = None
    if tb is not None:  # only the bias moves
        terms.append(call_function(Conv2dFunction, torch.zeros_like(x), w, tb, *ctx.conf))
    return _sum(terms)


class Conv2dReLUFunction(Function):
    """y = relu(conv2d(x, w, b)) as one Function: bias and ReLU are the conv kernels' epilogue
    (applied as each block of y is stored) and only y is kept for backward (no pre-activation
    tensor is stored)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, *conf):
        return ops.conv2d_relu(x, w, b, *_pairs(*conf))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs[:3]
        ctx.conf = inputs[3:]
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w, output)
        _save_for_forward(ctx, x, w, output)

    @staticmethod
    def backward(ctx, gy):
        x, w, y = ctx.saved_tensors
        return _conv2d_grads(ctx, call_function(ReLUBackward, gy, y), x, w)

    @staticmethod
    def tangent(ctx, tx, tw, tb, *_):
        x, w, y = ctx.saved_tensors
        t = _conv2d_tangent(ctx, x, w, tx, tw, tb)
        return None if t is None else call_function(ReLUBackward, t, y)


class Conv2dBackwardInput(Function):
    """gx = conv2d_input(gy, w): linear in gy and in w; arguments (gy, w, N, C, H, W, *conf)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, w, N, C, H, W, *conf):
        return ops.conv2d_backward_input(gy, w, (N, C, H, W), *_pairs(*conf))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.input_shape, ctx.conf = inputs[2:6], inputs[6:]
        ctx.save_for_backward(*inputs[:2])
        _save_for_forward(ctx, *inputs[:2])

    @staticmethod
    def backward(ctx, ggx):
        gy, w = ctx.saved_tensors
        d_gy = d_w = None
        if ctx.needs_input_grad[0]:
            d_gy = call_function(Conv2dFunction, ggx, w, None, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_w = call_function(Conv2dBackwardWeight, ggx, gy, *w.shape, *ctx.conf)
        return (d_gy, d_w) + (None,) * 12

    @staticmethod
    def tangent(ctx, t_gy, t_w, *_):
        gy, w = ctx.saved_tensors
        return _sum([
            None if t_gy is None else call_function(Conv2dBackwardInput, t_gy, w,
                                                    *ctx.input_shape, *ctx.conf),
            None if t_w is None else call_function(Conv2dBackwardInput, gy, t_w,
                                                   *ctx.input_shape, *ctx.conf)])


class Conv2dBackwardWeight(Function):
    """gw = conv2d_weight(x, gy): linear in x and in gy; arguments (x, gy, K, C/groups, KH, KW,
    *conf)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, gy, K, Cg, KH, KW, *conf):
        return ops.conv2d_backward_weight(x, gy, (K, Cg, KH, KW), *_pairs(*conf))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.weight_shape, ctx.conf = inputs[2:6], inputs[6:]
        ctx.save_for_backward(*inputs[:2])
        _save_for_forward(ctx, *inputs[:2])

    @staticmethod
    def backward(ctx, ggw):
        x, gy = ctx.saved_tensors
        d_x = d_gy = None
        if ctx.needs_input_grad[0]:
            d_x = call_function(Conv2dBackwardInput, gy, ggw, *x.shape, *ctx.conf)
        if ctx.needs_input_grad[1]:
            d_gy = call_function(Conv2dFunction, x, ggw, None, *ctx.conf)
        return (d_x, d_gy) + (None,) * 12

    @staticmethod
    def tangent(ctx, t_x, t_gy, *_):
        x, gy = ctx.saved_tensors
        return _sum([
            None if t_x is None else call_function(Conv2dBackwardWeight, t_x, gy,
                                                   *ctx.weight_shape, *ctx.conf),
            None if t_gy is None else call_function(Conv2dBackwardWeight, x, t_gy,
                                                    *ctx.weight_shape, *ctx.conf)])


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

    @staticmethod
    def tangent(ctx, t_gy):
        return call_function(Conv2dBackwardBias, t_gy)


class ReLUFunction(Function):
    """y = max(x, 0)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return ops.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        _save_for_forward(ctx, output)

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, gy, y)

    @staticmethod
    def tangent(ctx, tx):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, tx, y)


class ReLUInplaceFunction(Function):
    """x = max(x, 0), written into x (``mark_dirty``: autograd then refuses a leaf that
    requires grad, and checks saved versions of x, as for torch's relu_).

    The one Function with a ctx in forward: the in-place result is the input itself, and
    autograd saves an input returned as-is only for such Functions. torch.func transforms accept
    only Functions with ``setup_context``, so under them (and under forward-mode AD)
    :func:`relu_inplace` computes out of place and copies the result in instead."""

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
    """x = max(x, 0) in place: :class:`ReLUInplaceFunction` where autograd has something to
    record; the ``relu_`` op (its vmap rule mutates the batch) where nothing is recorded;
    under a torch.func transform or forward-mode AD an out-of-place ReLU copied into x.

    Dynamo traces ``mark_dirty`` only where it records a backward, so with nothing to record
    (no_grad, inference_mode: compiled inference) it gets the op, which it traces as a
    mutation."""
    if not needs_autograd(x):
        return ops.relu_(x)
    if _is_dynamo_compiling():
        return ReLUInplaceFunction.apply(x)
    if not (_functorch_active() or _forward_ad._current_level >= 0):
        return ReLUInplaceFunction.apply(x)
    return x.copy_(apply(ReLUFunction, x))


class ReLUBackward(Function):
    """gx = gy * (y > 0): linear in gy, piecewise constant in y."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, y):
        return ops.relu_backward(gy, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        _save_for_forward(ctx, inputs[1])

    @staticmethod
    def backward(ctx, ggx):
        (y,) = ctx.saved_tensors
        return call_function(ReLUBackward, ggx, y), None

    @staticmethod
    def tangent(ctx, t_gy, _t_y):
        (y,) = ctx.saved_tensors
        return None if t_gy is None else call_function(ReLUBackward, t_gy, y)


def _pick(t: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """t (N, C, H, W) at each pooling window's maximum (``indices``: flat in each H*W plane); a
    window with no input tap (its index lies past the plane, as torch's) picks 0."""
    N, C = indices.shape[:2]
    flat, idx = t.reshape(N, C, -1), indices.reshape(N, C, -1)  # legacy vmap has no flatten
    plane = flat.shape[2]
    picked = flat.gather(2, idx.clamp(max=plane - 1))
    return picked.masked_fill(idx >= plane, 0).view(indices.shape)


class MaxPool2dFunction(Function):
    """(y, indices) = max_pool2d(x); arguments (x, KH, KW, sh, sw, ph, pw, dil_h, dil_w,
    ceil_mode); indices are not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, KH, KW, sh, sw, ph, pw, dh, dw, ceil_mode):
        return ops.max_pool2d(x, (KH, KW), (sh, sw), (ph, pw), (dh, dw), ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        indices = output[1]
        ctx.input_shape = tuple(inputs[0].shape)
        ctx.channels_last = _suggests_channels_last(inputs[0])  # torch's gradient keeps it
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        _save_for_forward(ctx, indices)

    @staticmethod
    def backward(ctx, gy, _gindices):
        (indices,) = ctx.saved_tensors
        gx = call_function(MaxPool2dBackward, gy, indices, *ctx.input_shape)
        return (_laid_out(gx, ctx.channels_last),) + (None,) * 9

    @staticmethod
    def tangent(ctx, tx, *_):
        (indices,) = ctx.saved_tensors
        return _pick(tx, indices), None


class MaxPool2dBackward(Function):
    """gx: each gy added at the input position its index names; linear in gy; arguments
    (gy, indices, N, C, H, W)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, indices, N, C, H, W):
        return ops.max_pool2d_backward(gy, indices, (N, C, H, W))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.input_shape = inputs[2:]
        ctx.save_for_backward(inputs[1])
        _save_for_forward(ctx, inputs[1])

    @staticmethod
    def backward(ctx, ggx):
        (indices,) = ctx.saved_tensors
        return (_pick(ggx, indices),) + (None,) * 5

    @staticmethod
    def tangent(ctx, t_gy, *_):
        (indices,) = ctx.saved_tensors
        return call_function(MaxPool2dBackward, t_gy, indices, *ctx.input_shape)


for _function in (Conv2dFunction, Conv2dReLUFunction, Conv2dBackwardInput, Conv2dBackwardWeight,
                  Conv2dBackwardBias, ReLUFunction, ReLUBackward, MaxPool2dFunction,
                  MaxPool2dBackward):
    _function.eager = _ctx_twin(_function)
    _function.eager.c_apply = _C_APPLY.__get__(None, _function.eager)
    _function.functorch = _with_jvp(_function)

vmap.register()
# the ops' own autograd formulas: the very setup_context / backward of the Functions above
FORMULAS = {"conv2d": Conv2dFunction, "conv2d_relu": Conv2dReLUFunction,
            "conv2d_backward_input": Conv2dBackwardInput,
            "conv2d_backward_weight": Conv2dBackwardWeight,
            "conv2d_backward_bias": Conv2dBackwardBias, "relu": ReLUFunction,
            "relu_backward": ReLUBackward, "max_pool2d": MaxPool2dFunction,
            "max_pool2d_backward": MaxPool2dBackward}


def _op_formula(function):
    """(backward, setup_context) of ``function`` for its op, whose arguments are the
    Function's with pairs and sizes as lists (see :func:`flat`); tensors come first in both, so
    the op's gradients are the first ones of the Function's."""
    def setup_context(ctx, inputs, output):
        ctx.op_arity = len(inputs)
        function.setup_context(ctx, flat(inputs), output)

    def backward(ctx, *grads):
        out = function.backward(ctx, *grads)
        return out[:ctx.op_arity] if isinstance(out, tuple) else out

    return backward, setup_context


for _name, _function in FORMULAS.items():
    _backward, _setup_context = _op_formula(_function)
    torch.library.register_autograd(f"{ops.NAMESPACE}::{_name}", _backward,
                                    setup_context=_setup_context, lib=ops.LIB)

__all__ = ["apply", "call_function", "flat", "needs_autograd", "Conv2dFunction",
           "Conv2dReLUFunction", "Conv2dBackwardInput", "Conv2dBackwardWeight",
           "Conv2dBackwardBias", "ReLUFunction", "ReLUInplaceFunction", "relu_inplace",
           "ReLUBackward", "MaxPool2dFunction", "MaxPool2dBackward", "FORMULAS", "ops"]
