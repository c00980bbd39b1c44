"""Layers that pruned models contain in place of structures that pruning changes, and the
record of a residual block whose branch pruning may remove.

``ChannelPlacementShortcut`` is the general form of the CIFAR ResNet option-A shortcut (its zero
channels are inherent to the architecture, not a scatter of pruned channels back to full width).
They live with the models (not in ``polarprune.pruning``) because model families build them and
pruned model files are rebuilt from them; pruning sits above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn


@dataclass
class BlockInfo:
    """A residual block whose branch may be removed: its inner BNs, last BN and branch layers (attribute
    names in call order); pruning fills ``emptied_bns``. The shortcut is the block's ``downsample``."""

    name: str
    inner_bns: list[str]
    last_bn: str
    branch: list[str]
    emptied_bns: list[str] = field(default_factory=list)


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
    """Subsample by ``stride`` and place input channel ``i`` at output ``placement[i]`` (-1: dropped); the
    other outputs hold the buffer ``fill`` (zero by default)."""

    def __init__(self, stride: int, in_channels: int, out_channels: int, placement: Sequence[int] | None = None) -> None:
        super().__init__()
        self.stride = int(stride)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        placement = range(in_channels) if placement is None else placement
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
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._gathered(x)
        src = torch.nonzero(self.placement >= 0).flatten()
        dst = self.placement.index_select(0, src)
        return _PlaceChannels.apply(x, self.stride, src, dst, self.fill, self.out_channels)

    def _gathered(self, x: Tensor) -> Tensor:
        """The same result from static-shape ops only (gather from ``x`` plus one zero channel,
        then add ``fill`` where nothing is placed), for exporters (torch.export, ONNX, tracing),
        which cannot follow ``nonzero``'s data-dependent shape or the autograd node above."""
        sub = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        target = torch.where(self.placement >= 0, self.placement, torch.full_like(self.placement, self.out_channels))
        source = torch.full((self.out_channels + 1,), self.in_channels, dtype=torch.long, device=x.device)
        source = source.scatter(0, target, torch.arange(self.in_channels, device=x.device))[: self.out_channels]
        padded = torch.cat([sub, sub.new_zeros(sub.shape[0], 1, sub.shape[2], sub.shape[3])], dim=1)
        empty = (source == self.in_channels).to(x.dtype)
        return padded.index_select(1, source) + (self.fill.to(x.dtype) * empty).view(1, -1, 1, 1)

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
    """A residual block whose branch was removed: ``relu(shortcut(x) + shift)`` (``downsample``: the blocks'
    attribute name, so parameter names do not change)."""

    def __init__(self, downsample: nn.Module | None, channels: int) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.shift = ChannelShift(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.shift(self.downsample(x)))


class _Shuffle(torch.autograd.Function):
    """The channel shuffle as one autograd node (so the pruning analysis sees one layer, not
    the view / transpose / view it is made of)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, groups: int) -> Tensor:  # type: ignore[override]
        ctx.groups = groups
        return shuffle_channels(x, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return shuffle_channels(grad, grad.shape[1] // ctx.groups), None  # the inverse permutation


def shuffle_channels(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: ``(N, g*k, ...)`` read as ``(N, g, k, ...)``, transposed to ``(N, k, g, ...)``."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class ChannelShuffle(nn.Module):
    """A channel shuffle of ``groups`` groups as a layer: the pruning analysis knows it and
    keeps the channels that pass it whole (it permutes channels across groups)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = int(groups)
        self.channels = 0  # seen in the last forward pass (the analysis asks for it)

    def forward(self, x: Tensor) -> Tensor:
        self.channels = int(x.shape[1])
        if torch.is_grad_enabled() and x.requires_grad:
            return _Shuffle.apply(x, self.groups)
        return shuffle_channels(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def gamma_magnitude(bn: nn.Module) -> Tensor:
    """``|gamma|`` of a BatchNorm (float32, CPU, detached): the per-channel score of every strategy,
    mask and gamma plot. A BN without an affine weight has no score (a ``ValueError``)."""
    weight = getattr(bn, "weight", None)
    if weight is None:
        raise ValueError(f"{type(bn).__name__} has no affine weight (gamma) to score")
    return weight.detach().abs().float().cpu()


__all__ = ["gamma_magnitude", "BlockInfo", "ChannelPlacementShortcut", "ChannelShift", "ShortcutOnlyBlock", "ChannelShuffle", "shuffle_channels"]
