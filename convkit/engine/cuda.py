"""torch <-> numba.cuda glue: the KernelEngine for CUDA tensors.

Nothing is copied between host and device, and nothing synchronises:
- inputs are viewed with ``numba.cuda.as_cuda_array`` (zero copy; ``sync=False`` because the
  kernels run on the very stream that produced them);
- outputs are allocated by torch's caching allocator (no cudaMalloc per call) and handed back to
  torch as views through ``__cuda_array_interface__``;
- every kernel is launched on torch's current stream for the tensor's device, wrapped once per
  stream with ``numba.cuda.external_stream``, so convkit ops are ordered with torch's own.

Importing this module needs a working numba.cuda (the ``numba-cuda`` package, see the README);
``convkit.engine.engine_for`` turns an ImportError here into a RuntimeError that says what to
install.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from numba import cuda

import convkit.kernels.cuda as cuda_kernels
from convkit.engine import KernelEngine

if not cuda.is_available():
    raise ImportError("numba.cuda cannot use a GPU here: "
                      + " ".join(str(cuda.cuda_error()).split()))

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                 np.dtype(np.int64): torch.int64}


def _to_array(t: torch.Tensor):
    return cuda.as_cuda_array(t.detach().contiguous(), sync=False)


def _torch_alloc(shape, dtype, stream):
    # Called inside a kernel call, where the current torch device is the tensors' device and the
    # current torch stream is the launch stream: the block is stream-ordered like torch's own.
    out = torch.empty(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)], device="cuda")
    return cuda.as_cuda_array(out, sync=False)


@functools.lru_cache(maxsize=None)
def _numba_stream(ptr: int):
    return cuda.external_stream(ptr)


class _OnDevice:
    """The kernel module, with each call made current on ``device`` for torch and numba."""

    def __init__(self, device: torch.device):
        self.index = device.index if device.index is not None else torch.cuda.current_device()

    def __getattr__(self, name: str):
        fn = getattr(cuda_kernels, name)
        index = self.index

        def call(*args, **kwargs):
            if torch.cuda.current_device() == index:
                return fn(*args, **kwargs)
            with torch.cuda.device(index), cuda.gpus[index]:
                return fn(*args, **kwargs)

        return call


@functools.lru_cache(maxsize=None)
def _engine(index: int) -> KernelEngine:
    device = torch.device("cuda", index)

    def launch_kwargs():
        return {"stream": _numba_stream(torch.cuda.current_stream(device).cuda_stream)}

    def to_tensor(arr):
        return torch.as_tensor(arr, device=device)

    return KernelEngine("cuda", kernels=_OnDevice(device), to_array=_to_array,
                        to_tensor=to_tensor,
                        launch_kwargs=launch_kwargs)


def cuda_engine(device: torch.device) -> KernelEngine:
    """The KernelEngine running ``convkit.kernels.cuda`` on CUDA tensors of ``device``."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _engine(index)


cuda_kernels.set_allocator(_torch_alloc)

__all__ = ["cuda_engine"]
