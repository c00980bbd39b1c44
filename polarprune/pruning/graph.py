"""Channel groups from Torch-Pruning's dependency graph, and a cheap MACs model of a pruning.

polarprune only *reads* Torch-Pruning's groups (layers sharing channels); decisions and surgery are
its own, so all groups are resolved at once in the original coordinates (concatenations shift indices
when groups are pruned one by one). A group is left whole when it reaches the model output, holds a
layer the surgery cannot slice, or has no BN.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..conv_links import LayerShape
from ..errors import PolarpruneError
from ..flops import CostCounter, CostProfile
from ..modes import inference, restored_modes
from ..models import entry_for
from ..models.layers import BlockInfo, ChannelShuffle
from .modules import ChannelPlacementShortcut, ChannelShift, torch_pruning_pruners

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SLICEABLE = CONV_TYPES + BN_TYPES + (nn.Linear, ChannelPlacementShortcut, ChannelShift)

OUT, IN, BOTH = "out", "in", "both"


@dataclass
class GroupItem:
    """One layer side in a group: ``idxs[j]`` of ``module_name`` (on ``side``) is group channel ``root_idxs[j]``."""

    module_name: str
    module: nn.Module
    side: str  # "out" (producer), "in" (consumer) or "both" (channel-wise: BN, depthwise conv, shift)
    idxs: list[int]
    root_idxs: list[int]
    idx_t: Tensor = field(init=False, repr=False)
    root_t: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.idx_t = torch.as_tensor(self.idxs, dtype=torch.long)
        self.root_t = torch.as_tensor(self.root_idxs, dtype=torch.long)


@dataclass
class ChannelGroup:
    """Channels coupled across layers, kept or removed together; ``name`` is its first BN (or root layer),
    ``residual`` True when several layers produce the channels."""

    name: str
    num_channels: int
    bn_names: list[str]
    residual: bool
    prunable: bool
    reason: str = ""
    items: list[GroupItem] = field(default_factory=list, repr=False)

    def bn_items(self) -> list[GroupItem]:
        """Items whose module is a BatchNorm."""
        return [it for it in self.items if isinstance(it.module, BN_TYPES)]

    def producers(self) -> list[GroupItem]:
        """Convs/linears that produce the group's channels (outputs), not channel-wise layers."""
        return [it for it in self.items if it.side == OUT and isinstance(it.module, CONV_TYPES + (nn.Linear,))]


@dataclass
class LayerCost:
    """The per-channel analytic cost of one conv/linear layer (the one cost model of searches and trials):
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


@dataclass
class ModelAnalysis:
    """Everything decisions need about a model, computed once: groups and the MACs model."""

    model: nn.Module
    groups: list[ChannelGroup]
    layer_costs: dict[str, LayerCost]
    module_names: dict[nn.Module, str]
    successors: dict[str, list[str]]  # module name -> names of the graph nodes it feeds
    blocks: dict[str, BlockInfo] = field(default_factory=dict)  # residual blocks (the model entry's rule)
    traced_output: Any = None  # the tracing pass's output (detached), when asked for
    traced_cost: CostProfile | None = None  # its exact cost (``polarprune.flops``), when asked for
    channel_params: dict[str, tuple[int, int]] = field(default_factory=dict)  # BN / shift -> (params per channel, channels)
    other_params: int = 0  # parameters no removal changes

    def group_by_name(self) -> dict[str, ChannelGroup]:
        return {g.name: g for g in self.groups}

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def layer_shapes(self) -> dict[str, LayerShape]:
        """The layers' widths and per-image MACs in ``conv_links``' terms (no second forward pass)."""
        return {name: LayerShape("conv" if isinstance(self.model.get_submodule(name), CONV_TYPES) else "linear", cost.in_channels,
                                 cost.out_channels, cost.groups, cost.macs(cost.in_channels, cost.out_channels))
                for name, cost in self.layer_costs.items()}


def is_depthwise(conv: nn.Module) -> bool:
    """A conv whose groups equal its input and output channels (one filter per channel)."""
    return isinstance(conv, CONV_TYPES) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def is_grouped(conv: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its channels must stay balanced per conv group."""
    return isinstance(conv, CONV_TYPES) and conv.groups > 1 and not is_depthwise(conv)


def _as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise PolarpruneError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """``model(*example_inputs)`` for a tensor or a tuple of tensors."""
    return model(*_as_input_tuple(example_inputs))


def probe_with_hooks(model: nn.Module, example_inputs: Any, handles: list[Any]) -> None:
    """One probing forward (eval, no grad, modes restored) that feeds the hooks, then removes them."""
    try:
        with inference(model):
            run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()


