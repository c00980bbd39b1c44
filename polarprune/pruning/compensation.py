"""Shift compensation: fold the constant output of removed channels into their consumers.

A BN channel with gamma = 0 outputs the constant beta (act(beta) after its activation), and
the next layer sees it. Removing the channel drops that constant; compensation adds it back
where it is read, before the channel is removed:

- a consumer conv (weight ``W``) gains ``sum_k W[:, c, k] * const_c`` in its bias (a bias is
  created when it has none) or, when the conv feeds a BN directly, that BN's ``running_mean``
  is lowered by the same amount (no new parameter);
- a consumer linear layer: ``W[:, c] * const_c`` into its bias, or into the following BN1d;
- an option-A placement shortcut: the constant goes into the ``fill`` of the output channel
  the removed input was placed at;
- a residual block whose branch is removed becomes ``relu(shortcut(x) + shift)`` where
  ``shift`` is the branch's constant output.

What is compensated: the *constant part* of a removed channel, i.e. its value when the
gamma of every BN of its group is 0 (beta, carried through activations, residual
additions, pooling and subsampling). It is measured, not derived: one forward pass of a copy
whose removed channels have gamma = 0 records every consumer's input on those channels. A
channel that is not constant there (it reaches a consumer without passing a BN of its group)
is not compensated (noted). With gamma != 0 the channel also carries a varying part
``gamma * x_hat``; that part is dropped, not compensated.

Exactness: exact for linear consumers and convs without zero padding. A conv with zero
padding ``p`` saw zeros in the padded border where the fold now adds the constant: output
positions within ``p`` of the border differ by at most
``sum_c |const_c| * sum_{padded taps} |W[o, c, tap]|`` (bounded by ``sum_c |const_c| *
sum_k |W[o, c, k]|``); interior positions are exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .graph import BN_TYPES, BOTH, CONV_TYPES, IN, OUT, ModelAnalysis, deleted_with_block, is_depthwise, probe_with_hooks
from .modules import ChannelPlacementShortcut
from .resolve import BlockInfo, Decision

CONSTANT_TOLERANCE = 1e-5


@dataclass
class CompensationResult:
    """Block shifts (original channels) for removed branches, and what was (not) folded."""

    block_shifts: dict[str, Tensor] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)
    folded_channels: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changes_outputs(self) -> bool:
        """Whether applying the result changes the pruned model (some folded constant is not 0)."""
        return bool(self.adjustments) or any(bool(shift.any()) for shift in self.block_shifts.values())


def conv_fold_delta(weight: Tensor, groups: int, removed: list[int], const: Tensor) -> Tensor:
    """Per output channel: ``sum_k W[o, c, k] * const_c`` over the removed inputs ``c`` of its own conv group."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    rows = out_channels // groups
    delta = torch.zeros(out_channels, dtype=weight.dtype, device=weight.device)
    if groups == 1:  # all products at once, summed in the channels' order (as one by one)
        index = torch.as_tensor(removed, dtype=torch.long, device=weight.device)
        taps = weight.detach().index_select(1, index).reshape(out_channels, len(removed), -1).sum(dim=2)
        for column in (taps * const.to(weight.dtype).to(weight.device)).unbind(1):
            delta += column
        return delta
    tap_sums = weight.detach().reshape(out_channels, per_group, -1).sum(dim=2)
    for c, value in zip(removed, const.tolist()):
        g, local = divmod(c, per_group)
        delta[g * rows : (g + 1) * rows] += tap_sums[g * rows : (g + 1) * rows, local] * value
    return delta


def linear_fold_delta(weight: Tensor, removed: list[int], const: Tensor) -> Tensor:
    """``W[:, removed] @ const``."""
    index = torch.as_tensor(removed, dtype=torch.long, device=weight.device)
    return weight.detach().index_select(1, index) @ const.to(weight.dtype).to(weight.device)


def constant_channels(x: Tensor, channels: list[int]) -> tuple[list[int], Tensor, list[int]]:
    """(constant channels, their values, varying channels) of ``x`` (N, C, ...), which holds exactly ``channels``."""
    planes = x.transpose(0, 1).reshape(len(channels), -1)
    value = planes[:, planes.shape[1] // 2].float()
    low, high = torch.aminmax(planes, dim=1)  # max |plane - value| = max(high - value, value - low), one pass
    spread = torch.maximum(high.double() - value.double(), value.double() - low.double())
    constant = spread <= CONSTANT_TOLERANCE * (1.0 + value.abs().double())
    flags = constant.tolist()
    kept = [c for c, ok in zip(channels, flags) if ok]
    varying = [c for c, ok in zip(channels, flags) if not ok]
    return kept, value[constant].cpu(), varying


def _zero_removed_gammas(model: nn.Module, decision: Decision) -> list[tuple[Tensor, list[int], Tensor]]:
    """Set gamma = 0 on every removed BN channel; returns what to put back."""
    saved = []
    with torch.no_grad():
        for (name, side), idxs in decision.removed.items():
            if side != BOTH or not idxs:
                continue
            module = model.get_submodule(name)
            if isinstance(module, BN_TYPES) and module.weight is not None:
                index = sorted(idxs)
                saved.append((module.weight, index, module.weight[index].clone()))
                module.weight[index] = 0.0
    return saved


def _consumers(model: nn.Module, decision: Decision) -> dict[str, list[int]]:
    gone = list(decision.removed_blocks)
    result = {}
    for (name, side), idxs in decision.removed.items():
        if side != IN or not idxs or deleted_with_block(name, gone):
            continue
        module = model.get_submodule(name)
        if isinstance(module, CONV_TYPES + (nn.Linear, ChannelPlacementShortcut)) and not is_depthwise(module):
            result[name] = sorted(idxs)
    return result


def measure_constants(model: nn.Module, example_inputs: Any, decision: Decision, consumers: Mapping[str, list[int]]) -> dict[str, Tensor]:
    """The consumers' removed input channels in a forward pass where the removed BN channels have
    gamma = 0 (zeroed in place and restored afterwards, no copy of the model)."""
    captured: dict[str, Tensor] = {}

    def record(name: str) -> Any:
        index = torch.as_tensor(consumers[name], dtype=torch.long)

        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if name not in captured:  # only the removed channels, in the order of ``consumers``
                captured[name] = inputs[0].detach().index_select(1, index.to(inputs[0].device))

        return hook

    saved = _zero_removed_gammas(model, decision)
    handles = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in consumers]
    try:
        probe_with_hooks(model, example_inputs, handles)
    finally:
        with torch.no_grad():
            for weight, index, values in saved:
                weight[index] = values
    return captured


