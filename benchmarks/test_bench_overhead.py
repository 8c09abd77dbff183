"""Per-call overhead: tiny-shape eager calls (N1 C4 8x8, K4 3x3) where the kernels' arithmetic is
negligible and what is timed is the Python between the user and the kernel, against torch on the
same tensors in the same run (pytest-benchmark groups them per op).

    pytest benchmarks/test_bench_overhead.py --benchmark-only --benchmark-columns=min,median

``convkit`` is the public eager path (convkit.functional: validation, then the ops' direct call,
skipping the dispatcher); ``dispatcher`` calls ``torch.ops.convkit.*`` instead (what compiled
graphs, torch.func and dispatch modes go through), so the table also shows what the eager fast
path saves. Each variant is checked against torch before it is timed.
"""
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF

OPS = torch.ops.convkit
CONF = ([1, 1], [1, 1], [1, 1], 1, "auto")


def _tensors(requires_grad=False):
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(4)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def _forward_backward(conv):
    x, w, b = _tensors(requires_grad=True)
    gy = torch.randn(1, 4, 8, 8)

    def step():
        y = conv(x, w, b)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
        return y, gx, gw, gb

    return step


def _calls(op, impl):
    """A zero-argument callable running ``op`` with ``impl`` on the tiny tensors."""
    x, w, b = _tensors()
    table = {
        "conv2d forward": {
            "torch": lambda: F.conv2d(x, w, b, 1, 1),
            "convkit": lambda: CF.conv2d(x, w, b, 1, 1),
            "dispatcher": lambda: OPS.conv2d(x, w, b, *CONF)},
        "relu": {"torch": lambda: F.relu(x), "convkit": lambda: CF.relu(x),
                 "dispatcher": lambda: OPS.relu(x)},
        "max_pool2d": {
            "torch": lambda: F.max_pool2d(x, 2),
            "convkit": lambda: CF.max_pool2d(x, 2),
            "dispatcher": lambda: OPS.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)[0]},
        "conv2d forward+backward": {
            "torch": _forward_backward(lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
            "convkit": _forward_backward(lambda x, w, b: CF.conv2d(x, w, b, 1, 1)),
            "dispatcher": _forward_backward(lambda x, w, b: OPS.conv2d(x, w, b, *CONF))},
    }
    return table[op][impl], table[op]["torch"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread for both sides: these calls are far below any parallel grain, and on a busy
    machine a parallel region's barrier can wait milliseconds for a descheduled worker (seen:
    torch's tiny conv 16 ms with 2 threads, 10 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", ["torch", "convkit", "dispatcher"])
@pytest.mark.parametrize("op", ["conv2d forward", "relu", "max_pool2d",
                                "conv2d forward+backward"])
def test_overhead(benchmark, op, impl):
    call, reference = _calls(op, impl)
    torch.testing.assert_close(call(), reference(), rtol=1e-4, atol=1e-4)
    benchmark.group = f"overhead: {op} (N1 C4 8x8, K4 3x3)"
    benchmark(call)
