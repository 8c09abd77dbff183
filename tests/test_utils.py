"""convkit.utils against the chapter's values and against torch's own shapes and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convkit.kernels.shapes
from convkit import nn as cnn
from convkit.models import SimpleCNN
from convkit.utils import conv_output_size, count_parameters, receptive_field, receptive_field_sizes

VGG = [(3, 1), (3, 1), (2, 2), (3, 1), (3, 1), (2, 2)]


@pytest.mark.parametrize("args, expected", [((28, 3, 1, 0), 26), ((28, 3, 1, 1), 28),
                                            ((28, 5, 2, 2), 14), ((32, 3, 1, 1), 32),
                                            ((64, 5, 2, 2), 32)])
def test_conv_output_size_chapter_values(args, expected):
    size, k, s, p = args
    assert conv_output_size(*args) == expected
    assert F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, k, k), stride=s,
                    padding=p).shape[-1] == expected


def test_conv_output_size_is_the_kernels_function():
    assert conv_output_size is convkit.kernels.shapes.conv_output_size


@pytest.mark.parametrize("layer, expected", [
    ((3, 16, 3), 448), ((3, 64, 3), 1_792), ((3, 32, 3), 896), ((32, 64, 3), 18_496),
    ((64, 128, 3), 73_856), ((128, 256, 3), 295_168), ((3, 64, 7), 9_472),
    ((512, 512, 3), 2_359_808)])
@pytest.mark.parametrize("module", [nn.Conv2d, cnn.Conv2d])
def test_count_parameters_conv_table(module, layer, expected):
    assert count_parameters(module(*layer, device="meta")) == expected


def test_count_parameters_models():
    assert count_parameters(SimpleCNN("torch", seed=0)) == 421_642
    exercise = nn.Sequential(nn.Conv2d(3, 64, 7), nn.Conv2d(64, 128, 3), nn.Conv2d(128, 256, 3))
    assert count_parameters(exercise) == 378_496
    assert count_parameters(nn.Linear(224 * 224 * 3, 1000, device="meta")) == 150_529_000
    three = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3), nn.Conv2d(64, 64, 3))
    assert count_parameters(three) == 75_648


def test_count_parameters_trainable_only():
    layer = nn.Conv2d(3, 16, 3)
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 448
    assert count_parameters(layer, trainable_only=True) == 432


def measured_field(layers, size=64):
    """Extent of the input gradient of one central output through torch convs of ones."""
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = x
    for layer in layers:
        k, s = layer[0], layer[1]
        d = layer[2] if len(layer) > 2 else 1
        y = F.conv2d(y, torch.ones(1, 1, k, k, dtype=torch.float64), stride=s, dilation=d)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].sum(1)).flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("layers, expected", [
    ([(3, 1)] * 3, 7), ([(3, 1)] * 4, 9), (VGG, 16), ([(7, 2), (3, 2)], 11),
    ([(3, 1, 2), (3, 1, 4)], 13), ([(5, 3), (2, 2), (3, 1)], 20)])
def test_receptive_field_against_gradient_footprint(layers, expected):
    assert receptive_field(layers) == expected
    assert measured_field(layers) == expected


def test_receptive_field_sizes_per_layer_and_the_simplified_formula():
    assert receptive_field_sizes(VGG) == [1, 3, 5, 6, 10, 14, 16]
    simplified = 1 + sum(k - 1 for k, _ in VGG)
    assert simplified == 11 < receptive_field(VGG)  # the chapter's 11 undercounts
    stride_one = [(3, 1), (5, 1), (2, 1)]
    assert receptive_field(stride_one) == 1 + sum(k - 1 for k, _ in stride_one)
    assert receptive_field([]) == 1


def test_receptive_field_rejects_non_positive_values():
    with pytest.raises(ValueError, match="got layer"):
        receptive_field([(3, 0)])
