"""The tutorial's SimpleCNN, built from convkit's layers or torch's with the same parameter names.

    conv1  Conv2d(1, 32, 3, padding=1)   -> ReLU -> MaxPool2d(2)     28x28 -> 14x14
    conv2  Conv2d(32, 64, 3, padding=1)  -> ReLU -> MaxPool2d(2)     14x14 -> 7x7
    fc1    Linear(3136, 128)             -> ReLU -> Dropout(0.25)
    fc2    Linear(128, 10)                                            421,642 parameters

With ``backend="convkit"`` every convolution, ReLU and max-pool (forward and backward) runs on
convkit's kernels; the linear layers and dropout stay torch's. ``state_dict`` keys are identical
for both backends, so a checkpoint saved from one loads into the other.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Union

import torch
from torch import nn

BACKENDS = ("convkit", "torch")


def layers(backend: str, algorithm: str = "auto"):
    """``(Conv2d, ReLU, MaxPool2d)`` factories for ``backend`` ("convkit" or "torch")."""
    if backend == "torch":
        return nn.Conv2d, nn.ReLU, nn.MaxPool2d
    if backend == "convkit":
        from convkit import nn as cnn

        def conv(*args, **kwargs):
            return cnn.Conv2d(*args, algorithm=algorithm, **kwargs)
        return conv, cnn.ReLU, cnn.MaxPool2d
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class SimpleCNN(nn.Module):
    """The chapter's MNIST classifier: two Conv-ReLU-MaxPool stages and two linear layers.

    Args:
        backend: "convkit" (convkit's kernels for conv, ReLU, pool) or "torch".
        algorithm: convkit's convolution algorithm ("auto", "direct", "im2col"); convkit only.
        seed: seed for the initial weights. The weights are drawn from their own generator with
            torch's default scheme, so the same seed gives the same model on either backend.
            None draws the seed from torch's global generator.
    """

    def __init__(self, backend: str = "convkit", algorithm: str = "auto",
                 seed: Optional[int] = None) -> None:
        super().__init__()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        Conv2d, ReLU, MaxPool2d = layers(backend, algorithm)
        self.backend = backend
        self.conv1 = Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.pool = MaxPool2d(2, 2)
        self.relu = ReLU()
        self.dropout = nn.Dropout(0.25)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Initialise as torch does by default (Kaiming-uniform weights with a=sqrt(5), biases
        uniform in +-1/sqrt(fan_in)), from a generator seeded with ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) reduces to this bound
            for p in (layer.weight, layer.bias):
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))

    def features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Intermediate activations by name: conv1, relu1, pool1, conv2, relu2, pool2."""
        out = {}
        out["conv1"] = x = self.conv1(x)
        out["relu1"] = x = self.relu(x)
        out["pool1"] = x = self.pool(x)
        out["conv2"] = x = self.conv2(x)
        out["relu2"] = x = self.relu(x)
        out["pool2"] = self.pool(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` for images ``(N, 1, 28, 28)``."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.dropout(self.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def save_checkpoint(model: nn.Module, path: Union[str, os.PathLike], **extra) -> None:
    """Save ``{"state_dict": ..., **extra}``; ``extra`` holds e.g. the training config."""
    torch.save({"state_dict": model.state_dict(), **extra}, path)


def load_checkpoint(path: Union[str, os.PathLike], backend: str = "convkit",
                    map_location: Union[str, torch.device] = "cpu", **kwargs) -> SimpleCNN:
    """A SimpleCNN on ``backend`` holding the weights saved at ``path`` (by either backend)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = SimpleCNN(backend, seed=0, **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return model


__all__ = ["BACKENDS", "SimpleCNN", "layers", "save_checkpoint", "load_checkpoint"]
