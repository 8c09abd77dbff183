"""The only code that knows both torch and convkit's kernels.

``engine_for(device)`` gives the :class:`KernelEngine` for tensors on that device: it turns
tensors into the kernels' arrays (zero-copy views), resolves ``algorithm="auto"``
(``convkit.engine.algorithm``, the same rule on every device), calls the torch-free kernel
module (``convkit.kernels.cpu`` or ``convkit.kernels.cuda``: one contract) and wraps the results
back as tensors. Device specifics live in ``engine/cpu.py`` (threads follow torch, process setup on
the first call) and ``engine/cuda.py`` (torch's streams and allocator).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from convkit.engine import algorithm as _algorithm
from convkit.kernels.shapes import conv_output_size

# argument types passed to the kernels as they are; anything else is a tensor (an isinstance test
# against torch.Tensor goes through its metaclass: 0.15 us per int or tuple, a tenth of a tiny
# ReLU's engine time)
_PLAIN_ARGUMENTS = frozenset({int, float, bool, str, tuple, list, torch.Size, type(None)})


class KernelEngine:
    """Calls a torch-free kernel module with torch tensors.

    ``engine.<name>(*args)`` converts tensor arguments with ``to_array`` (zero-copy views),
    calls ``kernels.<name>(*args, **launch_kwargs())`` and wraps array results with
    ``to_tensor`` (zero-copy), tuples included. The three conv passes first resolve
    ``algorithm="auto"`` to "direct" or "im2col".
    """

    def __init__(self, device_type: str, kernels, to_array: Callable, to_tensor: Callable,
                 launch_kwargs: Callable[[], dict] = dict):
        self.device_type = device_type
        self.kernels = kernels
        self.to_array = to_array
        self.to_tensor = to_tensor
        self.launch_kwargs = launch_kwargs
        self._conv_kernels = {name: getattr(kernels, "conv2d_" + name)
                              for name in ("forward", "backward_input", "backward_weight")}

    def __getattr__(self, name: str):
        call = self._wrap(name)
        self.__dict__[name] = call  # later lookups skip __getattr__
        return call

    def _wrap(self, name: str):
        """The kernel ``name`` taking and returning tensors."""
        fn = getattr(self.kernels, name)
        to_array, to_tensor, launch_kwargs = self.to_array, self.to_tensor, self.launch_kwargs
        plain = _PLAIN_ARGUMENTS

        def call(*args, **kwargs):  # locals only: this runs on every kernel call
            launch = launch_kwargs()
            out = fn(*[a if type(a) in plain else to_array(a) for a in args], **kwargs, **launch)
            if type(out) is tuple:
                return tuple(map(to_tensor, out))
            return to_tensor(out)

        call.__name__ = name
        return call

    def _conv(self, pass_name, algorithm, x_shape, w_shape, y_shape, conf, dtype, args, tail=()):
        """``kernels.conv2d_<pass>(*args, *conf, algorithm, *tail)`` on the arrays of ``args``,
        with "auto" resolved (see ``convkit.engine.algorithm``), as a tensor. Written out
        rather than through the generic wrapper: a tiny conv's call costs a few microseconds of
        Python, and each layer counts."""
        fn = self._conv_kernels[pass_name]
        to_array = self.to_array
        args = [a if type(a) in _PLAIN_ARGUMENTS else to_array(a) for a in args]
        launch = self.launch_kwargs()
        if algorithm == "auto":
            macs = math.prod(y_shape) * math.prod(w_shape[1:])
            if _algorithm.timing_applies(self.device_type, macs):
                return self.to_tensor(_algorithm.run(
                    pass_name, self.device_type, x_shape, w_shape, conf, dtype, macs,
                    lambda alg: fn(*args, *conf, alg, *tail, **launch)))
            algorithm = _algorithm.rule(pass_name, w_shape, conf[3], macs, conf, y_shape[2:],
                                        self.device_type)
        return self.to_tensor(fn(*args, *conf, algorithm, *tail, **launch))

    def conv2d_forward(self, x, w, b, stride, padding, dilation, groups, algorithm,
                       relu=False):
        """y = conv2d(x, w, b) (then ReLU when ``relu``), as the kernels' conv2d_forward."""
        y_shape = (x.shape[0], w.shape[0],
                   conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0]),
                   conv_output_size(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1]))
        return self._conv("forward", algorithm, x.shape, w.shape, y_shape,
                          (stride, padding, dilation, groups), x.dtype, (x, w, b), (relu,))

    def conv2d_backward_input(self, gy, w, input_shape, stride, padding, dilation, groups,
                              algorithm):
        """grad_input, as the kernels' conv2d_backward_input."""
        input_shape = tuple(input_shape)
        return self._conv("backward_input", algorithm, input_shape, w.shape, gy.shape,
                          (stride, padding, dilation, groups), gy.dtype, (gy, w, input_shape))

    def conv2d_backward_weight(self, x, gy, weight_shape, stride, padding, dilation, groups,
                               algorithm):
        """grad_weight, as the kernels' conv2d_backward_weight."""
        weight_shape = tuple(weight_shape)
        return self._conv("backward_weight", algorithm, x.shape, weight_shape, gy.shape,
                          (stride, padding, dilation, groups), x.dtype, (x, gy, weight_shape))


def engine_for(device: torch.device) -> KernelEngine:
    """The kernel engine for tensors on ``device``; never copies between devices."""
    if device.type == "cpu":
        from convkit.engine.cpu import CPU_ENGINE
        return CPU_ENGINE
    if device.type == "cuda":
        try:
            from convkit.engine.cuda import cuda_engine
        except ImportError as e:
            raise RuntimeError(
                f"convkit: got a tensor on {device}, but the CUDA engine is not available ({e}). "
                "Install the CUDA extra (pip install 'convkit[cuda]') on a machine with an NVIDIA "
                "GPU, or move the model and inputs to the CPU.") from e
        return cuda_engine(device)
    raise RuntimeError(f"convkit: tensors on device {device} are not supported; "
                       "expected a 'cpu' or 'cuda' device")


__all__ = ["KernelEngine", "engine_for"]
