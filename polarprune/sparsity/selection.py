"""Which BN scaling factors a sparsity regularizer acts on (REFERENCE section 2, "Which layers").

Defaults reproduce the papers' choices for the architectures polarprune ships:

- CIFAR ResNet (``resnet20`` ... ``resnet110``): ``bn1`` and ``bn2`` of every basic block; not
  the stem ``bn1``, not the BN of an option-B shortcut;
- CIFAR VGG: every conv-block BN and the BN1d of the 512-unit FC head (i.e. every BN);
- ``small_cnn``: every BN;
- torchvision ResNets with Bottleneck blocks (ResNet-50/101/152, ResNeXt, wide ResNets):
  ``bn1`` and ``bn2`` of every bottleneck; not ``bn3`` (the residual-coupled output, regularized
  only with the seed's ``--last-sparsity``), the stem or the downsample BN;
- torchvision ResNets with BasicBlocks (ResNet-18/34): ``bn1`` of every block. Our choice,
  by analogy with ResNet-50: ``bn2`` is the block's residual-coupled output BN, the
  counterpart of ``bn3`` there. (The CIFAR ResNet-56 recipe does regularize ``bn2``, because
  its seed pruned it with a channel scatter; include ``*.bn2`` to get that here.)
- torchvision MobileNetV2: the expansion (point-wise) BN and the projection BN of every inverted
  residual; not the depth-wise BN, the stem or the last 1x1 conv;
- any other model: the BNs of the prunable channel groups of the pruning dependency graph
  (``polarprune.pruning.prunable_bn_names``).

``include``/``exclude`` are fnmatch patterns on BN module names: a non-empty ``include``
replaces the default choice, ``exclude`` removes names from it.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any, Sequence

from torch import nn

from ..errors import PolarpruneError

log = logging.getLogger(__name__)


def all_bn_names(model: nn.Module) -> list[str]:
    """Every affine BatchNorm of the model (the ones with a gamma), in definition order."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _cifar_resnet(model: nn.Module) -> list[str]:
    from ..models.cifar_resnet import BasicBlock

    names = []
    for prefix, m in model.named_modules():
        if isinstance(m, BasicBlock):
            names += [_prefixed(prefix, "bn1"), _prefixed(prefix, "bn2")]
    return names


def _torchvision_resnet(model: nn.Module) -> list[str]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    names = []
    for prefix, m in model.named_modules():
        if isinstance(m, Bottleneck):
            names += [_prefixed(prefix, "bn1"), _prefixed(prefix, "bn2")]
        elif isinstance(m, BasicBlock):
            names.append(_prefixed(prefix, "bn1"))
    return names


def _mobilenet_v2(model: nn.Module) -> list[str]:
    """Expansion BN (a 1x1 conv-BN-ReLU6 of groups 1) and projection BN (the last layer) per block."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    names = []
    for prefix, block in model.named_modules():
        if not isinstance(block, InvertedResidual):
            continue
        layers = list(block.conv.named_children())
        for child_name, child in layers[:-1]:
            if isinstance(child, nn.Sequential) and len(child) >= 2:
                conv, bn = child[0], child[1]
                if isinstance(conv, nn.Conv2d) and conv.groups == 1 and isinstance(bn, nn.BatchNorm2d):
                    names.append(_prefixed(prefix, f"conv.{child_name}.1"))  # expansion
        last_name, last = layers[-1]
        if isinstance(last, nn.BatchNorm2d):
            names.append(_prefixed(prefix, f"conv.{last_name}"))  # projection
    return names


def default_bn_names(model: nn.Module, example_inputs: Any | None = None) -> list[str]:
    """The papers' choice of regularized BNs for ``model`` (see the module docstring)."""
    from torchvision.models import MobileNetV2, ResNet

    from ..models import CifarResNet, CifarVGG, SmallCNN

    if isinstance(model, CifarResNet):
        return _cifar_resnet(model)
    if isinstance(model, (CifarVGG, SmallCNN)):
        return all_bn_names(model)
    if isinstance(model, ResNet):
        return _torchvision_resnet(model)
    if isinstance(model, MobileNetV2):
        return _mobilenet_v2(model)
    if example_inputs is None:
        raise PolarpruneError(
            f"model {type(model).__name__}: no default list of regularized BNs; "
            "give example inputs (to find the prunable groups) or sparsity.include patterns"
        )
    from ..pruning import prunable_bn_names

    return list(prunable_bn_names(model, example_inputs))


def match_patterns(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The names matching any fnmatch pattern, in the order of ``names``."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def regularized_bn_names(
    model: nn.Module,
    example_inputs: Any | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    option: str = "sparsity",
) -> list[str]:
    """BN module names whose gammas the regularizer acts on, in definition order.

    ``include`` patterns replace the default choice (each must match some BN, or the call
    fails naming it); ``exclude`` patterns remove names. Raises ``PolarpruneError`` when
    nothing is left. ``option`` names the options in messages (``sparsity`` ->
    ``sparsity.include``; ``--bn`` -> ``--bn-include``).
    """
    sep = "-" if option.startswith("--") else "."
    candidates = all_bn_names(model)
    if include:
        for pattern in include:
            if not match_patterns(candidates, [pattern]):
                raise PolarpruneError(
                    f"{option}{sep}include pattern {pattern!r} matches no BatchNorm layer of {type(model).__name__}"
                )
        chosen = match_patterns(candidates, include)
    else:
        chosen = default_bn_names(model, example_inputs)
    for pattern in exclude:
        if not match_patterns(chosen, [pattern]):
            log.warning("%s%sexclude pattern %r matches none of the regularized BNs", option, sep, pattern)
    dropped = set(match_patterns(chosen, exclude))
    chosen = [n for n in chosen if n not in dropped]
    if not chosen:
        raise PolarpruneError(
            f"no BatchNorm layer of {type(model).__name__} is left to regularize (check {option}{sep}include/{option}{sep}exclude)"
        )
    return chosen


__all__ = ["regularized_bn_names", "default_bn_names", "all_bn_names", "match_patterns"]
