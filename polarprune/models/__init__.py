"""Model registry: ``create(name, num_classes=..., **options)``, ``list_models()``, ``register``.

Names: CIFAR ResNets (``resnet20`` ... ``resnet110``, any ``resnet<6n+2>`` that is not a
torchvision name), CIFAR VGGs (``vgg11/13/16/19``), ``small_cnn`` for the digits, and every
torchvision classification model by its torchvision name (``resnet50``, ``mobilenet_v2``,
``vgg16_bn``, ...). CIFAR names win where torchvision has the same one (``vgg16``); use the
prefix ``tv:`` to ask for torchvision's (``tv:vgg16``).

What the generic code needs to know about a model (input size, which BNs the papers
regularize, pruning rules) is its ``ModelEntry`` (``entry.py``): ``entry_for(model)``,
``get_entry(name)``; ``register(name, builder, **fields)`` adds your own family.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch
from torch import nn

from ..errors import PolarpruneError
from . import entry as _entry
from .cifar_resnet import CIFAR_RESNET_DEPTHS, CifarResNet
from .cifar_vgg import CifarVGG
from .entry import METHODS, ModelEntry, entry_for, get_entry, register
from .imports import trusting_code
from .inputs import input_shape_of, record_input_shape, recorded_input_shape
from .small_cnn import SmallCNN
from . import timm_models  # noqa: F401  (registers the timm: resolver; timm itself is imported on use)
from . import ultralytics_models  # noqa: F401  (registers the YOLO names; ultralytics itself is imported on use)


def _load_torchvision(subject: object) -> None:
    """Register torchvision's families when a name may be torchvision's or torchvision is loaded
    (a torchvision instance implies it is); importing torchvision costs about a second."""
    if isinstance(subject, str) or "torchvision" in sys.modules:
        from . import torchvision_detection, torchvision_models  # noqa: F401  (register their entries and resolver)


_entry.add_loader(_load_torchvision)


def default_input_size(model_or_name: nn.Module | str) -> int | None:
    """The square input side the model's family is made for (its entry's); None when no entry knows it.
    ``inputs.input_shape_of`` is the policy the commands use (a recorded size wins)."""
    found = get_entry(model_or_name) if isinstance(model_or_name, str) else entry_for(model_or_name)
    return found.input_size if found is not None else None


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    from .torchvision_models import names

    return names()


def list_models() -> list[str]:
    """All names ``create`` accepts (torchvision names that we shadow appear with ``tv:``)."""
    from .torchvision_models import TORCHVISION_PREFIX

    _load_torchvision("")  # registers torchvision's families first, so that their names are listed
    classifiers = torchvision_names()
    ours = _entry.registered_names()
    tv = [n if n not in ours else TORCHVISION_PREFIX + n for n in classifiers]
    return ours + tv


BN_INIT_SCOPES = {"all": nn.modules.batchnorm._BatchNorm, "conv": nn.BatchNorm2d}


def init_bn_gamma(model: nn.Module, value: float, scope: str = "all") -> None:
    """Set the BatchNorm scaling factors to ``value`` (0.5 in the polarization recipes); ``scope="conv"``:
    only ``BatchNorm2d``, as the polarization code does (a VGG head's BatchNorm1d keeps 1.0)."""
    if scope not in BN_INIT_SCOPES:
        raise PolarpruneError(f"bn_init_scope must be one of {sorted(BN_INIT_SCOPES)}, got {scope!r}")
    for m in model.modules():
        if isinstance(m, BN_INIT_SCOPES[scope]) and m.weight is not None:
            nn.init.constant_(m.weight, value)


def create(name: str, num_classes: int = 10, *, in_channels: int | None = None, bn_init: float | None = None, bn_init_scope: str = "all",
           weights: str | None = None, trust_code: bool = False, **options: Any) -> nn.Module:
    """Build a model by name (a registry name, ``timm:<name>`` or ``"package.module:callable"``).

    ``bn_init`` sets the BN gammas, ``weights`` is a local state-dict file loaded after construction,
    other options go to the constructor; ``in_channels`` defaults to the family's (1 for ``small_cnn``,
    else 3). An import path is imported only when code is trusted.
    """
    if num_classes < 1:
        raise PolarpruneError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    found = get_entry(name)
    if found is None:
        raise PolarpruneError(f"unknown model {name!r}{_depth_hint(name)}; `polarprune models` lists the names")
    in_channels = found.in_channels if in_channels is None else in_channels
    with trusting_code(trust_code):
        model = _build(found, num_classes, in_channels, options)
    if bn_init is not None:
        init_bn_gamma(model, bn_init, bn_init_scope)
    if weights:
        _load_weights(model, name, weights)
    model.polarprune_spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels,  # type: ignore[assignment]
                             "options": dict(options)}
    return model


def _depth_hint(name: str) -> str:
    match = re.fullmatch(r"resnet(\d+)", name)
    if match and (int(match.group(1)) - 2) % 6 == 0:
        return f" (CIFAR ResNets come in depths {', '.join(map(str, CIFAR_RESNET_DEPTHS))})"
    return ""


def _build(found: ModelEntry, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    """``found.builder(num_classes, **options)``, plus ``in_channels`` where it differs from the entry's."""
    kwargs = dict(options)
    if in_channels != found.in_channels:
        kwargs["in_channels"] = in_channels
    try:
        return found.builder(num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise PolarpruneError(f"model {found.name!r}: {exc}") from exc


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


__all__ = ["create", "register", "get_entry", "entry_for", "default_input_size", "input_shape_of",
           "record_input_shape", "recorded_input_shape", "ModelEntry", "METHODS",
           "list_models", "torchvision_names", "init_bn_gamma", "CifarResNet", "CifarVGG", "SmallCNN"]
