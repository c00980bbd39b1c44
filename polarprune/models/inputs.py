"""What input a model takes: one policy for every command and library call.

The answer, in order: what the caller gives (``--input-size``, ``--in-channels``), what the
model records (``polarprune_spec["input_shape"]``, written by training and by ``prune``, kept in
model files and checkpoints), the model family's default (its ``ModelEntry``), else an error
asking for ``--input-size``. Files written before the shape was recorded fall back to the
family's default.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..errors import PolarpruneError
from .entry import entry_for

INPUT_KEY = "input_shape"  # spec key: [channels, height, width] of one image
NO_SIZE_HINT = "pass --input-size S (or input_size= in Python)"


def check_input_shape(value: Any, where: str) -> tuple[int, int, int]:
    """``value`` as ``(C, H, W)`` of positive ints; a one-line error naming ``where`` otherwise."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    if ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return int(value[0]), int(value[1]), int(value[2])
    raise PolarpruneError(f"{where}: the recorded input shape must be 3 positive integers [C, H, W], got {value!r}")


def recorded_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` the model records it was trained or pruned at (None when it records none)."""
    spec = getattr(model, "polarprune_spec", None)
    value = spec.get(INPUT_KEY) if isinstance(spec, dict) else None
    return None if value is None else check_input_shape(value, type(model).__name__)


def record_input_shape(model: nn.Module, shape: Sequence[int]) -> bool:
    """Record ``shape`` (one image's ``(C, H, W)``) in the model's spec, so that saving keeps it; False
    for a model without a spec (nothing to record it in)."""
    spec = getattr(model, "polarprune_spec", None)
    if not isinstance(spec, dict):
        return False
    model.polarprune_spec = {**spec, INPUT_KEY: list(check_input_shape(list(shape), type(model).__name__))}  # type: ignore[assignment]
    return True


def _first_conv_channels(model: nn.Module) -> int | None:
    return next((int(m.in_channels) for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def input_channels(model: nn.Module) -> int:
    """The model's input channels: recorded, else its spec's build argument, else its first conv's, else
    its family's (3 when nothing knows)."""
    recorded = recorded_input_shape(model)
    if recorded is not None:
        return recorded[0]
    spec = getattr(model, "polarprune_spec", None) or {}
    found = entry_for(model)
    for value in (spec.get("in_channels"), _first_conv_channels(model), found.in_channels if found else None):
        if value:
            return int(value)
    return 3


def input_side(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` recorded by the model, else its family's square default; None when nobody knows."""
    recorded = recorded_input_shape(model)
    if recorded is not None:
        return recorded[1], recorded[2]
    found = entry_for(model)
    if found is None or found.input_size is None:
        return None
    return found.input_size, found.input_size


def input_shape_of(model: nn.Module, input_size: int | None = None, in_channels: int | None = None) -> tuple[int, int, int]:
    """One image's ``(C, H, W)`` for ``model``: the given size/channels, else recorded, else the family's."""
    for option, value in (("--input-size", input_size), ("--in-channels", in_channels)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise PolarpruneError(f"{option} must be >= 1, got {value}")
    channels = in_channels or input_channels(model)
    if input_size is not None:
        return channels, input_size, input_size
    side = input_side(model)
    if side is None:
        raise PolarpruneError(f"{type(model).__name__}: the model records no input size and no model family knows it; "
                              f"{NO_SIZE_HINT}")
    return (channels, *side)


__all__ = ["INPUT_KEY", "check_input_shape", "recorded_input_shape", "record_input_shape", "input_channels",
           "input_side", "input_shape_of"]
