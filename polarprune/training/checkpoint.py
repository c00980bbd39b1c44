"""Training checkpoints: atomic writes, exact resume, and models rebuilt without pickled classes.

A checkpoint is a ``torch.save`` of plain data (tensors, numbers, strings, dicts, lists) read
back with ``weights_only=True``: the model is rebuilt from its spec (``model.polarprune_spec``)
and its state dict, never unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PolarpruneError
from ..fileio import atomic_output

CHECKPOINT_FORMAT = "polarprune-checkpoint"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that a kill at any moment leaves either the old or the new file."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a polarprune training checkpoint; one-line errors for missing/truncated/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise PolarpruneError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolarpruneError(f"checkpoint {path} is truncated or corrupt ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PolarpruneError(f"{path} is not a polarprune training checkpoint")
    return ckpt


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The plain-data description of a model's architecture (set by models.create / pruning)."""
    spec = getattr(model, "polarprune_spec", None)
    if not isinstance(spec, dict):
        raise PolarpruneError(
            f"model of type {type(model).__name__} has no polarprune_spec; build it with polarprune.models.create"
        )
    return spec


def build_model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture (pruned or not) from its spec; weights are not initialised meaningfully."""
    if spec.get("plan"):
        from ..serialization import build_model

        return build_model(spec)
    from ..models import create

    return create(spec["name"], spec["num_classes"], in_channels=spec.get("in_channels", 3), **spec.get("options", {}))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error naming the first mismatching key."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise PolarpruneError(f"{source}: weights do not fit the architecture: {detail[:200]}") from None


def load_model_from_checkpoint(path: str | Path) -> nn.Module:
    """The model stored in a training checkpoint (or a polarprune model file), in eval mode."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from ..serialization import load

        return load(path)
    ckpt = read_checkpoint(path)
    model = build_model_from_spec(ckpt["spec"])
    load_state_strict(model, ckpt["model"], str(path))
    model.polarprune_spec = ckpt["spec"]  # type: ignore[assignment]
    return model.eval()


def load_any_model(path: str | Path) -> nn.Module:
    """A model from a training checkpoint (``.pt``) or a pruned/model file (``.safetensors``)."""
    path = Path(path)
    if not path.exists():
        raise PolarpruneError(f"model file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix == ".safetensors" or (len(head) == 8 and not head.startswith(b"PK")):
        from ..serialization import load

        return load(path)
    return load_model_from_checkpoint(path)
