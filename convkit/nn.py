"""Drop-in modules: same constructor arguments, parameters, initialisation, ``extra_repr`` and
``state_dict`` as torch.nn (they subclass it), forward through convkit's kernels.

``convert(model)`` swaps every torch.nn Conv2d / ReLU / MaxPool2d in a model for these,
keeping the very same Parameter objects (optimisers built before the swap stay valid);
``functional=True`` also routes the calls its forward makes (:func:`convkit.use`), and
:func:`conversion_report` (``report=True``) says what runs on convkit and what stays on torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

from torch import nn as tnn

from convkit import functional as CF
from convkit.kernels.shapes import ArgumentError
from convkit.routing import RoutedForward, unrouted


class Conv2d(tnn.Conv2d):
    """``torch.nn.Conv2d`` computed by convkit; also accepts ``padding_mode="symmetric"``
    (edge-repeating mirror, scipy's boundary='symm') and ``algorithm="auto"|"direct"|"im2col"``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 algorithm: str = "auto"):
        symmetric = padding_mode == "symmetric"
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, "reflect" if symmetric else padding_mode, device, dtype)
        if symmetric:
            self.padding_mode = "symmetric"
        if algorithm not in CF.ALGORITHMS:
            raise ArgumentError(f"Conv2d: algorithm must be one of {CF.ALGORITHMS}, "
                                f"got {algorithm!r}")
        self.algorithm = algorithm

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.algorithm == "auto" else s + f", algorithm={self.algorithm!r}"

    # the functional op this module applies; Conv2dReLU swaps in the fused one
    _functional = staticmethod(CF.conv2d)

    @unrouted
    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            # torch's one place for non-zero padding modes: pad, then a zero-padding conv.
            input = CF.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._functional(input, weight, bias, self.stride, padding, self.dilation,
                                self.groups, algorithm=self.algorithm)


class Conv2dReLU(Conv2d):
    """``Conv2d`` followed by ReLU as one fused op (:func:`convkit.functional.conv2d_relu`);
    parameters and ``state_dict`` are exactly a Conv2d's."""

    _functional = staticmethod(CF.conv2d_relu)


class ReLU(tnn.ReLU):
    """``torch.nn.ReLU`` computed by convkit."""

    @unrouted
    def forward(self, input):
        return CF.relu(input, inplace=self.inplace)


class MaxPool2d(tnn.MaxPool2d):
    """``torch.nn.MaxPool2d`` computed by convkit."""

    @unrouted
    def forward(self, input):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


def _converted(m: tnn.Module, algorithm: str, cls=None):
    if type(m) is tnn.Conv2d:
        new = (cls or Conv2d)(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                     m.dilation, m.groups, m.bias is not None, m.padding_mode,
                     device=m.weight.device, dtype=m.weight.dtype, algorithm=algorithm)
        new.weight = m.weight
        new.bias = m.bias
    elif type(m) is tnn.ReLU:
        new = ReLU(inplace=m.inplace)
    elif type(m) is tnn.MaxPool2d:
        new = MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                        m.ceil_mode)
    else:
        return None
    new.train(m.training)
    return new


def convert(model: tnn.Module, algorithm: str = "auto", fuse_relu: bool = False,
            functional: bool = False, report: bool = False) -> tnn.Module:
    """Replace every torch.nn Conv2d / ReLU / MaxPool2d in ``model`` (the model itself included)
    with convkit's, in place, sharing the original parameters; returns the model.

    Only those exact classes are swapped: a subclass (its forward may differ), other
    activations, pools and convolutions stay on torch. With ``fuse_relu``, a Conv2d directly
    followed by a ReLU inside an ``nn.Sequential`` becomes one :class:`Conv2dReLU` and the ReLU
    an ``nn.Identity`` (state_dict keys are unchanged). With ``functional``, the model's
    ``forward`` runs inside :func:`convkit.use` (``algorithm`` its convs'), so the
    ``F.conv2d`` / ``F.relu`` / ``F.max_pool2d`` calls made in forward (and a subclass's) are
    convkit's too. With ``report``, prints :func:`conversion_report` of the result.
    """
    model = _convert(model, algorithm, fuse_relu)
    if functional:
        model.forward = RoutedForward.of(model, algorithm)
    if report:
        print(conversion_report(model))
    return model


