"""The layer of the paper-accounting residual mode (``residual: scatter``) of CIFAR ResNets.

The polarization code scatters the kept output channels of each block's last conv back to their
places before the addition (its ``ChannelExpand``), so its published FLOPs reductions keep the
residual stream at full width. This mode reproduces those figures and costs wall-clock time (an
extra copy per block, wider additions); static-shape ops only, so exporters can follow it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class ChannelScatter(nn.Module):
    """Put input channel ``i`` at output channel ``positions[i]`` of ``out_channels``; zeros elsewhere."""

    def __init__(self, positions: Sequence[int], out_channels: int) -> None:
        super().__init__()
        positions = [int(p) for p in positions]
        if len(set(positions)) != len(positions) or any(not 0 <= p < out_channels for p in positions):
            raise ValueError(f"bad scatter positions {positions} for {out_channels} channels")
        self.in_channels = len(positions)
        self.out_channels = int(out_channels)
        # source[j]: the input channel that lands on output j, or in_channels (a zero channel)
        source = torch.full((out_channels,), len(positions), dtype=torch.long)
        source[torch.as_tensor(positions, dtype=torch.long)] = torch.arange(len(positions))
        self.register_buffer("source", source)

    @property
    def positions(self) -> list[int]:
        """Output position of every input channel, in input order."""
        placed = [(int(src), j) for j, src in enumerate(self.source.tolist()) if src < self.in_channels]
        return [j for _, j in sorted(placed)]

    def forward(self, x: Tensor) -> Tensor:
        zero = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, zero], dim=1).index_select(1, self.source)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


__all__ = ["ChannelScatter"]
