"""What grouping, cost, decisions and surgery share: layer kinds, the sides of a layer, the names
of removed residual branches, and how example inputs are passed."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..errors import PolarpruneError
from .modules import ChannelPlacementShortcut, ChannelShift

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SLICEABLE = CONV_TYPES + BN_TYPES + (nn.Linear, ChannelPlacementShortcut, ChannelShift)

OUT, IN, BOTH = "out", "in", "both"

# per (module name, side), the module-level channel indices a decision removes
Removals = dict[tuple[str, str], set[int]]


def is_depthwise(conv: nn.Module) -> bool:
    """A conv whose groups equal its input and output channels (one filter per channel)."""
    return isinstance(conv, CONV_TYPES) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def is_grouped(conv: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its channels must stay balanced per conv group."""
    return isinstance(conv, CONV_TYPES) and conv.groups > 1 and not is_depthwise(conv)


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as the positional arguments of the model (a tensor or a tuple of tensors)."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise PolarpruneError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def deleted_with_block(name: str, removed_blocks: Sequence[str]) -> bool:
    """True for layers of a removed block's branch (its ``downsample`` shortcut stays)."""
    for block in removed_blocks:
        if name == block or name.startswith(block + "."):
            return not (name == f"{block}.downsample" or name.startswith(f"{block}.downsample."))
    return False


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict) and value:
        return _first_tensor(next(iter(value.values())))
    raise PolarpruneError(f"cannot compare model outputs of type {type(value).__name__}")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of the first tensors of two model outputs (detached: no autograd warning)."""
    x, y = _first_tensor(a).detach(), _first_tensor(b).detach()
    if x.shape != y.shape:
        raise PolarpruneError(f"pruned model output shape {tuple(y.shape)} differs from the original {tuple(x.shape)}")
    return float((x.float() - y.float()).abs().max()) if x.numel() else 0.0


def kept_width(size: int, removed: Removals, name: str, side: str) -> int:
    """Channels of ``name`` left on ``side``: channel-wise (BOTH) removals count on every side."""
    gone = len(removed.get((name, BOTH), ()))
    return size - gone - (len(removed.get((name, side), ())) if side != BOTH else 0)


__all__ = ["BN_TYPES", "CONV_TYPES", "SLICEABLE", "OUT", "IN", "BOTH", "Removals", "is_depthwise", "is_grouped",
           "as_input_tuple", "deleted_with_block", "kept_width", "max_abs_diff"]
