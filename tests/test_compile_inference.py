"""torch.compile(fullgraph=True) of converted models for inference: under ``torch.no_grad()``
and ``torch.inference_mode()``, with the inductor and aot_eager backends.

In-place ReLU modules are the case that broke: with nothing for autograd to record, dynamo
refused the in-place Function's ``mark_dirty`` (one graph break per ReLU, fullgraph raised).
The models: the issue's conv + ReLU(inplace) Sequential, toy-sized ResNet-18 and DenseNet-121
stand-ins (tests/small_models.py) and, where torchvision is installed, the real ones.
"""
import copy

import pytest
import torch
import torch.nn as nn
from small_models import INPUT_SHAPE, DenseNetLike, ResNetLike

import convkit

GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
BACKENDS = ("aot_eager", "inductor")


def sequential():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Conv2d(8, 4, 1, stride=2), nn.ReLU(inplace=True))


def check_compiled_inference(make, shape, backend, mode, tol=1e-4):
    """The converted model compiled whole (fullgraph) and run under ``mode`` gives torch's
    logits, with convkit's ops in the one graph dynamo captured."""
    torch.manual_seed(0)
    ref = make().eval()
    model = convkit.convert(copy.deepcopy(ref)).eval()
    x = torch.randn(shape)
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        if backend == "inductor":
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=recording)
    with GRAD_MODES[mode]():
        expected = ref(x.clone())
        got = compiled(x.clone())
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any("convkit" in t for t in targets), targets


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_relu_sequential_compiles_whole_for_inference(backend, mode):
    check_compiled_inference(sequential, (2, 3, 16, 16), backend, mode)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [ResNetLike, DenseNetLike], ids=["resnet18-like",
                                                                   "densenet121-like"])
def test_small_networks_compile_whole_for_inference(make, backend, mode):
    check_compiled_inference(make, INPUT_SHAPE, backend, mode)


def test_compiled_inplace_relu_still_trains():
    """With gradients on, the same compiled model records the in-place Function's backward."""
    torch.manual_seed(0)
    ref = sequential()
    model = convkit.convert(copy.deepcopy(ref))
    x = torch.randn(2, 3, 16, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    ref(x).sum().backward()
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_torchvision_models_compile_whole_for_inference(name, backend, mode):
    models = pytest.importorskip("torchvision").models
    check_compiled_inference(lambda: getattr(models, name)(weights=None, num_classes=10),
                             (1, 3, 64, 64), backend, mode, tol=1e-3)
