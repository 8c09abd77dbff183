"""torch <-> Numba glue: the KernelEngine for CPU tensors.

Tensors become numpy arrays without a copy (contiguous ones are viewed, ``torch.from_numpy``
wraps results back). Numba's thread count follows torch's (``torch.set_num_threads``). On the
first kernel call the engine runs ``convkit.runtime.setup()`` (threading layer, OpenMP routing),
having named torch's libgomp where torch's parallel backend is OpenMP, so that Numba's parallel
loops run on torch's own pool (see ``convkit.runtime``: each mechanism has an off-switch).
Nothing happens at import.
"""
from __future__ import annotations

import threading

import numba
import torch

import convkit.kernels.cpu as cpu_kernels
import convkit.runtime as runtime
from convkit.engine import KernelEngine
from convkit.runtime import openmp

_threads = threading.local()
_first_call = [True]


def _cpu_array(t: torch.Tensor):
    if t.requires_grad or not t.is_contiguous():
        t = t.detach().contiguous()  # detach() shares memory; contiguous() copies only if needed
    return t.numpy()


def _name_torch_openmp() -> None:
    """Tell the runtime which OpenMP pool to share: torch's, when torch runs on OpenMP."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        runtime.use_openmp(openmp.find_openmp_runtime(prefer="torch"))


def _cpu_launch_kwargs() -> dict:
    """Keep Numba's thread count at torch's (torch.set_num_threads), capped by Numba's pool.

    Both counts are per Python thread; Numba's is set again only when torch's changed (asking
    Numba costs ~10 us a call)."""
    if _first_call[0]:  # process setup before Numba starts its threads (get_num_threads does)
        _name_torch_openmp()
        runtime.setup()
        _first_call[0] = False
    torch_threads = torch.get_num_threads()
    if getattr(_threads, "torch", None) != torch_threads:
        want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != want:
            numba.set_num_threads(want)
        _threads.torch = torch_threads
    return {}


CPU_ENGINE = KernelEngine("cpu", cpu_kernels, _cpu_array, torch.from_numpy, _cpu_launch_kwargs)

__all__ = ["CPU_ENGINE"]
