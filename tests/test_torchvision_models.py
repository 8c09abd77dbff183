"""Every classification model torchvision builds, converted, against torch in train mode.

For each builder of ``torchvision.models.list_models(module=torchvision.models)`` (weights=None,
a small input where the model allows one) three copies of one freshly initialised model run the
same batch forward and backward: torch in float64 (the truth), torch in float32 and convkit's
conversion in float32. torch's own float32 distance from the truth sets the tolerance: convkit's
distance may be at most ``FACTOR`` times it (plus a floor at float32's resolution). Gradients are
judged on the scale of the whole gradient (every parameter's), since BatchNorm makes some true
gradients about zero (a conv bias before a BatchNorm), where any rounding is a large relative
error. Dropout and stochastic depth are switched off (their masks would differ between copies);
everything else trains as in train mode (BatchNorm on batch statistics, auxiliary heads).

Heavy models (many parameters or FLOPs at their smallest input) are marked slow; the others fit
CI's second torch stage on two cores.
"""
import copy
import fnmatch

import pytest
import torch
from torch import nn

import convkit

torchvision = pytest.importorskip("torchvision")

# convkit's distance from the float64 truth, at most this many times torch's own float32 one
# (convkit sums in other orders, and some algorithms (Winograd's transforms, im2col's GEMM
# blocks) round more than torch's), or the floor below, whichever is larger
FACTOR = 32
FLOOR = 1e-5  # float32's epsilon is 1.2e-7: a hundred roundings of the largest element
BATCH = 2

# smallest input (square) for families that do not take 32x32, and builder options
SIZES = {"alexnet": 64, "squeezenet*": 64, "inception_v3": 80, "googlenet": 64, "maxvit_t": 224,
         "vit_h_14": 28}
OPTIONS = {
    # the auxiliary head's 5x5 conv needs a 299x299 input; the main path is checked at 80x80
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"init_weights": False},
    "vit_*": {"image_size": 32},
    "vit_h_14": {"image_size": 28},
}
# models judged heavy on two cores: parameters >= 60 M (initialising and copying them
# dominates) or much compute at their smallest input
HEAVY = ["alexnet", "convnext_base", "convnext_large", "efficientnet_b6", "efficientnet_b7",
         "efficientnet_v2_l", "maxvit_t", "regnet_x_16gf", "regnet_x_32gf", "regnet_y_16gf",
         "regnet_y_32gf", "regnet_y_128gf", "resnet152", "resnext101_*", "vgg*", "vit_*",
         "wide_resnet*", "swin_b", "swin_v2_b"]


def _lookup(table, name, default):
    for pattern, value in table.items():  # exact names first
        if pattern == name:
            return value
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def _params():
    names = torchvision.models.list_models(module=torchvision.models)
    return [pytest.param(n, marks=pytest.mark.slow) if any(fnmatch.fnmatchcase(n, p)
                                                           for p in HEAVY) else n
            for n in names]


def _no_randomness(model: nn.Module) -> nn.Module:
    model.train()
    stochastic = (nn.Dropout, nn.Dropout2d, torchvision.ops.StochasticDepth)
    for m in model.modules():
        if isinstance(m, stochastic):
            m.eval()
    return model


def _logits(out):
    # googlenet's train-mode output: (logits, aux2, aux1); every head is checked
    if isinstance(out, tuple):
        return torch.cat([o.flatten() for o in out if o is not None])
    return out.flatten()


def _run(model, x):
    """Logits and every parameter's gradient of a fixed random projection of the logits."""
    model.zero_grad(set_to_none=True)
    logits = _logits(model(x))
    probe = torch.randn(logits.numel(), generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    (logits * probe.to(logits.dtype)).sum().backward()
    grads = [p.grad.detach().double().flatten() if p.grad is not None
             else torch.zeros(p.numel(), dtype=torch.float64) for p in model.parameters()]
    return logits.detach().double(), grads


def _distance(got, truth, scale):
    return (got - truth).abs().max().item() / max(scale, 1e-300)


@pytest.mark.parametrize("name", _params())
def test_converted_model_matches_torch(name):
    size = _lookup(SIZES, name, 32)
    torch.manual_seed(0)
    base = torchvision.models.get_model(name, weights=None, **_lookup(OPTIONS, name, {}))
    reference = _no_randomness(copy.deepcopy(base).double())
    plain = _no_randomness(copy.deepcopy(base))
    converted = _no_randomness(convkit.convert(base))
    swapped = [m for m in converted.modules() if type(m) in (convkit.Conv2d, convkit.ReLU,
                                                            convkit.MaxPool2d)]
    assert swapped, f"{name}: convert swapped nothing"
    assert not [m for m in converted.modules() if type(m) in (nn.Conv2d, nn.MaxPool2d)], name

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, size, size, generator=gen)
    truth, truth_grads = _run(reference, x.double())
    logits_scale = truth.abs().max().item()
    grad_scale = max(g.abs().max().item() for g in truth_grads)

    def distances(model):
        logits, grads = _run(model, x)
        return (_distance(logits, truth, logits_scale),
                max(_distance(g, t, grad_scale) for g, t in zip(grads, truth_grads)))

    torch_logits, torch_grads = distances(plain)
    ours_logits, ours_grads = distances(converted)
    report = (f"{name} {size}x{size}: logits {ours_logits:.2e} (torch fp32 {torch_logits:.2e}), "
              f"gradients {ours_grads:.2e} (torch fp32 {torch_grads:.2e}) of the float64 scale")
    assert ours_logits <= max(FACTOR * torch_logits, FLOOR), report
    assert ours_grads <= max(FACTOR * torch_grads, FLOOR), report
