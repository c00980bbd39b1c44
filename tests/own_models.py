"""A user's own CNN, importable as ``own_models:build_net`` (tests put this folder on sys.path).

It has what makes channel pruning hard: a residual addition, a channel concatenation of two
branches and a depthwise conv, each followed by BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ResidualBlock(nn.Module):
    """Two conv-BNs whose output is added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.conv1(x))))


class ConcatBlock(nn.Module):
    """A 1x1 branch and a depthwise-separable branch, concatenated along the channels."""

    def __init__(self, cin: int, each: int) -> None:
        super().__init__()
        self.point = conv_bn(cin, each, kernel=1)
        self.depthwise = conv_bn(cin, cin, kernel=3, groups=cin)
        self.project = conv_bn(cin, each, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.point(x), self.project(self.depthwise(x))], dim=1)


class OwnNet(nn.Module):
    """Stem, a residual block, a concatenation block, a strided conv, a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        self.res = ResidualBlock(width)
        self.mix = ConcatBlock(width, width)
        self.down = conv_bn(2 * width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.mix(self.res(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def build_net(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> OwnNet:
    """The builder an import path names: ``own_models:build_net``."""
    return OwnNet(num_classes, width, in_channels)
