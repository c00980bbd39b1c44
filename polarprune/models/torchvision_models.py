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

import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .entry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, add, add_resolver, block_bns, prefixed

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
_IMAGENET = dict(input_size=224, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000)
for _family, _cls, _example, _selection in (
    ("torchvision_resnet", ResNet, "resnet50", resnet_bns),
    ("torchvision_mobilenet_v2", MobileNetV2, "mobilenet_v2", mobilenet_v2_bns),
):
    add(ModelEntry(_family, functools.partial(_build, _example), family=_family, classes=(_cls,), bn_selection=_selection, **_IMAGENET),
        by_name=False)


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
