"""Small sizing helpers from the tutorial: output size, parameter count, receptive field."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

from torch import nn

from convkit.kernels.shapes import conv_output_size

Layer = Union[Tuple[int, int], Tuple[int, int, int]]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only those with requires_grad if asked).

    Works on modules built on the ``meta`` device, so a huge layer can be counted without
    allocating it: ``count_parameters(nn.Linear(224 * 224 * 3, 1000, device="meta"))``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def receptive_field_sizes(layers: Sequence[Layer]) -> List[int]:
    """Receptive field after each layer, starting with the input's 1.

    ``layers`` lists ``(kernel, stride)`` or ``(kernel, stride, dilation)`` per layer, as in the
    tutorial. Each layer grows the field by ``(kernel - 1) * dilation * jump``, where ``jump`` is
    the product of the strides of the layers before it (the distance, in input pixels, between
    neighbouring positions of that layer's input):

        r_l = r_{l-1} + (k_l - 1) * d_l * j_{l-1},    j_l = j_{l-1} * s_l,    r_0 = 1, j_0 = 1

    The simplified formula ``r_l = r_{l-1} + (k_l - 1)`` is this with every jump 1; it is right
    only while all strides are 1 and undercounts once a stride appears: for conv3-conv3-pool2-
    conv3-conv3-pool2 it gives 11 where the field is 16.
    """
    sizes, jump = [1], 1
    for layer in layers:
        kernel, stride = layer[0], layer[1]
        dilation = layer[2] if len(layer) > 2 else 1
        if min(kernel, stride, dilation) < 1:
            raise ValueError(f"receptive_field: kernel, stride and dilation must be positive, "
                             f"got layer {tuple(layer)}")
        sizes.append(sizes[-1] + (kernel - 1) * dilation * jump)
        jump *= stride
    return sizes


def receptive_field(layers: Sequence[Layer]) -> int:
    """Receptive field (in input pixels, per side) of one output of the stacked ``layers``.

    See :func:`receptive_field_sizes` for the formula; three stacked 3x3 stride-1 convs give 7,
    and conv3-conv3-pool2-conv3-conv3-pool2 gives 16 (the simplified ``1 + sum(k - 1)``, which
    ignores strides, would give 11).
    """
    return receptive_field_sizes(layers)[-1]


__all__ = ["conv_output_size", "count_parameters", "receptive_field", "receptive_field_sizes"]