def build_dependency_graph(model: nn.Module, example_inputs: Any, handles: Sequence[Any] = ()) -> Any:
    """Torch-Pruning's ``DependencyGraph`` of ``model`` (traced in eval mode; mode restored); ``handles``
    (forward hooks already registered) see the tracing pass and are removed afterwards."""
    import torch_pruning as tp

    try:
        with restored_modes(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=_as_input_tuple(example_inputs),
                                                          customized_pruners=torch_pruning_pruners(), verbose=False)
    except PolarpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing failures are reported as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"cannot trace {type(model).__name__} for pruning: {first}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return graph


def _item_side(graph: Any, module: nn.Module, handler: Any) -> str:
    pruner = graph.get_pruner_of_module(module)
    if pruner is None or pruner.prune_out_channels == pruner.prune_in_channels:
        return BOTH
    return OUT if handler == pruner.prune_out_channels else IN


def _terminal_modules(graph: Any) -> set[Any]:
    """Graph nodes whose output is a model output (no successors)."""
    return {module for module, node in graph.module2node.items() if not node.outputs}


def _convert_group(graph: Any, tp_group: Any, names: dict[Any, str], terminals: set[Any]) -> ChannelGroup:
    import torch_pruning as tp

    items: list[GroupItem] = []
    reason = ""
    num_channels = len(tp_group[0].idxs)
    for entry in tp_group:
        dep, idxs = entry.dep, entry.idxs
        module = dep.target.module
        root_idxs = list(entry.root_idxs)
        if isinstance(module, tp.ops._OutputOp) or (module in terminals and _item_side(graph, module, dep.handler) != IN):
            reason = reason or "reaches the model output"
            continue
        if not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning"):
            if isinstance(module, nn.Parameter):
                reason = reason or "holds a bare parameter"
            continue  # operator nodes (add, cat, relu, reshape...) hold no weights
        name = names.get(module, "")
        if isinstance(module, ChannelShuffle):
            reason = reason or f"passes the channel shuffle {name} (shuffled channels are kept whole)"
            continue
        if not isinstance(module, SLICEABLE):
            reason = reason or f"holds a {type(module).__name__} ({name}) that surgery does not slice"
            continue
        items.append(GroupItem(name, module, _item_side(graph, module, dep.handler), list(map(int, idxs)), list(map(int, root_idxs))))
    bn_names = list(dict.fromkeys(it.module_name for it in items if isinstance(it.module, BN_TYPES)))
    producers = {it.module_name for it in items if it.side == OUT}
    shift_or_place = any(isinstance(it.module, (ChannelShift, ChannelPlacementShortcut)) and it.side != IN for it in items)
    if not bn_names and not reason:
        reason = "has no BatchNorm"
    name = bn_names[0] if bn_names else names.get(tp_group[0].dep.target.module, "?")
    return ChannelGroup(name, num_channels, bn_names, len(producers) > 1 or shift_or_place, not reason, reason, items)


def _cost_hooks(model: nn.Module, example_inputs: Any, names: dict[nn.Module, str], costs: dict[str, LayerCost]) -> list[Any]:
    """Forward hooks that record every conv/linear call's output positions into ``costs``."""
    batch = _as_input_tuple(example_inputs)[0].shape[0]

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


def _params_split(model: nn.Module, costs: dict[str, LayerCost]) -> tuple[dict[str, tuple[int, int]], int]:
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


def residual_blocks(model: nn.Module) -> dict[str, BlockInfo]:
    """The residual blocks whose branch pruning may remove: the model entry's rule, else none."""
    entry = entry_for(model)
    if entry is None or entry.residual_blocks is None:
        return {}
    return dict(entry.residual_blocks(model))


def prepare_for_pruning(model: nn.Module, example_inputs: Any) -> list[str]:
    """Run the model entry's pruning adapter on ``model`` (in place; e.g. the option-A shortcut
    becomes a placement shortcut). Returns what it replaced; nothing for unknown models."""
    entry = entry_for(model)
    if entry is None or entry.prepare_for_pruning is None:
        return []
    return list(entry.prepare_for_pruning(model, example_inputs) or [])


def analysed_copy(model: nn.Module, example_inputs: Any) -> "ModelAnalysis":
    """The analysis of a deep copy of ``model`` (adapted for pruning; ``model`` is unchanged)."""
    with restored_modes(model):
        work = copy.deepcopy(model)
        prepare_for_pruning(work, example_inputs)
        return analyze(work, example_inputs)