def following_bn(analysis: ModelAnalysis, name: str) -> str | None:
    """The BN that directly and only reads layer ``name``'s output, if any."""
    successors = analysis.successors.get(name, [])
    if len(successors) == 1 and successors[0]:
        module = analysis.model.get_submodule(successors[0])
        if isinstance(module, BN_TYPES) and module.running_mean is not None:
            return successors[0]
    return None


@dataclass
class Adjustment:
    """A folded constant, in original channel coordinates: ``delta`` goes into ``target``'s
    ``kind`` (``"bias"``: added, created when missing; ``"running_mean"``: subtracted; ``"fill"``:
    added to a placement shortcut's fill). Applied after surgery, on the kept channels."""

    target: str
    kind: str
    delta: Tensor


def fold_into(analysis: ModelAnalysis, model: nn.Module, name: str, removed: list[int], const: Tensor) -> Adjustment:
    """The adjustment that folds the constants of removed inputs ``removed`` of layer ``name``."""
    module = model.get_submodule(name)
    if isinstance(module, ChannelPlacementShortcut):
        fill = torch.zeros_like(module.fill)
        for c, value in zip(removed, const.tolist()):
            target = int(module.placement[c])
            if target >= 0:
                fill[target] += value
        return Adjustment(name, "fill", fill)
    if isinstance(module, nn.Linear):
        delta = linear_fold_delta(module.weight, removed, const)
    else:
        delta = conv_fold_delta(module.weight, module.groups, removed, const.to(module.weight.device))
    bn_name = following_bn(analysis, name) if module.bias is None else None
    return Adjustment(name, "bias", delta) if bn_name is None else Adjustment(bn_name, "running_mean", delta)


def apply_adjustments(model: nn.Module, decision: Decision, adjustments: list[Adjustment]) -> None:
    """Add the folded constants to the pruned model (each delta sliced to the kept channels)."""
    with torch.no_grad():
        for adj in adjustments:
            module = model.get_submodule(adj.target)
            gone = decision.removed.get((adj.target, BOTH if adj.kind == "running_mean" else OUT), set())
            keep = [i for i in range(adj.delta.numel()) if i not in gone]
            delta = adj.delta[keep] if gone else adj.delta
            if adj.kind == "fill":
                module.fill += delta.to(module.fill.dtype)
            elif adj.kind == "running_mean":
                module.running_mean -= delta.to(module.running_mean.dtype)
            else:
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=module.weight.requires_grad)
                module.bias += delta.to(module.bias.dtype)


def branch_constant(block_module: nn.Module, block: BlockInfo, in_channels: int, size: int = 16) -> Tensor:
    """The branch output of a block whose ``emptied_bns`` have gamma = 0 (interior value)."""
    scratch = copy.deepcopy(block_module).eval()
    prefix = block.name + "."
    with torch.no_grad():
        for bn in block.emptied_bns:
            scratch.get_submodule(bn[len(prefix):]).weight.zero_()
        reference = next(scratch.parameters())
        x = torch.zeros(1, in_channels, size, size, dtype=reference.dtype, device=reference.device)
        for attr in block.branch:
            x = getattr(scratch, attr)(x)
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return x[0, :, h, w].clone()


def compensate(model: nn.Module, analysis: ModelAnalysis, decision: Decision, example_inputs: Any) -> CompensationResult:
    """Measure every removed channel's constant part and where it folds (the model is unchanged):
    apply the result to the pruned model with ``apply_adjustments`` and the block shifts."""
    result = CompensationResult()
    consumers = _consumers(model, decision)
    captured = measure_constants(model, example_inputs, decision, consumers) if consumers else {}
    skipped = 0
    for name, removed in consumers.items():
        if name not in captured:
            result.notes.append(f"{name}: not reached by the example input, not compensated")
            continue
        constant, values, varying = constant_channels(captured[name], removed)
        skipped += len(varying)
        if constant:
            result.folded_channels += len(constant)
            adjustment = fold_into(analysis, model, name, constant, values) if bool(values.any()) else None
            if adjustment is not None and bool(adjustment.delta.any()):  # a zero constant changes nothing (no new bias)
                result.adjustments.append(adjustment)
    if skipped:
        result.notes.append(f"compensation: {skipped} removed input channel(s) are not constant when their BNs have gamma = 0, not compensated")
    for name, block in decision.removed_blocks.items():
        module = model.get_submodule(name)
        result.block_shifts[name] = branch_constant(module, block, getattr(module, block.branch[0]).in_channels)
    return result


__all__ = ["CompensationResult", "compensate", "conv_fold_delta", "linear_fold_delta", "constant_channels",
           "measure_constants", "branch_constant", "following_bn", "fold_into", "apply_adjustments", "Adjustment"]
