"""Widths that suit the runtime: copies of a model with every channel group cut to a multiple, for timing
(``polarprune latency --round-to``). oneDNN works on blocks of 16 channels on AVX-512 (8 on AVX2), GPU
tensor cores on multiples of 8, so a layer of 17 channels costs about what one of 32 does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..models.layers import gamma_magnitude
from ..pruning import channel_groups, prune_model


def rounded_count(width: int, multiple: int) -> int:
    """``width`` rounded down to a multiple of ``multiple``, at least one multiple, at most ``width``."""
    return min(width, max(multiple, width // multiple * multiple))


def round_widths(model: nn.Module, multiple: int, example_inputs: Any) -> nn.Module:
    """A copy of ``model`` whose prunable channel groups keep ``rounded_count`` channels each
    (the lowest summed |gamma| go), through ``prune_model``'s mask strategy."""
    if multiple < 1:
        raise PolarpruneError(f"round_to must be >= 1, got {multiple}")
    if multiple == 1:
        return copy.deepcopy(model).eval()
    masks: dict[str, Tensor] = {}
    for group in channel_groups(model, example_inputs):
        items = group.bn_items()
        if not group.prunable or not items:
            continue
        scores = torch.zeros(group.num_channels)
        for item in items:
            bn = model.get_submodule(item.module_name)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.weight is not None:
                scores.index_add_(0, item.root_t, gamma_magnitude(bn)[item.idx_t])
        kept_roots = torch.zeros(group.num_channels, dtype=torch.bool)
        kept_roots[torch.topk(scores, rounded_count(group.num_channels, multiple)).indices] = True
        for item in items:
            mask = masks.setdefault(item.module_name, torch.ones(model.get_submodule(item.module_name).num_features, dtype=torch.bool))
            mask[item.idx_t] = kept_roots[item.root_t]
    rounded, _ = prune_model(model, example_inputs, "mask", masks=masks, remove_empty_blocks=False, compensate=False)
    return rounded.eval()


__all__ = ["round_widths", "rounded_count"]
