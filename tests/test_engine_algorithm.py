"""algorithm="auto" (convkit.engine.algorithm): a fixed rule by default, the same on every device,
so runs repeat bit for bit; timing only when asked for, and never under
torch.use_deterministic_algorithms(True)."""
import os
import subprocess
import sys

import pytest
import torch

import convkit.functional as CF
from convkit.engine import algorithm

# (input, weight, stride, padding, groups) -> hand-worked choice per pass (module docstring:
# forward C/g*KH*KW, backward_input K/g*KH*KW, backward_weight K/g*C/g, each against 32; under
# 2^18 multiply-adds direct)
CASES = [
    # SimpleCNN conv1: 1*9=9 | 32*9=288 | 32*1=32
    ((64, 1, 28, 28), (32, 1, 3, 3), 1, 1, 1, ("direct", "im2col", "im2col")),
    # SimpleCNN conv2: 288 | 576 | 2048
    ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1, 1, ("im2col", "im2col", "im2col")),
    # VGG's first conv: 3*9=27 | 64*9 | 64*3
    ((8, 3, 224, 224), (64, 3, 3, 3), 1, 1, 1, ("direct", "im2col", "im2col")),
    # depthwise 3x3: 9 | 9 | 1
    ((8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 64, ("direct", "direct", "direct")),
    # 1x1 pointwise: 64 | 128 | 8192
    ((8, 64, 56, 56), (128, 64, 1, 1), 1, 0, 1, ("im2col", "im2col", "im2col")),
    # tiny (under 2^18 multiply-adds): direct for every pass
    ((1, 4, 8, 8), (4, 4, 3, 3), 1, 1, 1, ("direct", "direct", "direct")),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, groups, expected", CASES)
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_rule(x_shape, w_shape, stride, padding, groups, expected, device_type):
    got = tuple(CF.select_algorithm(x_shape, w_shape, (stride,) * 2, (padding,) * 2, (1, 1),
                                    groups, torch.float32, device_type, p)
                for p in algorithm.PASSES)
    assert got == expected


def test_select_algorithm_refuses_unknown_pass():
    with pytest.raises(ValueError, match="pass_name"):
        CF.select_algorithm((1, 1, 4, 4), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), 1,
                            pass_name="sideways")


@pytest.mark.parametrize("case", CASES[:2] + CASES[3:4], ids=["conv1", "conv2", "depthwise"])
def test_auto_is_the_chosen_kernel_bit_for_bit(case):
    x_shape, w_shape, stride, padding, groups, expected = case
    x_shape = (4,) + x_shape[1:]  # keep it quick; small batches change only the tiny rule
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, requires_grad=True)
    w = torch.randn(w_shape, generator=g, requires_grad=True)
    picks = [CF.select_algorithm(x.shape, w.shape, (stride,) * 2, (padding,) * 2, (1, 1), groups,
                                 pass_name=p) for p in algorithm.PASSES]
    y = CF.conv2d(x, w, None, stride, padding, 1, groups, algorithm="auto")
    gy = torch.randn(y.shape, generator=g)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    y_ref = CF.conv2d(x, w, None, stride, padding, 1, groups, algorithm=picks[0])
    gx_ref = torch.autograd.grad(CF.conv2d(x, w, None, stride, padding, 1, groups,
                                           algorithm=picks[1]), x, gy)[0]
    gw_ref = torch.autograd.grad(CF.conv2d(x, w, None, stride, padding, 1, groups,
                                           algorithm=picks[2]), w, gy)[0]
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref) and torch.equal(gw, gw_ref)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, None, stride, padding, 1,
                                                             groups), rtol=1e-4, atol=1e-4)


@pytest.fixture
def benchmark_mode():
    algorithm.set_benchmark(True)
    saved = dict(algorithm.CHOICES)
    algorithm.CHOICES.clear()
    yield
    algorithm.set_benchmark(False)
    algorithm.CHOICES.clear()
    algorithm.CHOICES.update(saved)


def _conv2_pass():
    x = torch.randn(8, 32, 14, 14)
    w = torch.randn(64, 32, 3, 3)
    return x, w, CF.conv2d(x, w, padding=1)


def test_benchmark_mode_times_once_and_remembers(benchmark_mode):
    x, w, y = _conv2_pass()
    assert len(algorithm.CHOICES) == 1
    (key, chosen), = algorithm.CHOICES.items()
    assert chosen in ("direct", "im2col", "winograd")  # a 3x3 stride-1 conv: all three timed
    assert CF.select_algorithm(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1) == chosen
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4,
                               atol=1e-4)


def test_deterministic_algorithms_turn_timing_off(benchmark_mode):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _conv2_pass()
    finally:
        torch.use_deterministic_algorithms(before)
    assert algorithm.CHOICES == {}


_REPEAT = r"""
import hashlib, torch, convkit.functional as CF
g = torch.Generator().manual_seed(0)
x = torch.randn(16, 1, 28, 28, generator=g, requires_grad=True)
w1 = torch.randn(32, 1, 3, 3, generator=g, requires_grad=True)
w2 = torch.randn(64, 32, 3, 3, generator=g, requires_grad=True)
y = CF.conv2d(CF.relu(CF.conv2d(x, w1, padding=1)), w2, padding=1)
y.square().sum().backward()
h = hashlib.sha256()
for t in (y, x.grad, w1.grad, w2.grad):
    h.update(t.detach().numpy().tobytes())
print(h.hexdigest())
"""


def test_auto_repeats_bit_for_bit_across_processes():
    env = {k: v for k, v in os.environ.items() if k != "CONVKIT_BENCHMARK"}
    digests = {subprocess.run([sys.executable, "-c", _REPEAT], capture_output=True, text=True,
                              env=env, check=True, timeout=300).stdout.strip()
               for _ in range(2)}
    assert len(digests) == 1
