"""Channel groups from Torch-Pruning's dependency graph, and the analysis decisions read.

polarprune only *reads* Torch-Pruning's groups (layers sharing channels); decisions and surgery are
its own, so all groups are resolved at once in the original coordinates (concatenations shift indices
when groups are pruned one by one). A group is left whole when it reaches the model output, holds a
layer the surgery cannot slice, or has no BN. The cost of a decision is ``cost.py``'s; what a model
family adds (residual blocks, adapters) is its ``ModelEntry``'s.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..conv_links import LayerShape
from ..errors import PolarpruneError
from ..flops import CostCounter, CostProfile
from ..modes import inference, restored_modes
from ..models.entry import pruning_entry
from ..models.layers import BlockInfo, ChannelShuffle
from .base import (BN_TYPES, BOTH, CONV_TYPES, IN, OUT, SLICEABLE, as_input_tuple, deleted_with_block, is_depthwise,
                   is_grouped)
from .cost import LayerCost, cost_hooks, params_split
from .cost import channel_macs, estimate_macs, estimate_params  # noqa: F401  (their old home: re-exported for readers)
from .modules import ChannelPlacementShortcut, ChannelShift, torch_pruning_pruners, whole_layer_pruner

_as_input_tuple = as_input_tuple  # the old private name


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


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """``model(*example_inputs)`` for a tensor or a tuple of tensors."""
    return model(*as_input_tuple(example_inputs))


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

    pruners, handles = _with_whole_layers(model, torch_pruning_pruners(), list(handles))
    try:
        with restored_modes(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=as_input_tuple(example_inputs),
                                                          customized_pruners=pruners, verbose=False)
    except PolarpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing failures are reported as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"cannot trace {type(model).__name__} for pruning: {first}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return graph


def _with_whole_layers(model: nn.Module, pruners: dict[type, Any], handles: list[Any]) -> tuple[dict[type, Any], list[Any]]:
    """``pruners`` plus a leaf pruner for each of the model entry's whole-layer classes, and ``handles``
    plus the hooks that record those layers' widths in the tracing pass (the pruners read them)."""
    widths: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        widths[module] = (int(as_input_tuple(inputs)[0].shape[1]), int(output.shape[1]))

    for cls, _ in pruning_entry(model).whole_layers:
        pruners[cls] = whole_layer_pruner(cls, widths)
        handles += [m.register_forward_hook(record) for m in model.modules() if isinstance(m, cls)]
    return pruners, handles


def _whole_reason(module: nn.Module, name: str, whole: Sequence[tuple[type, str]]) -> str:
    """Why a group through ``module`` stays whole, when its class is one the model entry keeps whole."""
    return next((f"passes {name} ({type(module).__name__}: {why})" for cls, why in whole if isinstance(module, cls)), "")


def _item_side(graph: Any, module: nn.Module, handler: Any) -> str:
    pruner = graph.get_pruner_of_module(module)
    if pruner is None or pruner.prune_out_channels == pruner.prune_in_channels:
        return BOTH
    return OUT if handler == pruner.prune_out_channels else IN


def _terminal_modules(graph: Any) -> set[Any]:
    """Graph nodes whose output is a model output (no successors)."""
    return {module for module, node in graph.module2node.items() if not node.outputs}


def _convert_group(graph: Any, tp_group: Any, names: dict[Any, str], terminals: set[Any],
                   whole: Sequence[tuple[type, str]] = ()) -> ChannelGroup:
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
        if _whole_reason(module, name, whole):
            reason = reason or _whole_reason(module, name, whole)
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


