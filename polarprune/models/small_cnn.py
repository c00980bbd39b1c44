"""A small CNN sized for the embedded 8x8 digits data set (fast enough for a CPU demo)."""

from __future__ import annotations

import torch
from torch import nn

from .entry import every_bn, register


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU stages (8x8 -> 4x4 -> 2x2 after pooling), an FC-BN1d-ReLU head, classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(2 * w, 2 * w), nn.BatchNorm1d(2 * w), nn.ReLU(inplace=True), nn.Linear(2 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


register(
    "small_cnn", lambda num_classes, **kw: SmallCNN(num_classes, **kw),
    input_size=8, in_channels=1, num_classes=10, classes=(SmallCNN,), bn_selection=every_bn,
)
