"""Small modules that pruned models contain in place of structures that pruning changes.

- ``ChannelPlacementShortcut``: the general form of the CIFAR ResNet option-A shortcut
  (``PadShortcut``): subsample by a stride, then put input channel ``i`` at output channel
  ``placement[i]`` (``-1``: the input channel is dropped); the other output channels hold the
  per-channel constant ``fill`` (zero for option A, where the padded channels are inherent to
  the architecture: this is not a scatter of pruned channels back to full width).
- ``ChannelShift``: adds a per-channel constant (the output a removed residual branch had).
- ``ShortcutOnlyBlock``: a residual block whose branch was removed: ``relu(shift(shortcut(x)))``.

Each has a Torch-Pruning pruner below so the dependency graph can trace through it (see
``graph.py``); the same functions do the slicing during surgery.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn


class _PlaceChannels(torch.autograd.Function):
    """One autograd node for the placement, so Torch-Pruning sees input -> module directly."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, stride: int, src: Tensor, dst: Tensor, fill: Tensor, out_channels: int) -> Tensor:  # type: ignore[override]
        sub = x[:, :, ::stride, ::stride] if stride > 1 else x
        batch, _, height, width = sub.shape
        layout = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((batch, out_channels, height, width), dtype=x.dtype, device=x.device, memory_format=layout)
        out.copy_(fill.to(x.dtype).view(1, -1, 1, 1).expand(batch, out_channels, height, width))
        if src.numel():
            out.index_copy_(1, dst, sub.index_select(1, src))
        ctx.stride, ctx.in_shape = stride, x.shape
        ctx.save_for_backward(src, dst)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        src, dst = ctx.saved_tensors
        grad_in = grad.new_zeros(ctx.in_shape)
        view = grad_in[:, :, :: ctx.stride, :: ctx.stride] if ctx.stride > 1 else grad_in
        if src.numel():
            view.index_copy_(1, src, grad.index_select(1, dst))
        return grad_in, None, None, None, None, None


class ChannelPlacementShortcut(nn.Module):
    """Subsample by ``stride`` and place input channel ``i`` at output ``placement[i]`` (-1: dropped).

    Output channels that receive no input hold ``fill`` (a buffer, zero by default).
    """

    def __init__(self, stride: int, in_channels: int, out_channels: int, placement: Sequence[int] | None = None) -> None:
        super().__init__()
        self.stride = int(stride)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        if placement is None:
            placement = list(range(in_channels))
        self.register_buffer("placement", torch.as_tensor(list(placement), dtype=torch.long))
        self.register_buffer("fill", torch.zeros(out_channels))
        self._check()

    @classmethod
    def from_pad_shortcut(cls, stride: int, in_channels: int, extra_channels: int) -> "ChannelPlacementShortcut":
        """The exact equivalent of option A: ``extra//2`` zero channels before, the rest after."""
        half = extra_channels // 2
        return cls(stride, in_channels, in_channels + extra_channels, [half + i for i in range(in_channels)])

    def _check(self) -> None:
        placed = self.placement[self.placement >= 0]
        if self.placement.numel() != self.in_channels or (placed >= self.out_channels).any() or placed.unique().numel() != placed.numel():
            raise ValueError(f"bad channel placement {self.placement.tolist()} for {self.in_channels} -> {self.out_channels} channels")

    def forward(self, x: Tensor) -> Tensor:
        src = torch.nonzero(self.placement >= 0).flatten()
        dst = self.placement.index_select(0, src)
        return _PlaceChannels.apply(x, self.stride, src, dst, self.fill, self.out_channels)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, in_channels={self.in_channels}, out_channels={self.out_channels}"


class ChannelShift(nn.Module):
    """``x + shift`` with one trainable constant per channel (dim 1)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        self.shift = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"


class ShortcutOnlyBlock(nn.Module):
    """A residual block whose branch was removed: ``relu(shortcut(x) + shift)``.

    ``downsample`` keeps the attribute name of the CIFAR and torchvision blocks, so the
    qualified names of its parameters do not change.
    """

    def __init__(self, downsample: nn.Module | None, channels: int) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.shift = ChannelShift(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.shift(self.downsample(x)))


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

    return {ChannelPlacementShortcut: PlacementPruner(), ChannelShift: ShiftPruner()}


__all__ = [
    "ChannelPlacementShortcut",
    "ChannelShift",
    "ShortcutOnlyBlock",
    "prune_placement_inputs",
    "prune_placement_outputs",
    "prune_shift_channels",
    "torch_pruning_pruners",
]
