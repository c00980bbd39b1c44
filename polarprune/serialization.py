"""Self-describing model files: safetensors weights + the model spec (with the pruning plan).

A polarprune file is a safetensors file whose metadata holds:

- ``"format"``: ``"polarprune"``;
- ``"polarprune_version"``: the version that wrote it;
- ``"spec"``: JSON of ``model.polarprune_spec`` (``name``, ``num_classes``, ``in_channels``,
  ``options`` and, for pruned models, ``plan``);
- ``"extra"``: JSON of caller metadata (e.g. the prune report summary).

Its tensors are the model's state dict (parameters and buffers: BN running statistics,
``num_batches_tracked``, placement indices). Loading builds the architecture from the spec
(``build_model``) and fills it; nothing is unpickled. Writing goes to a temporary file in the
same folder, then ``os.replace``, so a file is never half written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import PolarpruneError
from .fileio import atomic_output

FORMAT = "polarprune"
SPEC_KEYS = ("name", "num_classes", "in_channels", "options")


def _check_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise PolarpruneError(f"{where}: the model spec must be a mapping, got {type(spec).__name__}")
    for key in ("name", "num_classes"):
        if key not in spec:
            raise PolarpruneError(f"{where}: the model spec has no {key!r}")
    if not isinstance(spec.get("options", {}), dict):
        raise PolarpruneError(f"{where}: the model spec's 'options' must be a mapping")
    return spec


def build_model(spec: dict[str, Any], where: str = "model spec") -> nn.Module:
    """The architecture described by ``spec`` (uninitialised weights, plan applied), in eval mode."""
    from .models import create
    from .pruning.plan import apply_plan

    spec = _check_spec(spec, where)
    model = create(
        spec["name"], int(spec["num_classes"]), in_channels=int(spec.get("in_channels", 3)), **dict(spec.get("options") or {})
    )
    apply_plan(model, spec.get("plan"), where)
    model.polarprune_spec = json.loads(json.dumps(spec))  # type: ignore[assignment]
    return model.eval()


def _json(value: Any, what: str, path: str | Path) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise PolarpruneError(f"{path}: {what} is not JSON-serializable: {exc}") from None


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights, buffers, spec with plan) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    target = Path(path)
    spec = getattr(model, "polarprune_spec", None)
    if not isinstance(spec, dict):
        raise PolarpruneError(f"{target}: the model has no polarprune_spec (build it with polarprune.models.create)")
    _check_spec(spec, str(target))
    metadata = {
        "format": FORMAT,
        "polarprune_version": __version__,
        "spec": _json(spec, "the model spec", target),
        "extra": _json(extra or {}, "the extra metadata", target),
    }
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in model.state_dict().items()}
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise PolarpruneError(f"{target}: folder {folder} does not exist")
    with atomic_output(target) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata of a polarprune file: format, polarprune_version, spec, extra.

    Reads only the header. Raises a one-line ``PolarpruneError`` for a missing file, a file that
    is not safetensors or not a polarprune file, or a truncated one.
    """
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise PolarpruneError(f"{source}: no such file")
    try:
        with safe_open(str(source), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"{source}: not a polarprune model file (unreadable safetensors: {first})") from None
    if raw.get("format") != FORMAT:
        raise PolarpruneError(f"{source}: not a polarprune model file (metadata 'format' is {raw.get('format')!r})")
    decoded: dict[str, Any] = {"format": FORMAT, "polarprune_version": raw.get("polarprune_version")}
    for key in ("spec", "extra"):
        try:
            decoded[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError as exc:
            raise PolarpruneError(f"{source}: metadata {key!r} is not valid JSON ({exc.msg})") from None
    _check_spec(decoded["spec"], str(source))
    return decoded


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model spec stored in a polarprune file (architecture, options, plan)."""
    return read_metadata(path)["spec"]


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    for name, value in expected.items():
        if name not in tensors:
            raise PolarpruneError(f"{source}: tensor {name!r} is missing (the plan does not fit the weights)")
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise PolarpruneError(
                f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the planned architecture expects {tuple(value.shape)}"
            )
    for name in tensors:
        if name not in expected:
            raise PolarpruneError(f"{source}: unexpected tensor {name!r} (the plan does not fit the weights)")


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model stored at ``path`` (eval mode). Never unpickles anything."""
    from safetensors.torch import load_file

    source = Path(path)
    spec = read_metadata(source)["spec"]
    model = build_model(spec, where=str(source))
    try:
        tensors = load_file(str(source))
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"{source}: cannot read the tensors ({first})") from None
    _check_tensors(model, tensors, source)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


__all__ = ["FORMAT", "save", "load", "build_model", "read_spec", "read_metadata"]
