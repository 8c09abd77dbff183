"""What the CUDA conv kernels apply to an output value as they store it: torch's ReLU rule.

Bias and ReLU are applied in the conv kernels' store loops (``relu=True``), so conv2d_relu is
one launch on the GPU as on the CPU. Torch-free; no kernels of its own.
"""
from numba import cuda


@cuda.jit(device=True, inline=True)
def relu_value(v, zero):
    """torch's clamp_min(v, 0): v where v >= 0 or NaN, else ``zero`` (+0 of v's type: a bare
    ``0`` would make numba unify float32 with int as float64), so NaN propagates and -0.0
    stays -0.0."""
    return zero if v < 0 else v


def kernel_specs(dtype) -> list:
    """No kernels here (see conv_direct.py, conv_im2col.py, gemm.py)."""
    return []


__all__ = ["relu_value", "kernel_specs"]
