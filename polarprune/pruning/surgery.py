"""Surgery: slice the weights of every layer that loses channels, replace removed branches.

Everything is applied at once from a ``Decision`` in the original model's coordinates (one
slice per layer and side), so concatenations and shared layers need no index bookkeeping.
Residual channels are removed from every layer of their group (producers, BNs, consumers,
the shortcut), never scattered back to full width.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from .graph import BN_TYPES, BOTH, CONV_TYPES, IN, OUT, deleted_with_block
from .modules import (ChannelPlacementShortcut, ChannelShift, ShortcutOnlyBlock, prune_placement_inputs, prune_placement_outputs,
                      prune_shift_channels, set_module)
from .resolve import BlockInfo, Decision


def kept_indices(size: int, removed: Sequence[int] | set[int]) -> list[int]:
    """Sorted indices in ``range(size)`` that are not removed."""
    gone = set(int(i) for i in removed)
    return [i for i in range(size) if i not in gone]


def _parameter(old: Tensor, new: Tensor) -> nn.Parameter:
    """A parameter holding ``new`` (a fresh tensor from ``index_select``/``cat``: no extra copy)."""
    fresh = new.detach() if new.data_ptr() != old.data_ptr() else new.detach().clone()
    return nn.Parameter(fresh.contiguous(), requires_grad=old.requires_grad)


def slice_conv_out(conv: nn.Module, keep: list[int]) -> None:
    """Keep output channels ``keep`` (filters and bias). Grouped convs must stay balanced."""
    index = torch.as_tensor(keep, dtype=torch.long, device=conv.weight.device)
    conv.weight = _parameter(conv.weight, conv.weight.index_select(0, index))
    if conv.bias is not None:
        conv.bias = _parameter(conv.bias, conv.bias.index_select(0, index))
    conv.out_channels = len(keep)


def grouped_input_selection(keep: list[int], in_channels: int, groups: int) -> list[list[int]]:
    """Per conv group, the local input indices kept; every group must keep the same number."""
    per = in_channels // groups
    local = [[i - g * per for i in keep if g * per <= i < (g + 1) * per] for g in range(groups)]
    if len({len(x) for x in local}) > 1:
        raise PolarpruneError(f"unbalanced input channels for a conv with {groups} groups: {[len(x) for x in local]} per group")
    return local


def slice_conv_in(conv: nn.Module, keep: list[int]) -> None:
    """Keep input channels ``keep``; a grouped conv selects per conv group."""
    weight = conv.weight
    if conv.groups == 1:
        index = torch.as_tensor(keep, dtype=torch.long, device=weight.device)
        new = weight.index_select(1, index)
    else:
        local = grouped_input_selection(keep, conv.in_channels, conv.groups)
        rows = conv.out_channels // conv.groups
        parts = [weight[g * rows : (g + 1) * rows].index_select(1, torch.as_tensor(sel, dtype=torch.long, device=weight.device)) for g, sel in enumerate(local)]
        new = torch.cat(parts, dim=0)
    conv.weight = _parameter(weight, new)
    conv.in_channels = len(keep)


def slice_depthwise(conv: nn.Module, keep: list[int]) -> None:
    """Depthwise conv: input, output and groups shrink together."""
    slice_conv_out(conv, keep)
    conv.in_channels = len(keep)
    conv.groups = len(keep)


def slice_batchnorm(bn: nn.Module, keep: list[int]) -> None:
    """Keep channels ``keep`` of a BatchNorm (affine parameters and running statistics)."""
    index = torch.as_tensor(keep, dtype=torch.long)
    if bn.affine:
        bn.weight = _parameter(bn.weight, bn.weight.index_select(0, index.to(bn.weight.device)))
        bn.bias = _parameter(bn.bias, bn.bias.index_select(0, index.to(bn.bias.device)))
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean.index_select(0, index.to(bn.running_mean.device)).clone()
        bn.running_var = bn.running_var.index_select(0, index.to(bn.running_var.device)).clone()
    bn.num_features = len(keep)


def slice_linear(linear: nn.Linear, out_keep: list[int] | None, in_keep: list[int] | None) -> None:
    """Keep output rows ``out_keep`` and input columns ``in_keep`` of a linear layer."""
    weight = linear.weight
    new = weight
    if out_keep is not None:
        index = torch.as_tensor(out_keep, dtype=torch.long, device=weight.device)
        new = new.index_select(0, index)
        if linear.bias is not None:
            linear.bias = _parameter(linear.bias, linear.bias.index_select(0, index))
        linear.out_features = len(out_keep)
    if in_keep is not None:
        new = new.index_select(1, torch.as_tensor(in_keep, dtype=torch.long, device=weight.device))
        linear.in_features = len(in_keep)
    linear.weight = _parameter(weight, new)


def slice_module(name: str, module: nn.Module, sides: Mapping[str, set[int]]) -> None:
    """Apply the removals of one layer (``sides``: "out"/"in"/"both" -> removed indices)."""
    both = sides.get(BOTH, set())
    if isinstance(module, BN_TYPES):
        slice_batchnorm(module, kept_indices(module.num_features, both))
    elif isinstance(module, CONV_TYPES):
        if both:
            slice_depthwise(module, kept_indices(module.out_channels, both))
        if sides.get(OUT):
            slice_conv_out(module, kept_indices(module.out_channels, sides[OUT]))
        if sides.get(IN):
            slice_conv_in(module, kept_indices(module.in_channels, sides[IN]))
    elif isinstance(module, nn.Linear):
        out_keep = kept_indices(module.out_features, sides[OUT]) if sides.get(OUT) else None
        in_keep = kept_indices(module.in_features, sides[IN]) if sides.get(IN) else None
        slice_linear(module, out_keep, in_keep)
    elif isinstance(module, ChannelPlacementShortcut):
        if sides.get(IN):
            prune_placement_inputs(module, sorted(sides[IN]))
        if sides.get(OUT):
            prune_placement_outputs(module, sorted(sides[OUT]))
    elif isinstance(module, ChannelShift):
        prune_shift_channels(module, sorted(both))
    else:
        raise PolarpruneError(f"cannot slice layer {name!r} of type {type(module).__name__}")


def replace_block(model: nn.Module, block: BlockInfo, shift: Tensor | None) -> ShortcutOnlyBlock:
    """Replace a residual block by ``relu(shortcut(x) + shift)`` (shift in original channels)."""
    old = model.get_submodule(block.name)
    last_bn = model.get_submodule(block.last_bn)
    new = ShortcutOnlyBlock(getattr(old, "downsample", None), last_bn.num_features)
    if shift is not None:
        new.shift.shift.data.copy_(shift.to(new.shift.shift.dtype))
    new.to(last_bn.weight.device if last_bn.weight is not None else "cpu")
    set_module(model, block.name, new)
    return new


def set_block_shifts(model: nn.Module, decision: Decision, block_shifts: Mapping[str, Tensor]) -> None:
    """Give the shortcut-only blocks of a pruned model their branch constants (given in original channels)."""
    for name, shift in block_shifts.items():
        block = decision.removed_blocks[name]
        gone = decision.removed.get((block.last_bn, BOTH), set())
        target = model.get_submodule(f"{name}.shift").shift
        with torch.no_grad():
            target.copy_(shift[kept_indices(shift.numel(), gone)].to(target.dtype))


def apply_decision(model: nn.Module, decision: Decision, block_shifts: Mapping[str, Tensor] | None = None) -> None:
    """Replace removed blocks, then slice every layer named in ``decision.removed`` (in place)."""
    block_shifts = block_shifts or {}
    gone = list(decision.removed_blocks)
    shift_removals: dict[str, set[int]] = {}
    for name, block in decision.removed_blocks.items():
        shift_removals[f"{name}.shift"] = set(decision.removed.get((block.last_bn, BOTH), set()))
        replace_block(model, block, block_shifts.get(name))
    per_module: dict[str, dict[str, set[int]]] = {}
    for (name, side), idxs in decision.removed.items():
        if deleted_with_block(name, gone):
            continue
        per_module.setdefault(name, {}).setdefault(side, set()).update(idxs)
    for name, idxs in shift_removals.items():
        if idxs:
            per_module.setdefault(name, {})[BOTH] = idxs
    for name, sides in per_module.items():
        slice_module(name, model.get_submodule(name), sides)


__all__ = ["apply_decision", "set_block_shifts", "replace_block", "set_module", "slice_module", "slice_conv_in",
           "slice_conv_out", "slice_depthwise", "slice_batchnorm", "slice_linear", "kept_indices",
           "grouped_input_selection"]
