"""CIFAR VGG with BatchNorm and the polarization code's head (512-unit FC + BN1d + ReLU)."""

from __future__ import annotations

import torch
from torch import nn

from .entry import every_bn, register

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    """conv-BN-ReLU blocks with max-pools, global 2x2 average pool, FC(512)-BN1d-ReLU, classifier."""

    def __init__(self, depth: int = 16, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        key = f"vgg{depth}"
        if key not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of 11, 13, 16, 19, got {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG_CONFIGS[key]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


for _key in VGG_CONFIGS:
    # every conv-block BN and the BN1d of the 512-unit FC head
    register(
        _key, lambda num_classes, key=_key, **kw: CifarVGG(int(key[3:]), num_classes, **kw),
        family="cifar_vgg", input_size=32, num_classes=10, classes=(CifarVGG,), bn_selection=every_bn,
    )
