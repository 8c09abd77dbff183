"""torch.compile(fullgraph=True) and torch.export of models converted to convkit.

Models: the tutorial's SimpleCNN; a small ResNet (BatchNorm, residual adds, in-place ReLU, a
strided 1x1 downsample, a grouped 3x3); a mix of grouped / strided / dilated / 'same' convs,
reflect padding, fused Conv2dReLU and ceil-mode pools. Compiles use the aot_eager backend (the
graph dynamo and AOTAutograd build is what matters here, and inductor's C++ compile is slow on a
busy 2-core machine); the README's example compiles with inductor (tests/test_testing.py runs
it).
"""
import copy
import io

import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounterWithBackend

import convkit
from convkit.models import SimpleCNN


class Block(nn.Module):
    def __init__(self, c, stride=1):
        super().__init__()
        out = c * stride
        self.conv1 = nn.Conv2d(c, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False, groups=2)
        self.bn2 = nn.BatchNorm2d(out)
        self.down = None if stride == 1 else nn.Sequential(
            nn.Conv2d(c, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.layers = nn.Sequential(Block(8), Block(8, 2))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def mixed():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=(2, 1), padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(6, 6, (3, 2), padding="same", groups=3, padding_mode="reflect"), nn.ReLU(),
        nn.MaxPool2d((3, 2), stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True),
        nn.Conv2d(6, 4, 2, stride=2, bias=False), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(), nn.LazyLinear(3))


MODELS = {  # name: (torch model, input shape, convert keyword arguments)
    "simplecnn": (lambda: SimpleCNN(backend="torch"), (3, 1, 28, 28), {}),
    "resnet": (ResNet, (3, 3, 15, 13), {}),
    "mixed": (mixed, (3, 3, 17, 14), {"fuse_relu": True}),
}


def pair(name, dtype=torch.float64):
    """(torch model, the same converted to convkit, an input), in eval mode (dropout off)."""
    make, shape, kwargs = MODELS[name]
    torch.manual_seed(0)
    ref = make().to(dtype)
    x = torch.randn(shape, dtype=dtype)
    ref(x)  # materialise lazy layers
    ref.eval()
    return ref, convkit.convert(copy.deepcopy(ref), **kwargs), x


def grads(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(torch.ones_like(y))
    return [y.detach(), x.grad] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(MODELS))
def test_explain_finds_one_graph_and_no_break(name):
    _, model, x = pair(name, torch.float32)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", ["resnet", "mixed"])
def test_compiled_fullgraph_forward_and_gradients_equal_eager(name):
    ref, model, x = pair(name)
    model.train()  # batch statistics in BatchNorm, as in training
    ref.train()
    expected = grads(ref, x)
    eager = grads(copy.deepcopy(model), x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = grads(compiled, x)
    for g, e, r in zip(got, eager, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_new_batch_sizes_do_not_recompile_per_size():
    """One static compile, then one dynamic one for the second size; later sizes reuse it."""
    ref, model, _ = pair("simplecnn", torch.float32)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for n in (2, 3, 5, 8, 4):
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), ref(x), rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 2


def test_marked_dynamic_batch_compiles_once():
    _, model, _ = pair("mixed", torch.float32)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for n in (3, 6, 2):
        x = torch.randn(n, 3, 17, 14)
        torch._dynamo.mark_dynamic(x, 0)
        compiled(x).sum().backward()
    assert counter.frame_count == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_program_matches_eager(name):
    ref, model, x = pair(name)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "convkit.conv2d.default" in targets or "convkit.conv2d_relu.default" in targets
    for n in (x.shape[0], 5):
        xs = torch.randn(n, *x.shape[1:], dtype=x.dtype)
        torch.testing.assert_close(program.module()(xs), ref(xs), rtol=1e-10, atol=1e-10)


def test_exported_program_saves_and_loads():
    ref, model, x = pair("resnet")
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    torch.testing.assert_close(loaded.module()(x), ref(x), rtol=1e-10, atol=1e-10)
