"""Channel mask files (MaskSparsity): which channels of each BN will be kept.

File format (JSON, UTF-8, human-readable and diffable)::

    {
      "format": "polarprune-mask",
      "version": 1,
      "model": "resnet56",
      "source": {"strategy": "fixed", "threshold": 0.01, ...},     # optional, free-form
      "masks": {"layer1.0.bn1": "1101...", ...}                     # one char per channel
    }

A mask string has one character per channel of the BN, ``1`` = keep, ``0`` = remove (will be
pruned). ``mask-l1`` sparsity training regularizes exactly the ``0`` channels. In memory a mask
is ``dict[str, torch.BoolTensor]`` with True = keep, the convention of every polarprune module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..fileio import atomic_write_text
from ..models.layers import gamma_magnitude

log = logging.getLogger(__name__)

MASK_FORMAT = "polarprune-mask"
MASK_VERSION = 1
MASKSPARSITY_THRESHOLD = 0.01


def mask_to_string(mask: Tensor) -> str:
    """``tensor([True, False, True])`` -> ``"101"``."""
    return "".join("1" if bool(v) else "0" for v in mask.detach().flatten().cpu().tolist())


def string_to_mask(text: str) -> Tensor:
    """``"101"`` -> ``tensor([True, False, True])``; raises ValueError on other characters."""
    bad = set(text) - {"0", "1"}
    if bad:
        raise ValueError(f"unexpected character {sorted(bad)[0]!r} (only 0 and 1)")
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def mask_document(masks: Mapping[str, Tensor], model_name: str | None, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of a mask file."""
    doc: dict[str, Any] = {"format": MASK_FORMAT, "version": MASK_VERSION, "model": model_name}
    if source:
        doc["source"] = dict(source)
    doc["masks"] = {name: mask_to_string(mask) for name, mask in masks.items()}
    return doc


def save_mask(masks: Mapping[str, Tensor], path: str | Path, model_name: str | None,
              source: Mapping[str, Any] | None = None) -> Path:
    """Write a mask file atomically (temp file in the same folder, then rename)."""
    return atomic_write_text(Path(path), json.dumps(mask_document(masks, model_name, source), indent=2) + "\n")


def read_mask_document(path: str | Path) -> dict[str, Any]:
    """Parse and check the envelope of a mask file (not yet against a model)."""
    path = Path(path)
    if not path.is_file():
        raise PolarpruneError(f"mask file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolarpruneError(f"{path}: not a polarprune mask file (not JSON: {str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != MASK_FORMAT:
        raise PolarpruneError(f"{path}: not a polarprune mask file (no \"format\": \"{MASK_FORMAT}\")")
    if doc.get("version") != MASK_VERSION:
        raise PolarpruneError(f"{path}: unsupported mask file version {doc.get('version')!r} (this polarprune reads {MASK_VERSION})")
    if not isinstance(doc.get("masks"), dict) or not doc["masks"]:
        raise PolarpruneError(f"{path}: key \"masks\" must be a non-empty mapping of BN name to a 0/1 string")
    return doc


def load_mask(path: str | Path, model: nn.Module) -> dict[str, Tensor]:
    """Read a mask file and check it against ``model`` (one-line errors naming file and layer): BN name -> bool
    keep vector. A different model name only logs a warning (the widths are what must match)."""
    path = Path(path)
    doc = read_mask_document(path)
    spec = getattr(model, "polarprune_spec", None)
    model_name = spec.get("name") if isinstance(spec, dict) else None
    if doc.get("model") and model_name and doc["model"] != model_name:
        log.warning("%s: mask made for model %r, used on %r", path, doc["model"], model_name)
    modules = dict(model.named_modules())
    masks: dict[str, Tensor] = {}
    for name, text in doc["masks"].items():
        module = modules.get(name)
        if module is None:
            raise PolarpruneError(f"{path}: layer {name!r} is not in the model")
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise PolarpruneError(f"{path}: layer {name!r} is a {type(module).__name__}, not a BatchNorm")
        if not isinstance(text, str):
            raise PolarpruneError(f"{path}: mask of layer {name!r} must be a string of 0/1, got {type(text).__name__}")
        try:
            mask = string_to_mask(text)
        except ValueError as exc:
            raise PolarpruneError(f"{path}: mask of layer {name!r}: {exc}") from None
        if mask.numel() != module.num_features:
            raise PolarpruneError(f"{path}: mask of layer {name!r} has {mask.numel()} entries, "
                                  f"the layer has {module.num_features} channels")
        masks[name] = mask
    return masks


def gamma_magnitudes(model: nn.Module, bn_names: Sequence[str]) -> dict[str, Tensor]:
    """``|gamma|`` per named BN (float32, CPU), with a one-line error for a missing layer."""
    out = {}
    for name in bn_names:
        try:
            bn = model.get_submodule(name)
        except AttributeError:
            raise PolarpruneError(f"no layer named {name!r} in the model") from None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None:
            raise PolarpruneError(f"layer {name!r} is not an affine BatchNorm")
        out[name] = gamma_magnitude(bn)
    return out


def uniform_mask(model: nn.Module, bn_names: Sequence[str], ratio: float) -> dict[str, Tensor]:
    """Remove the ``ratio`` fraction of smallest ``|gamma|`` of every layer on its own (MaskSparsity's "uniform"
    mask: round half up, keep >= 1; coupled BNs are not merged)."""
    from ..pruning.strategies import select_channels

    if not 0.0 <= float(ratio) <= 1.0:
        raise PolarpruneError(f"uniform mask: ratio must be in [0, 1], got {ratio}")
    return select_channels(gamma_magnitudes(model, bn_names), "uniform", ratio=float(ratio), min_channels=1).keep


def mask_from_strategy(model: nn.Module, example_inputs: Any, strategy: str, *, bn_names: Sequence[str] | None = None,
                       all_layers: bool = False, **options: Any) -> dict[str, Tensor]:
    """Keep masks per BN that pruning ``model`` with ``strategy`` would give (``plan_pruning``: coupled BNs share
    one mask). Only ``bn_names`` are scored and returned, unless ``all_layers`` (every BN of a prunable group)."""
    from ..pruning import plan_pruning

    plan = plan_pruning(model, example_inputs, strategy=strategy, bn_names=list(bn_names) if bn_names is not None else None, **options)
    if bn_names is not None and not all_layers:
        plan = {name: plan[name] for name in bn_names if name in plan}
    return {name: torch.as_tensor(mask).to(torch.bool).cpu() for name, mask in plan.items()}


def masksparsity_mask(model: nn.Module, example_inputs: Any, bn_names: Sequence[str] | None = None,
                      threshold: float = MASKSPARSITY_THRESHOLD, **options: Any) -> dict[str, Tensor]:
    """MaskSparsity's default mask from a global-L1 checkpoint: remove ``|gamma| <= 0.01``, keep >= 1 per layer."""
    options.setdefault("min_channels", 1)
    return mask_from_strategy(model, example_inputs, "fixed", bn_names=bn_names, threshold=threshold, **options)


def summarize_masks(masks: Mapping[str, Tensor]) -> list[tuple[str, int, int]]:
    """(name, kept, total) per layer."""
    return [(name, int(mask.sum()), int(mask.numel())) for name, mask in masks.items()]


__all__ = ["MASK_FORMAT", "MASK_VERSION", "MASKSPARSITY_THRESHOLD", "save_mask", "load_mask", "read_mask_document",
           "mask_document", "mask_to_string", "string_to_mask", "uniform_mask", "mask_from_strategy",
           "masksparsity_mask", "gamma_magnitudes", "summarize_masks"]
