"""CIFAR ResNets with basic blocks (depth 6n+2), as in He et al. 2016 and the pruning papers.

Option A (the papers' default) shortcuts subsample by stride 2 and zero-pad the new channels;
option B uses a 1x1 conv + BN projection.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .entry import block_bns, prefixed, register
from .expand import ChannelScatter
from .layers import BlockInfo, ChannelPlacementShortcut


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero channels appended."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module
        if stride == 1 and in_planes == planes:
            self.downsample = nn.Identity()
        elif shortcut == "A":
            self.downsample = PadShortcut(stride, planes - in_planes)
        else:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ScatterBasicBlock(BasicBlock):
    """``relu(scatter(bn2(conv2(relu(bn1(conv1(x)))))) + downsample(x))``: a pruned basic block
    whose output keeps the residual stream's full width."""

    def __init__(self, block: BasicBlock, positions: Sequence[int], out_channels: int) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1, self.relu = block.conv1, block.bn1, block.relu
        self.conv2, self.bn2, self.downsample = block.conv2, block.bn2, block.downsample
        self.scatter = ChannelScatter(positions, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.scatter(self.bn2(self.conv2(out)))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 16-channel stem and three stages of n blocks (16, 32, 64)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)


def regularized_bns(model: nn.Module, method: str | None = None) -> list[str]:
    """``bn1`` and ``bn2`` of every basic block; not the stem ``bn1``, not an option-B shortcut BN."""
    return block_bns(model, [(BasicBlock, ("bn1", "bn2"))])


def residual_blocks(model: nn.Module) -> dict[str, BlockInfo]:
    """Pruning rule: every basic block's branch (conv1-bn1-relu-conv2-bn2) may be removed."""
    return {name: BlockInfo(name, [prefixed(name, "bn1")], prefixed(name, "bn2"), ["conv1", "bn1", "relu", "conv2", "bn2"])
            for name, module in model.named_modules() if isinstance(module, BasicBlock)}


def prepare_for_pruning(model: nn.Module, example_inputs: object = None) -> list[str]:
    """Pruning adapter: swap every option-A ``PadShortcut`` for the equivalent
    ``ChannelPlacementShortcut`` (which pruning can slice). Returns the replaced names."""
    replaced = []
    for name, block in list(model.named_modules()):
        if isinstance(block, BasicBlock) and isinstance(block.downsample, PadShortcut):
            pad = block.downsample
            shortcut = ChannelPlacementShortcut.from_pad_shortcut(pad.stride, block.conv1.in_channels, pad.extra_channels)
            block.downsample = shortcut.to(block.conv1.weight.device)
            replaced.append(prefixed(name, "downsample"))
    return replaced


for _depth in CIFAR_RESNET_DEPTHS:
    register(f"resnet{_depth}", lambda num_classes, depth=_depth, **kw: CifarResNet(depth, num_classes, **kw),
             family="cifar_resnet", input_size=32, num_classes=10, classes=(CifarResNet,), bn_selection=regularized_bns,
             residual_blocks=residual_blocks, prepare_for_pruning=prepare_for_pruning, scatter_block=ScatterBasicBlock,
             paper_accounting=True)