def live_keep(model: nn.Module, analysis: ModelAnalysis, keep: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep masks of the analysed (prepared) copy under the model's own BN names: a BN the family's
    adapter split in parts (YOLO's split convs) gets its parts' masks joined in model order."""
    entry = pruning_entry(model)
    parts: dict[str, list[Tensor]] = {}
    for name, _ in analysis.model.named_modules():
        if name in keep:
            parts.setdefault(entry.live(name), []).append(keep[name])
    return {name: masks[0] if len(masks) == 1 else torch.cat(masks) for name, masks in parts.items()}


def residual_blocks(model: nn.Module) -> dict[str, BlockInfo]:
    """The residual blocks whose branch pruning may remove: the model entry's rule, else none."""
    return pruning_entry(model).blocks(model)


def prepare_for_pruning(model: nn.Module, example_inputs: Any) -> list[str]:
    """Run the model entry's pruning adapter on ``model`` (in place); what it replaced."""
    return pruning_entry(model).prepare(model, example_inputs)


def finish_pruning(model: nn.Module) -> None:
    """Undo what the model entry's adapter changed only for the analysis (after surgery)."""
    pruning_entry(model).finish(model)


def traced_inputs(model: nn.Module, example_inputs: Any) -> Any:
    """What the model (adapted by ``prepare_for_pruning``) is traced with: the model entry's conversion of
    ``example_inputs`` (a detector's list of images becomes its transformed batch), else them unchanged."""
    return pruning_entry(model).trace_inputs(model, example_inputs)


def analysed_copy(model: nn.Module, example_inputs: Any) -> "ModelAnalysis":
    """The analysis of a deep copy of ``model`` (adapted for pruning; ``model`` is unchanged)."""
    with restored_modes(model):
        work = copy.deepcopy(model)
        prepare_for_pruning(work, example_inputs)
        return analyze(work, traced_inputs(work, example_inputs))


def detached(value: Any) -> Any:
    """``value`` with every tensor in it (in tuples, lists and dicts) detached."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, detached(v)) for k, v in value.items())
    return value


def _counted_pass(model: nn.Module, traced: dict[str, Any]) -> list[Any]:
    """Hooks that count the next forward pass of ``model`` (``polarprune.flops``) and keep its output."""
    counter = CostCounter()

    def start(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        counter.__enter__()
        traced["counter"] = counter

    def stop(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        counter.__exit__(None, None, None)
        traced.pop("counter")
        traced["output"] = detached(output)  # traced with grad on: a dict or tuple output must not keep the graph
        traced["cost"] = counter.profile(module, as_input_tuple(inputs)[0].shape[0])

    return [model.register_forward_pre_hook(start), model.register_forward_hook(stop)]


def analyze(model: nn.Module, example_inputs: Any, count: bool = False) -> ModelAnalysis:
    """Trace ``model`` once: its channel groups, who feeds whom, its residual blocks and its cost model.
    ``count``: that pass is also counted exactly and its output kept (``traced_cost`` / ``traced_output``)."""
    names = {m: n for n, m in model.named_modules()}
    costs: dict[str, LayerCost] = {}
    traced: dict[str, Any] = {}
    handles = cost_hooks(model, example_inputs, names, costs) + (_counted_pass(model, traced) if count else [])
    try:
        graph = build_dependency_graph(model, example_inputs, handles)
    finally:
        if "counter" in traced:  # the forward pass failed inside the counter
            traced["counter"].__exit__(None, None, None)
    terminals = _terminal_modules(graph)
    whole = pruning_entry(model).whole_layers
    groups = [_convert_group(graph, g, names, terminals, whole) for g in graph.get_all_groups(root_module_types=CONV_TYPES + (nn.Linear,))]
    successors = {names[m]: [names.get(o.module, "") for o in node.outputs] for m, node in graph.module2node.items() if m in names}
    per_channel, other = params_split(model, costs)
    return ModelAnalysis(model, groups, costs, names, successors, residual_blocks(model), traced.get("output"),
                         traced.get("cost"), per_channel, other)


__all__ = ["analysed_copy", "live_keep", "GroupItem", "ChannelGroup", "ModelAnalysis", "LayerCost", "analyze", "estimate_macs",
           "estimate_params", "channel_macs", "residual_blocks", "prepare_for_pruning", "finish_pruning", "traced_inputs",
           "build_dependency_graph", "is_depthwise", "is_grouped", "run_model", "deleted_with_block", "OUT", "IN",
           "BOTH"]
