"""torchvision's classification models: the generic entry for any name, and the families' rules.

Which BNs the papers regularize:

- ResNets with Bottleneck blocks (ResNet-50/101/152, ResNeXt, wide ResNets): ``bn1`` and
  ``bn2`` of every bottleneck; not ``bn3`` (the residual-coupled output, regularized only
  with the seed's ``--last-sparsity``), the stem or the downsample BN;
- ResNets with BasicBlocks (ResNet-18/34): ``bn1`` of every block. Our choice, by analogy
  with ResNet-50: ``bn2`` is the block's residual-coupled output BN, the counterpart of
  ``bn3`` there. (The CIFAR ResNet-56 recipe does regularize ``bn2``, because its seed
  pruned it with a channel scatter; include ``*.bn2`` to get that here.)
- MobileNetV2: the expansion (point-wise) BN and the projection BN of every inverted
  residual; not the depth-wise BN, the stem or the last 1x1 conv;
- any other torchvision model: no family rule (the dependency-graph default).

This module imports torchvision; ``polarprune.models`` loads it only once torchvision is.
"""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleBlock
from torchvision.models.shufflenetv2 import ShuffleNetV2

from .entry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, add, add_resolver, block_bns, prefixed
from .layers import BlockInfo, ChannelShuffle

TORCHVISION_PREFIX = "tv:"


def names() -> list[str]:
    """torchvision's classification model names."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build(name: str, num_classes: int, in_channels: int = 3, **options: object) -> nn.Module:
    if in_channels != 3:
        raise ValueError(f"torchvision models take 3 input channels, got in_channels={in_channels}")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as exc:
        raise ValueError(f"bad option: {exc}") from None


def resnet_bns(model: nn.Module, method: str | None = None) -> list[str]:
    """``bn1``/``bn2`` of every Bottleneck, ``bn1`` of every BasicBlock."""
    return block_bns(model, [(Bottleneck, ("bn1", "bn2")), (BasicBlock, ("bn1",))])


def mobilenet_v2_bns(model: nn.Module, method: str | None = None) -> list[str]:
    """Expansion BN (a 1x1 conv-BN-ReLU6 of groups 1) and projection BN (the last layer) per block."""
    found = []
    for prefix, block in model.named_modules():
        if not isinstance(block, InvertedResidual):
            continue
        layers = list(block.conv.named_children())
        for child_name, child in layers[:-1]:
            if isinstance(child, nn.Sequential) and len(child) >= 2:
                conv, bn = child[0], child[1]
                if isinstance(conv, nn.Conv2d) and conv.groups == 1 and isinstance(bn, nn.BatchNorm2d):
                    found.append(prefixed(prefix, f"conv.{child_name}.1"))  # expansion
        last_name, last = layers[-1]
        if isinstance(last, nn.BatchNorm2d):
            found.append(prefixed(prefix, f"conv.{last_name}"))  # projection
    return found


# Families known by their classes (their builders build one representative name).
def resnet_blocks(model: nn.Module) -> dict[str, BlockInfo]:
    """Pruning rule: the branch of every BasicBlock / Bottleneck may be removed (``downsample`` stays)."""
    blocks = {}
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            blocks[name] = BlockInfo(name, [prefixed(name, "bn1")], prefixed(name, "bn2"), ["conv1", "bn1", "relu", "conv2", "bn2"])
        elif isinstance(module, Bottleneck):
            blocks[name] = BlockInfo(name, [prefixed(name, "bn1"), prefixed(name, "bn2")], prefixed(name, "bn3"),
                                     ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"])
    return blocks


class TraceableShuffleBlock(ShuffleBlock):
    """torchvision's ShuffleNetV2 block with its channel shuffle as a ``ChannelShuffle`` layer
    (same computation). Only while polarprune prunes: Torch-Pruning cannot follow the shuffle's
    view / transpose / view, the pruning analysis keeps the shuffled channels whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def shufflenet_prepare(model: nn.Module, example_inputs: object = None) -> list[str]:
    """Pruning adapter: every ShuffleNetV2 block becomes a ``TraceableShuffleBlock``."""
    names = []
    for name, block in model.named_modules():
        if type(block) is ShuffleBlock:
            block.__class__ = TraceableShuffleBlock
            block.shuffle = ChannelShuffle(2)
            names.append(name)
    return names


def shufflenet_finish(model: nn.Module) -> None:
    """Undo ``shufflenet_prepare``: plain torchvision blocks again (their weights as pruned)."""
    for block in model.modules():
        if type(block) is TraceableShuffleBlock:
            del block.shuffle
            block.__class__ = ShuffleBlock


_IMAGENET = dict(input_size=224, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000)
for _family, _cls, _example, _selection, _pruning in (
    ("torchvision_resnet", ResNet, "resnet50", resnet_bns, {"residual_blocks": resnet_blocks}),
    ("torchvision_mobilenet_v2", MobileNetV2, "mobilenet_v2", mobilenet_v2_bns, {}),
    ("torchvision_shufflenet_v2", ShuffleNetV2, "shufflenet_v2_x1_0", None,
     {"prepare_for_pruning": shufflenet_prepare, "finish_pruning": shufflenet_finish}),
):
    add(ModelEntry(_family, functools.partial(_build, _example), family=_family, classes=(_cls,), bn_selection=_selection,
                   **_pruning, **_IMAGENET), by_name=False)


@functools.lru_cache(maxsize=None)
def _names() -> frozenset[str]:
    return frozenset(names())


@functools.lru_cache(maxsize=None)
def resolve(name: str) -> ModelEntry | None:
    """The entry of a torchvision name (``tv:`` prefix allowed): builds it with ``get_model``."""
    bare = name.removeprefix(TORCHVISION_PREFIX)
    if bare not in _names():
        return None
    return ModelEntry(name, functools.partial(_build, bare), family="torchvision", **_IMAGENET)


add_resolver(resolve)


__all__ = ["names", "resolve", "resnet_bns", "mobilenet_v2_bns", "TORCHVISION_PREFIX"]
