"""Every classification model torchvision builds, converted, against torch in train mode.

For each builder of ``torchvision.models.list_models(module=torchvision.models)`` (weights=None,
a 64x64 batch of two where the model allows it) three copies of one freshly initialised model run
the same batch forward and backward: torch in float64 (the truth), torch in float32 and
convkit's conversion in float32. torch's own float32 distance from the truth sets the tolerance:
convkit's may be at most ``FACTOR`` times it, or a floor. Distances are relative L2 norms over
all logits and over the whole gradient (every parameter's at once), since BatchNorm makes some
true gradients about zero (a conv bias before a BatchNorm), where any rounding is a large
relative error. Dropout and stochastic depth are off (their masks would differ between the
copies); the rest trains as in train mode (BatchNorm on batch statistics, auxiliary heads).

Smaller inputs are not cheaper to judge: at 32x32 the last BatchNorms of EfficientNet, RegNet or
MobileNet see one pixel of two images, and torch's own float32 run lands 10-100 % away from the
float64 one. The models of ``CI_MODELS`` (one or two of each family) run in CI's second torch
stage; the other builders are marked slow and skipped unless ``CONVKIT_TORCHVISION_MODELS=all``
(the largest, ViT-H/14 and RegNetY-128GF, need more than 24 GiB of memory in three copies, and
are skipped with that reason).
"""
import copy
import fnmatch
import os

import pytest
import torch
from torch import nn

import convkit

torchvision = pytest.importorskip("torchvision")

# convkit's distance from the float64 truth, at most this many times torch's own float32 one,
# or the floor, whichever is larger: LOGITS_FLOOR for the logits, GRADIENT_FLOOR for the
# gradient. convkit sums in other orders, and Winograd's F(4x4, 3x3)
# transforms round more than a direct sum; where the float64 run has a near tie (two values of
# a max-pool window, a pre-ReLU value near 0), any other float32 rounding can take the other
# branch and move the whole gradient: torch itself, run channels-last, lands 7.9e-3 from float64
# on shufflenet_v2_x1_5 (6.3e-5 in NCHW) and 3.0e-4 on vgg19 (1.3e-6), and convkit's im2col
# alone 1.5e-3 on vgg19 (one conv swapped in is enough: a single branch taken otherwise; each
# conv's own gradients are within 2x torch's error given the same inputs). GRADIENT_FLOOR sits
# above such branch flips and below a wrong kernel: weight gradients scaled by 1.05 land at 3e-2
# to 5e-2 (resnet18, vgg11_bn, mobilenet_v2). The logits move little with a flipped branch
# (at most 3e-5 in the runs above)
FACTOR = 16
LOGITS_FLOOR = 1e-3
GRADIENT_FLOOR = 1e-2
BATCH = 2
SIZE = 64

# inputs (square) other than SIZE, and builder options
SIZES = {"inception_v3": 96, "maxvit_t": 224, "vit_*": 32, "vit_h_14": 28}
OPTIONS = {
    # the auxiliary head's 5x5 conv needs a 299x299 input; the main path is checked at 96x96
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"init_weights": False},
    "vit_*": {"image_size": 32},
    "vit_h_14": {"image_size": 28},
}
# run in CI: one or two of each family (the list of the models people run), each a
# different path through convkit (grouped, depthwise, 1x1, strided, dilated-free stems, ceil-mode
# pools, F.relu in forward, a conv patch embedding)
CI_MODELS = ["alexnet", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
             "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "resnet18",
             "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11_bn", "swin_t"]


def _lookup(table, name, default):
    for pattern, value in table.items():  # exact names first
        if pattern == name:
            return value
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


# the two largest builders (632M and 645M parameters)
GIANTS = ["vit_h_14", "regnet_y_128gf"]


def _params():
    names = torchvision.models.list_models(module=torchvision.models)
    everything = os.environ.get("CONVKIT_TORCHVISION_MODELS") == "all"
    later = [pytest.mark.slow, pytest.mark.skipif(
        not everything, reason="not in CI_MODELS: CONVKIT_TORCHVISION_MODELS=all runs it")]
    giant = [pytest.mark.slow, pytest.mark.skip(
        reason="600M+ parameters: three copies (one float64) with gradients exceed 24 GiB")]
    return [n if n in CI_MODELS else pytest.param(n, marks=giant if n in GIANTS else later)
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


def _distance(got, truth):
    """Relative L2 distance over the whole vector."""
    return ((got - truth).norm() / truth.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", _params())
def test_converted_model_matches_torch(name):
    size = _lookup(SIZES, name, SIZE)
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
    truth_grads = torch.cat(truth_grads)

    def distances(model):
        logits, grads = _run(model, x)
        return _distance(logits, truth), _distance(torch.cat(grads), truth_grads)

    torch_logits, torch_grads = distances(plain)
    ours_logits, ours_grads = distances(converted)
    report = (f"{name} {size}x{size}: logits {ours_logits:.2e} (torch fp32 {torch_logits:.2e}), "
              f"gradients {ours_grads:.2e} (torch fp32 {torch_grads:.2e}) "
              "(relative L2 distances from float64)")
    assert ours_logits <= max(FACTOR * torch_logits, LOGITS_FLOOR), report
    assert ours_grads <= max(FACTOR * torch_grads, GRADIENT_FLOOR), report
