"""Shared test fixtures; the report header shows Numba's first-call compile (or cache-load) time."""
import time

import numpy as np
import pytest


def pytest_report_header(config):
    from convkit.kernels import cpu as K

    t0 = time.perf_counter()
    for dt in (np.float32, np.float64):
        x = np.ones((1, 2, 4, 4), dt)
        w = np.ones((2, 1, 2, 2), dt)
        for alg in ("direct", "im2col"):
            y = K.conv2d_forward(x, w, np.ones(2, dt), (1, 1), (1, 1), (1, 1), 2, alg)
            K.conv2d_backward_input(y, w, x.shape, (1, 1), (1, 1), (1, 1), 2, alg)
            K.conv2d_backward_weight(x, y, w.shape, (1, 1), (1, 1), (1, 1), 2, alg)
        K.conv2d_backward_bias(y)
        r = K.relu_forward(x)
        K.relu_backward(r, r)
        p, i = K.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
        K.max_pool2d_backward(p, i, x.shape)
    return (f"convkit: first call of every CPU kernel (float32+float64, Numba compile or cache "
            f"load) took {time.perf_counter() - t0:.1f} s")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


def draw_conv_geometry(rng):
    """(N, C, H, W, K, groups, KH, KW) of a random conv from the parity suites' ranges: one
    group, two groups or depthwise (1 or 2 filters per channel)."""
    kind = rng.choice(["1", "2", "depthwise"])
    if kind == "1":
        G, C, K = 1, rng.randint(1, 8), rng.randint(1, 8)
    elif kind == "2":
        G, C, K = 2, 2 * rng.randint(1, 4), 2 * rng.randint(1, 4)
    else:
        C = rng.randint(1, 8)
        G, K = C, C * rng.choice([1, 2])
    N, H, W = rng.randint(1, 4), rng.randint(1, 17), rng.randint(1, 17)
    KH, KW = rng.randint(1, 5), rng.randint(1, 5)
    return N, C, H, W, K, G, KH, KW
