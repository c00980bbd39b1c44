"""The cost seam: what a pruning decision costs, as the strategies that target a cost see it.

``flops-target``'s search, the trial prunes (sparsity training's target stop) and the progressive
stage ask a ``CostModel`` for the cost of a decision, never MACs directly, so a second model (a
measured latency) plugs in without touching them. ``MacsCost`` is the default: per-image conv and
linear MACs from each layer's widths (``LayerCost``), recorded once by the analysis's tracing pass.
It is exact for those MACs, so its ratio equals the ratio ``prune_model`` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence

from torch import Tensor, nn

from ..models.layers import BlockInfo
from .base import BN_TYPES, BOTH, CONV_TYPES, IN, OUT, Removals, as_input_tuple, deleted_with_block, is_depthwise, kept_width
from .modules import ChannelShift

if TYPE_CHECKING:
    from .graph import ChannelGroup, ModelAnalysis


@dataclass
class LayerCost:
    """The per-channel analytic cost of one conv/linear layer:
    ``macs = area * in/groups * out * positions`` per image; ``positions`` sums over every call."""

    kernel_area: int
    in_channels: int
    out_channels: int
    groups: int
    positions: int  # output positions per image (H_out*W_out for a 2-D conv)
    depthwise: bool
    bias: bool = False

    def _filters(self, in_channels: int, out_channels: int) -> int:
        groups = in_channels if self.depthwise else self.groups
        return 0 if groups == 0 else self.kernel_area * (in_channels // groups) * out_channels

    def macs(self, in_channels: int, out_channels: int) -> int:
        return self._filters(in_channels, out_channels) * self.positions

    def params(self, in_channels: int, out_channels: int) -> int:
        return self._filters(in_channels, out_channels) + (out_channels if self.bias else 0)


def cost_hooks(model: nn.Module, example_inputs: Any, names: dict[nn.Module, str], costs: dict[str, LayerCost]) -> list[Any]:
    """Forward hooks that record every conv/linear call's output positions into ``costs``."""
    batch = as_input_tuple(example_inputs)[0].shape[0]

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        name = names[module]
        seen = costs[name].positions if name in costs else 0
        bias = module.bias is not None
        if isinstance(module, CONV_TYPES):
            positions = output.numel() // (output.shape[0] * output.shape[1])
            costs[name] = LayerCost(math.prod(module.kernel_size), module.in_channels, module.out_channels,
                                    module.groups, seen + positions, is_depthwise(module), bias)
        else:
            positions = output.numel() // (batch * output.shape[-1])
            costs[name] = LayerCost(1, module.in_features, module.out_features, 1, seen + positions, False, bias)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES + (nn.Linear,))]


def params_split(model: nn.Module, costs: Mapping[str, LayerCost]) -> tuple[dict[str, tuple[int, int]], int]:
    """(params per channel, channels) of BNs and shifts, and the params no channel removal changes."""
    per_channel: dict[str, tuple[int, int]] = {}
    priced: set[int] = set()
    for name, module in model.named_modules():
        if name in costs:
            priced.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, BN_TYPES + (ChannelShift,)):
            own = list(module.parameters(recurse=False))
            per_channel[name] = (len(own), module.num_features if isinstance(module, BN_TYPES) else module.num_channels)
            priced.update(id(p) for p in own)
    other = sum(p.numel() for p in model.parameters() if id(p) not in priced)
    return per_channel, other


def estimate_macs(analysis: ModelAnalysis, removed: Removals, removed_modules: Iterable[str] = ()) -> int:
    """Per-image conv+linear MACs after removing ``removed[(module, side)]`` channel indices; ``removed_modules``
    (layers of removed residual branches) cost nothing."""
    gone = list(removed_modules)
    return sum(cost.macs(kept_width(cost.in_channels, removed, name, IN), kept_width(cost.out_channels, removed, name, OUT))
               for name, cost in analysis.layer_costs.items() if not deleted_with_block(name, gone))


def estimate_params(analysis: ModelAnalysis, removed: Removals, removed_blocks: Mapping[str, BlockInfo] | None = None) -> int:
    """Parameters left after the removals (without compensation's biases); a removed block's
    ``ShortcutOnlyBlock`` gains one shift per kept channel of its last BN."""
    blocks = dict(removed_blocks or {})
    gone = list(blocks)
    total = analysis.other_params
    for name, cost in analysis.layer_costs.items():
        if not deleted_with_block(name, gone):
            total += cost.params(kept_width(cost.in_channels, removed, name, IN), kept_width(cost.out_channels, removed, name, OUT))
    for name, (per, channels) in analysis.channel_params.items():
        if not deleted_with_block(name, gone):
            total += per * kept_width(channels, removed, name, BOTH)
    for block in blocks.values():
        total += kept_width(analysis.channel_params[block.last_bn][1], removed, block.last_bn, BOTH)
    return total


def channel_macs(analysis: ModelAnalysis) -> dict[str, float]:
    """Per BN, the MACs one of its channels costs, averaged over its group (the regularizer's FLOPs weights)."""
    result: dict[str, float] = {}
    for group in analysis.groups:
        spent = 0.0
        for item in group.items:
            cost = analysis.layer_costs.get(item.module_name)
            if cost is None:
                continue
            full = cost.macs(cost.in_channels, cost.out_channels)
            width = cost.in_channels if item.side == IN else cost.out_channels
            spent += full / max(width, 1) * len(item.idxs)
        for bn in group.bn_names:
            result.setdefault(bn, spent / max(group.num_channels, 1))
    return result


class CostModel(Protocol):
    """What a pruning costs: ``cost`` of the analysed model after ``removed`` (``removed_modules``:
    layers of removed residual branches) in the model's unit (MACs, predicted ms); ``steps``: the
    widths of a group worth keeping (a runtime that computes 16 channels at a time: multiples of 16)."""

    name: str

    def cost(self, analysis: ModelAnalysis, removed: Removals, removed_modules: Sequence[str] = ()) -> float: ...

    def steps(self, analysis: ModelAnalysis, group: ChannelGroup) -> Sequence[int]: ...


@dataclass(frozen=True)
class MacsCost:
    """Per-image conv + linear MACs (``estimate_macs``): every width is a step."""

    name: str = "MACs"

    def cost(self, analysis: ModelAnalysis, removed: Removals, removed_modules: Sequence[str] = ()) -> float:
        return float(estimate_macs(analysis, removed, removed_modules))

    def steps(self, analysis: ModelAnalysis, group: ChannelGroup) -> Sequence[int]:
        return range(1, group.num_channels + 1)


MACS = MacsCost()

__all__ = ["LayerCost", "CostModel", "MacsCost", "MACS", "cost_hooks", "params_split", "estimate_macs", "estimate_params",
           "channel_macs"]
