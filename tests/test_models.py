"""SimpleCNN on both backends: same parameters, same numbers, checkpoints that load both ways."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convkit.nn
from convkit.models import SimpleCNN, load_checkpoint, save_checkpoint


class ChapterSimpleCNN(nn.Module):
    """The chapter's SimpleCNN, verbatim in structure: the reference for names and outputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 7 * 7)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def test_convkit_backend_uses_convkit_layers():
    model = SimpleCNN("convkit", seed=0)
    assert type(model.conv1) is convkit.nn.Conv2d
    assert type(model.relu) is convkit.nn.ReLU
    assert type(model.pool) is convkit.nn.MaxPool2d
    assert type(SimpleCNN("torch", seed=0).conv1) is nn.Conv2d


def test_same_names_shapes_and_weights_for_a_seed():
    a, b = SimpleCNN("convkit", seed=7).state_dict(), SimpleCNN("torch", seed=7).state_dict()
    ref = ChapterSimpleCNN().state_dict()
    assert list(a) == list(b) == list(ref)
    for name in ref:
        assert a[name].shape == ref[name].shape
        assert torch.equal(a[name], b[name])
    assert sum(t.numel() for t in a.values()) == 421_642
    assert not torch.equal(SimpleCNN("torch", seed=8).conv1.weight, b["conv1.weight"])


def test_initialisation_bounds_match_torch_default():
    model = SimpleCNN("torch", seed=0)
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        bound = 1 / math.sqrt(layer.weight[0].numel())
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound
            if p.numel() >= 1000:  # uniform(-b, b): std b/sqrt(3), extremes near b
                assert p.abs().max() > 0.99 * bound
                assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_forward_and_backward_agree_across_backends():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    grads = []
    for backend in ("convkit", "torch"):
        model = SimpleCNN(backend, seed=1).eval()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()} | {"loss": loss.detach()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_features_shapes():
    maps = SimpleCNN("convkit", seed=0).features(torch.zeros(2, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "conv1": (2, 32, 28, 28), "relu1": (2, 32, 28, 28), "pool1": (2, 32, 14, 14),
        "conv2": (2, 64, 14, 14), "relu2": (2, 64, 14, 14), "pool2": (2, 64, 7, 7)}


@pytest.mark.parametrize("saved, loaded", [("torch", "convkit"), ("convkit", "torch")])
def test_checkpoint_loads_into_the_other_backend(tmp_path, saved, loaded):
    src = SimpleCNN(saved, seed=3)
    path = tmp_path / "model.pt"
    save_checkpoint(src, path, note="x")
    dst = load_checkpoint(path, backend=loaded)
    assert dst.backend == loaded
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=1e-4, atol=1e-5)


def test_checkpoint_loads_into_the_chapters_model(tmp_path):
    src = SimpleCNN("convkit", seed=4).eval()
    save_checkpoint(src, tmp_path / "m.pt")
    ref = ChapterSimpleCNN().eval()
    ref.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(src(x), ref(x), rtol=1e-4, atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        SimpleCNN("tensorflow")
