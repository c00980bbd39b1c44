"""Model registry: ``create(name, num_classes=..., **options)`` and ``list_models()``.

Names: CIFAR ResNets (``resnet20`` ... ``resnet110``, any ``resnet<6n+2>`` that is not a
torchvision name), CIFAR VGGs (``vgg11/13/16/19``), ``small_cnn`` for the digits, and every
torchvision classification model by its torchvision name (``resnet50``, ``mobilenet_v2``,
``vgg16_bn``, ...). CIFAR names win where torchvision has the same one (``vgg16``); use the
prefix ``tv:`` to ask for torchvision's (``tv:vgg16``).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PolarpruneError
from .cifar_resnet import CifarResNet
from .cifar_vgg import VGG_CONFIGS, CifarVGG
from .small_cnn import SmallCNN

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
TORCHVISION_PREFIX = "tv:"
# torchvision names that we answer with our own CIFAR definitions.
_TORCHVISION_SHADOWED = set(VGG_CONFIGS)


def _builders() -> dict[str, Callable[..., nn.Module]]:
    table: dict[str, Callable[..., nn.Module]] = {}
    for depth in CIFAR_RESNET_DEPTHS:
        table[f"resnet{depth}"] = lambda num_classes, depth=depth, **kw: CifarResNet(depth, num_classes, **kw)
    for key in VGG_CONFIGS:
        table[key] = lambda num_classes, key=key, **kw: CifarVGG(int(key[3:]), num_classes, **kw)
    table["small_cnn"] = lambda num_classes, **kw: SmallCNN(num_classes, **kw)
    return table


_BUILDERS = _builders()


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """All names ``create`` accepts (torchvision names that we shadow appear with ``tv:``)."""
    tv = [n if n not in _BUILDERS else TORCHVISION_PREFIX + n for n in torchvision_names()]
    return sorted(_BUILDERS) + tv


def is_cifar_model(name: str) -> bool:
    """True for the hand-written CIFAR/digits models (inputs of 32x32 or smaller)."""
    return name in _BUILDERS


def init_bn_gamma(model: nn.Module, value: float) -> None:
    """Set every BatchNorm scaling factor to ``value`` (0.5 in the polarization recipes)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            nn.init.constant_(m.weight, value)


def create(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    bn_init: float | None = None,
    weights: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by name.

    ``bn_init`` sets all BN gammas (None keeps the default init of 1). ``weights`` is a local
    state-dict file (for example torchvision's pretrained ``.pth``) loaded after construction.
    Other options go to the model's constructor (``shortcut='B'`` for CIFAR ResNets, ``width``
    for ``small_cnn``, any torchvision keyword for torchvision models).
    """
    if num_classes < 1:
        raise PolarpruneError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    if name in _BUILDERS:
        try:
            model = _BUILDERS[name](num_classes, in_channels=in_channels, **options)
        except (TypeError, ValueError) as exc:
            raise PolarpruneError(f"model {name!r}: {exc}") from exc
    else:
        model = _create_torchvision(name.removeprefix(TORCHVISION_PREFIX), num_classes, in_channels, options)
    if bn_init is not None:
        init_bn_gamma(model, bn_init)
    if weights:
        _load_weights(model, name, weights)
    model.polarprune_spec = {  # type: ignore[assignment]
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "options": dict(options),
    }
    return model


def _create_torchvision(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        match = re.fullmatch(r"resnet(\d+)", name)
        hint = ""
        if match and (int(match.group(1)) - 2) % 6 == 0:
            hint = f" (CIFAR ResNets come in depths {', '.join(map(str, CIFAR_RESNET_DEPTHS))})"
        raise PolarpruneError(f"unknown model {name!r}{hint}; `polarprune models` lists the names")
    if in_channels != 3:
        raise PolarpruneError(f"model {name!r}: torchvision models take 3 input channels, got in_channels={in_channels}")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as exc:
        raise PolarpruneError(f"model {name!r}: bad option: {exc}") from exc


def _load_weights(model: nn.Module, name: str, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PolarpruneError(f"model {name!r}: weights file not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise PolarpruneError(f"model {name!r}: cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise PolarpruneError(f"model {name!r}: weights {path} do not fit: {' '.join(first[:3])}") from None


__all__ = ["create", "list_models", "torchvision_names", "is_cifar_model", "init_bn_gamma", "CifarResNet", "CifarVGG", "SmallCNN"]
