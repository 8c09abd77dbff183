"""vmap rules of ``torch.ops.convkit.*`` (``torch.library.register_vmap``): how torch.func.vmap
runs each op over a batch of problems. The batch is folded into the images (N) where the
weights are shared, and into the groups where they are not (B problems = one conv with B times
the groups, as functorch's own conv rule does), so every batched call is one kernel call.

The rules receive the physical tensors and each one's batch dimension (None: not batched) and
return (result, the result's batch dimension).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from convkit.autograd.ops import LIB, NAMESPACE, OPS


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
        w = _batch_first(weight, w_dim, B)
        K = w.shape[1]
        b = None if bias is None else _batch_first(bias, b_dim, B).flatten(0, 1)
        y = op(x, w.flatten(0, 1), b, stride, padding, dilation, groups * B, algorithm)
        # batch-first and not a view: an in-place ReLU on it under torch.func.grad would be an
        # in-place change of a view made inside an autograd.Function, which autograd forbids
        return y.unflatten(1, (B, K)).movedim(1, 0).contiguous(), 0

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


def register() -> None:
    """Register every rule above (called once, when convkit.autograd is imported)."""
    for name, rule in VMAP_RULES.items():
        torch.library.register_vmap(f"{NAMESPACE}::{name}", rule, lib=LIB)


__all__ = ["VMAP_RULES", "register"]
