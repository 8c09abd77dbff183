"""Torch-free kernels: ``cpu`` (Numba @njit) and ``cuda`` (numba.cuda) share one contract."""
