"""Torch-Pruning pruners and slicing functions for the layers of ``polarprune.models.layers``.

The layers (``ChannelPlacementShortcut``, ``ChannelShift``, ``ShortcutOnlyBlock``) are defined
with the models; here are the functions that remove their channels (used by the surgery) and
the customized Torch-Pruning pruners that let the dependency graph trace through them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..models.layers import ChannelPlacementShortcut, ChannelShift, ChannelShuffle, ShortcutOnlyBlock

def _keep_list(total: int, remove: Sequence[int]) -> list[int]:
    removed = set(int(i) for i in remove)
    return [i for i in range(total) if i not in removed]


def prune_placement_inputs(layer: ChannelPlacementShortcut, idxs: Sequence[int]) -> ChannelPlacementShortcut:
    """Remove input channels ``idxs`` (their placements go away)."""
    keep = _keep_list(layer.in_channels, idxs)
    layer.placement = layer.placement[keep].clone()
    layer.in_channels = len(keep)
    return layer


def prune_placement_outputs(layer: ChannelPlacementShortcut, idxs: Sequence[int]) -> ChannelPlacementShortcut:
    """Remove output channels ``idxs``: inputs placed there are dropped, the rest renumbered."""
    keep = _keep_list(layer.out_channels, idxs)
    new_index = torch.full((layer.out_channels,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(len(keep))
    placement = layer.placement.clone()
    placed = placement >= 0
    placement[placed] = new_index[placement[placed]]
    layer.placement = placement
    layer.fill = layer.fill[keep].clone()
    layer.out_channels = len(keep)
    return layer


def prune_shift_channels(layer: ChannelShift, idxs: Sequence[int]) -> ChannelShift:
    """Remove channels ``idxs`` of a ``ChannelShift``."""
    keep = _keep_list(layer.num_channels, idxs)
    layer.shift = nn.Parameter(layer.shift.data[keep].clone(), requires_grad=layer.shift.requires_grad)
    layer.num_channels = len(keep)
    return layer


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at qualified ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def torch_pruning_pruners() -> dict[type, Any]:
    """Customized Torch-Pruning pruners for the modules above (imported lazily)."""
    import torch_pruning as tp

    class PlacementPruner(tp.pruner.BasePruningFunc):
        """Inputs and outputs are independent (like a conv): two groups meet here."""

        TARGET_MODULES = ChannelPlacementShortcut

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            return prune_placement_outputs(layer, idxs)  # type: ignore[arg-type]

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            return prune_placement_inputs(layer, idxs)  # type: ignore[arg-type]

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.out_channels)  # type: ignore[arg-type]

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.in_channels)  # type: ignore[arg-type]

    class ShiftPruner(tp.pruner.BasePruningFunc):
        """Channel-wise: inputs and outputs are the same channels."""

        TARGET_MODULES = ChannelShift

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            return prune_shift_channels(layer, idxs)  # type: ignore[arg-type]

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.num_channels)  # type: ignore[arg-type]

        get_in_channels = get_out_channels

    class ShufflePruner(tp.pruner.BasePruningFunc):
        """Inputs and outputs are different channel orders: the groups end here (and stay whole)."""

        TARGET_MODULES = ChannelShuffle

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            raise NotImplementedError("a channel shuffle's channels are kept whole")

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            raise NotImplementedError("a channel shuffle's channels are kept whole")

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.channels)  # type: ignore[arg-type]

        get_in_channels = get_out_channels

    return {ChannelPlacementShortcut: PlacementPruner(), ChannelShift: ShiftPruner(), ChannelShuffle: ShufflePruner()}


def whole_layer_pruner(cls: type[nn.Module], widths: dict[nn.Module, tuple[int, int]]) -> Any:
    """A Torch-Pruning pruner that makes ``cls`` a leaf whose channels stay whole: the graph does not
    look inside it, and its input and output widths are those seen in the tracing pass (``widths``)."""
    import torch_pruning as tp

    class WholePruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = cls

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            raise NotImplementedError(f"the channels of a {cls.__name__} are kept whole")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return widths[layer][1]

        def get_in_channels(self, layer: nn.Module) -> int:
            return widths[layer][0]

    return WholePruner()


__all__ = ["ChannelPlacementShortcut", "ChannelShift", "ShortcutOnlyBlock", "prune_placement_inputs",
           "prune_placement_outputs", "prune_shift_channels", "torch_pruning_pruners", "whole_layer_pruner", "set_module"]