def _convert(model: tnn.Module, algorithm: str, fuse_relu: bool) -> tnn.Module:
    if not isinstance(model, tnn.Module):
        raise TypeError(f"convert(): expected a torch.nn.Module, got {type(model).__name__}")
    top = _converted(model, algorithm)
    if top is not None:
        return top
    children = list(model.named_children())
    for i, (name, child) in enumerate(children):
        if child is None:  # a ReLU already fused into the conv before it
            continue
        fuse = (fuse_relu and isinstance(model, tnn.Sequential) and type(child) is tnn.Conv2d
                and i + 1 < len(children) and type(children[i + 1][1]) is tnn.ReLU)
        new = _converted(child, algorithm, Conv2dReLU if fuse else None)
        if new is None:
            _convert(child, algorithm, fuse_relu)
            continue
        setattr(model, name, new)
        if fuse:
            setattr(model, children[i + 1][0], tnn.Identity())
            children[i + 1] = (children[i + 1][0], None)
    return model


_KINDS = (tnn.Conv2d, tnn.ReLU, tnn.MaxPool2d)


def _torch_reason(m: tnn.Module, functional: bool):
    """Why ``m`` stays on torch, for a module of the kinds convkit deals in (convolutions,
    activations, pools); None for convkit's modules and every other kind."""
    if isinstance(m, (Conv2d, ReLU, MaxPool2d)):
        return None
    if type(m) in _KINDS:
        return "torch.nn's own: convert() swaps it"
    for kind in _KINDS:
        if isinstance(m, kind):
            return (f"a subclass of nn.{kind.__name__} (its forward may differ): convert swaps "
                    f"exact classes only" + ("; the calls its forward makes are routed"
                                             if functional else ""))
    module = type(m).__module__
    if module == "torch.nn.modules.activation" and not isinstance(m, tnn.MultiheadAttention):
        return "an activation convkit does not implement"
    if module == "torch.nn.modules.pooling":
        return "a pool convkit does not implement"
    if module == "torch.nn.modules.conv":
        return "a convolution convkit does not implement (it has nn.Conv2d's only)"
    return None


@dataclass
class ConversionReport:
    """What runs on convkit in a model and what stays on torch.

    ``convkit``: (qualified name, class name) of each convkit module; ``torch``: (qualified
    name, class name, reason) of each convolution, activation or pool module left on torch;
    ``functional``: whether the calls made in forward are routed (:func:`convkit.use`).
    ``str()`` gives the table ``convert(..., report=True)`` prints.
    """

    convkit: List[Tuple[str, str]] = field(default_factory=list)
    torch: List[Tuple[str, str, str]] = field(default_factory=list)
    functional: bool = False

    def __str__(self) -> str:
        groups: dict = {}
        for name, cls in self.convkit:
            groups.setdefault(("convkit", cls, ""), []).append(name)
        for name, cls, reason in self.torch:
            groups.setdefault(("torch", cls, reason), []).append(name)
        lines = [f"convkit: {len(self.convkit)} modules on convkit, {len(self.torch)} "
                 f"convolution/activation/pool modules left on torch"]
        width = max([len(cls) for _, cls, _ in groups] + [5])
        for (where, cls, reason), names in groups.items():
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            lines.append(f"  {where:<7} {cls:<{width}} x{len(names):<4} {shown}"
                         + (f"  ({reason})" if reason else ""))
        lines.append("  calls in forward (F.conv2d, F.relu, F.max_pool2d, ...): " + (
            "routed to convkit (forward runs inside convkit.use())" if self.functional else
            "stay on torch (convert(model, functional=True) or `with convkit.use():` routes "
            "them)"))
        return "\n".join(lines)


def conversion_report(model: tnn.Module) -> ConversionReport:
    """The :class:`ConversionReport` of ``model`` (converted or not: on an unconverted model
    it lists what ``convert`` would swap, as left on torch)."""
    functional = isinstance(model.__dict__.get("forward"), RoutedForward)
    report = ConversionReport(functional=functional)
    for name, m in model.named_modules():
        name = name or "(model)"
        if isinstance(m, (Conv2d, ReLU, MaxPool2d)):
            report.convkit.append((name, type(m).__name__))
        else:
            reason = _torch_reason(m, functional)
            if reason is not None:
                report.torch.append((name, type(m).__name__, reason))
    return report


__all__ = ["Conv2d", "Conv2dReLU", "ReLU", "MaxPool2d", "ConversionReport", "conversion_report",
           "convert"]
