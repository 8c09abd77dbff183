"""convkit: hand-written convolution, ReLU and max-pool kernels (Numba on the CPU, numba.cuda on
NVIDIA GPUs) as drop-in replacements for torch.nn layers.

The torch-facing names are imported lazily, so ``import convkit.kernels.cpu`` stays torch-free.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {"Conv2d": "convkit.nn", "ReLU": "convkit.nn", "MaxPool2d": "convkit.nn",
         "convert": "convkit.nn", "conversion_report": "convkit.nn",
         "use": "convkit.routing", "empty_cache": "convkit.runtime.memory"}
_SUBMODULES = {"functional", "nn", "autograd", "engine", "kernels", "runtime", "models", "data",
               "utils", "train", "routing"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"convkit.{name}")
    raise AttributeError(f"module 'convkit' has no attribute {name!r}")


__all__ = ["Conv2d", "MaxPool2d", "ReLU", "conversion_report", "convert", "empty_cache",
           "functional", "nn", "use", "__version__"]
