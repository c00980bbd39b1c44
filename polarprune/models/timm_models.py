"""timm models as ``timm:<name>`` (optional extra: ``pip install 'polarprune[timm]'``).

``create("timm:resnet50", num_classes=10)`` calls ``timm.create_model(name, pretrained=False,
num_classes=..., in_chans=...)``: nothing is ever downloaded; start from pretrained weights with
a local state-dict file (``model.weights``), as for torchvision. The entry of a ``timm:`` name
carries the input size and mean/std of timm's pretrained configuration for the data pipeline
(``data_settings``). timm is imported only when a ``timm:`` name is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import PolarpruneError, require_extra
from .entry import ModelEntry, add_resolver

PREFIX = "timm:"


@dataclass(frozen=True)
class DataSettings:
    """What a model expects of its inputs (from timm's pretrained configuration)."""

    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875


def _timm() -> Any:
    return require_extra("timm", "timm", "a timm model")


def timm_name(name: str) -> str:
    """``"resnet50"`` for ``"timm:resnet50"``; a one-line error for names timm does not know."""
    bare = name.removeprefix(PREFIX)
    if not bare or not _timm().is_model(bare):
        raise PolarpruneError(f"unknown timm model {bare!r} (timm.list_models() lists the names)")
    return bare


def data_settings(name: str) -> DataSettings:
    """Input size and normalisation of timm model ``name`` (``timm:`` prefix optional)."""
    timm = _timm()
    bare = timm_name(name)
    cfg = timm.models.get_pretrained_cfg(bare)
    if cfg is None:
        return DataSettings(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    channels, height, _ = cfg.input_size
    return DataSettings(int(height), int(channels), tuple(cfg.mean), tuple(cfg.std), str(cfg.interpolation or "bilinear"),
                        float(cfg.crop_pct or 0.875))


def create_timm(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """A timm model with uninitialised-pretrained weights (``pretrained=False`` always)."""
    if options.get("pretrained"):
        raise PolarpruneError(f"model {name!r}: pretrained=True would download weights; "
                              "give a local state-dict file as model.weights instead")
    options.pop("pretrained", None)
    timm = _timm()
    bare = timm_name(name)
    try:
        return timm.create_model(bare, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except TypeError as exc:
        raise PolarpruneError(f"model {name!r}: bad option: {exc}") from None


def timm_entry(name: str) -> ModelEntry | None:
    """Registry resolver for ``timm:<name>``: builder plus the pretrained input size and mean/std."""
    if not name.startswith(PREFIX):
        return None
    settings = data_settings(name)

    def build(num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
        return create_timm(name, num_classes, in_channels, **options)

    return ModelEntry(name=name, builder=build, family="timm", input_size=settings.input_size,
                      in_channels=settings.in_channels, mean=settings.mean, std=settings.std)


__all__ = ["PREFIX", "DataSettings", "data_settings", "create_timm", "timm_entry", "timm_name"]


add_resolver(timm_entry)