def _counted_pass(model: nn.Module, traced: dict[str, Any]) -> list[Any]:
    """Hooks that count the next forward pass of ``model`` (``polarprune.flops``) and keep its output."""
    counter = CostCounter()

    def start(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        counter.__enter__()
        traced["counter"] = counter

    def stop(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        counter.__exit__(None, None, None)
        traced.pop("counter")
        traced["output"] = output.detach() if isinstance(output, Tensor) else output
        traced["cost"] = counter.profile(module, _as_input_tuple(inputs)[0].shape[0])

    return [model.register_forward_pre_hook(start), model.register_forward_hook(stop)]


def finish_pruning(model: nn.Module) -> None:
    """Undo what the model entry's adapter changed only for the analysis (after surgery)."""
    entry = entry_for(model)
    if entry is not None and entry.finish_pruning is not None:
        entry.finish_pruning(model)


def analyze(model: nn.Module, example_inputs: Any, count: bool = False) -> ModelAnalysis:
    """Trace ``model`` once: its channel groups, who feeds whom, its residual blocks and its cost model.
    ``count``: that pass is also counted exactly and its output kept (``traced_cost`` / ``traced_output``)."""
    names = {m: n for n, m in model.named_modules()}
    costs: dict[str, LayerCost] = {}
    traced: dict[str, Any] = {}
    handles = _cost_hooks(model, example_inputs, names, costs) + (_counted_pass(model, traced) if count else [])
    try:
        graph = build_dependency_graph(model, example_inputs, handles)
    finally:
        if "counter" in traced:  # the forward pass failed inside the counter
            traced["counter"].__exit__(None, None, None)
    terminals = _terminal_modules(graph)
    groups = [_convert_group(graph, g, names, terminals) for g in graph.get_all_groups(root_module_types=CONV_TYPES + (nn.Linear,))]
    successors = {names[m]: [names.get(o.module, "") for o in node.outputs] for m, node in graph.module2node.items() if m in names}
    per_channel, other = _params_split(model, costs)
    return ModelAnalysis(model, groups, costs, names, successors, residual_blocks(model), traced.get("output"),
                         traced.get("cost"), per_channel, other)


def _kept(size: int, removed: dict[tuple[str, str], set[int]], name: str, side: str) -> int:
    """Channels of ``name`` left on ``side``: channel-wise (BOTH) removals count on every side."""
    gone = len(removed.get((name, BOTH), ()))
    return size - gone - (len(removed.get((name, side), ())) if side != BOTH else 0)


def estimate_macs(analysis: ModelAnalysis, removed: dict[tuple[str, str], set[int]], removed_modules: Iterable[str] = ()) -> int:
    """Per-image conv+linear MACs after removing ``removed[(module, side)]`` channel indices; ``removed_modules``
    (layers of removed residual branches) cost nothing."""
    gone = list(removed_modules)
    return sum(cost.macs(_kept(cost.in_channels, removed, name, IN), _kept(cost.out_channels, removed, name, OUT))
               for name, cost in analysis.layer_costs.items() if not deleted_with_block(name, gone))


def estimate_params(analysis: ModelAnalysis, removed: dict[tuple[str, str], set[int]], removed_blocks: Mapping[str, BlockInfo] | None = None) -> int:
    """Parameters left after the removals (without compensation's biases); a removed block's
    ``ShortcutOnlyBlock`` gains one shift per kept channel of its last BN."""
    blocks = dict(removed_blocks or {})
    gone = list(blocks)
    total = analysis.other_params
    for name, cost in analysis.layer_costs.items():
        if not deleted_with_block(name, gone):
            total += cost.params(_kept(cost.in_channels, removed, name, IN), _kept(cost.out_channels, removed, name, OUT))
    for name, (per, channels) in analysis.channel_params.items():
        if not deleted_with_block(name, gone):
            total += per * _kept(channels, removed, name, BOTH)
    for block in blocks.values():
        total += _kept(analysis.channel_params[block.last_bn][1], removed, block.last_bn, BOTH)
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


def deleted_with_block(name: str, removed_blocks: Sequence[str]) -> bool:
    """True for layers of a removed block's branch (its ``downsample`` shortcut stays)."""
    for block in removed_blocks:
        if name == block or name.startswith(block + "."):
            return not (name == f"{block}.downsample" or name.startswith(f"{block}.downsample."))
    return False


__all__ = ["analysed_copy", "GroupItem", "ChannelGroup", "ModelAnalysis", "LayerCost", "analyze", "estimate_macs",
           "estimate_params", "channel_macs", "residual_blocks", "prepare_for_pruning", "finish_pruning",
           "build_dependency_graph", "is_depthwise", "is_grouped", "run_model", "deleted_with_block", "OUT", "IN",
           "BOTH"]
