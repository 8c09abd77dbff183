"""Toy-sized stand-ins for torchvision's ResNet-18, DenseNet-121 and GoogLeNet, for the tests
that must run where torchvision is not installed: the same layer kinds and the same way of
calling them (in-place ``nn.ReLU`` modules, ``F.relu`` calls in ``forward``, max-pools with and
without ceil mode, 1x1 / 3x3 / 7x7 and strided convs, residual adds, channel concatenation),
a few channels wide. Inputs: (N, 3, 32, 32).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convs, in-place ReLU, a strided 1x1
    downsample."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetLike(nn.Module):
    """ResNet-18's structure: 7x7/2 stem, BN, in-place ReLU, 3x3/2 max-pool, basic blocks."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: BN, in-place ReLU, 1x1 bottleneck, BN, ReLU, 3x3; its input
    is the concatenation of every earlier feature map."""

    def __init__(self, c_in, growth=4, bottleneck=2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, c_in, growth=4):
        super().__init__()
        for i in range(layers):
            self[f"denselayer{i + 1}"] = DenseLayer(c_in + i * growth, growth)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNetLike(nn.Module):
    """DenseNet-121's structure: 7x7/2 stem, in-place ReLU, max-pool, dense blocks joined by a
    transition (BN, ReLU, 1x1, average pool), and the final ``F.relu(..., inplace=True)``
    called in ``forward``."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
            DenseBlock(2, 8),
            nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                          nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2, 2)),
            DenseBlock(2, 8),
            nn.BatchNorm2d(16))
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


class BasicConv2d(nn.Module):
    """GoogLeNet's conv unit: conv, BN, then ``F.relu(x, inplace=True)`` in ``forward`` (no ReLU
    module for ``convert`` to swap)."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1 then 3x3; 1x1 then 3x3; 3x3/1 ceil-mode max-pool
    then 1x1."""

    def __init__(self, c_in, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.branch1 = BasicConv2d(c_in, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(c_in, c3r, 1), BasicConv2d(c3r, c3, 3, 1, 1))
        self.branch3 = nn.Sequential(BasicConv2d(c_in, c5r, 1), BasicConv2d(c5r, c5, 3, 1, 1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(c_in, cp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetLike(nn.Module):
    """GoogLeNet's structure: 7x7/2 stem, ceil-mode max-pools, 1x1 and 3x3 BasicConv2d units,
    inception blocks; every ReLU an ``F.relu`` call."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(8, 8, 1)
        self.conv3 = BasicConv2d(8, 12, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(12, 4, 4, 6, 2, 3, 3)
        self.maxpool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception4a = Inception(16, 6, 4, 6, 2, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.inception4a(self.maxpool3(self.inception3a(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


MODELS = {"resnet18-like": ResNetLike, "densenet121-like": DenseNetLike,
          "googlenet-like": GoogLeNetLike}
INPUT_SHAPE = (2, 3, 32, 32)
