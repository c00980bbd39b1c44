"""The pruning entry points: ``prune_model``, ``plan_pruning``, ``channel_groups``, ``prunable_bn_names``.

Every entry point works the same way: adapt a copy of the model for the analysis (the model
entry's ``prepare_for_pruning``, e.g. the option-A shortcut), analyse it once
(``graph.analyze``), decide (``resolve.decide``) and, for ``prune_model``, fold constants and
slice. ``trial.TrialAnalysis`` reuses the same analysis for every epoch of a training run.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..flops import counted_forward
from ..modes import restored_modes
from .compensation import apply_adjustments, compensate as fold_constants
from .graph import ChannelGroup, ModelAnalysis, _as_input_tuple, analysed_copy, analyze, deleted_with_block, finish_pruning, prepare_for_pruning
from .options import PruneOptions, parse_options
from .plan import make_plan, unpruned_view
from .report import GroupRow, PruneReport
from .resolve import Decision, decide
from .scatter import original_accounting, prune_scatter
from .surgery import apply_decision, set_block_shifts


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict) and value:
        return _first_tensor(next(iter(value.values())))
    raise PolarpruneError(f"cannot compare model outputs of type {type(value).__name__}")


def _max_abs_diff(a: Any, b: Any) -> float:
    x, y = _first_tensor(a), _first_tensor(b)
    if x.shape != y.shape:
        raise PolarpruneError(f"pruned model output shape {tuple(y.shape)} differs from the original {tuple(x.shape)}")
    return float((x.float() - y.float()).abs().max()) if x.numel() else 0.0


def plan_pruning(model: nn.Module, example_inputs: Any, strategy: str | None = None, *,
                 options: PruneOptions | None = None, **fields: Any) -> dict[str, Tensor]:
    """The keep mask of every BN of a prunable group after group resolution (what ``prune_model`` would
    keep); the model is unchanged."""
    opts = parse_options(strategy, options, **fields)
    return decide(analysed_copy(model, example_inputs), options=opts).bn_keep


def channel_groups(model: nn.Module, example_inputs: Any) -> list[ChannelGroup]:
    """Every channel group of the model (``.prunable`` False with ``.reason`` for whole ones)."""
    return analysed_copy(model, example_inputs).groups


def prunable_bn_names(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the BNs in prunable groups, in model order."""
    names = {bn for g in channel_groups(model, example_inputs) if g.prunable for bn in g.bn_names}
    return [n for n, _ in model.named_modules() if n in names]


def group_rows(analysis: ModelAnalysis, decision: Decision) -> list[GroupRow]:
    """One report row per prunable group: channels before/after and the threshold(s) used."""
    rows = []
    gone = list(decision.removed_blocks)
    order = {name: i for i, name in enumerate(n for n, _ in analysis.model.named_modules())}
    for group in sorted(analysis.prunable_groups(), key=lambda g: order.get(g.name, len(order))):
        keep = decision.group_keep.get(group.name)
        after = group.num_channels if keep is None else int(keep.sum())
        if gone and all(deleted_with_block(item.module_name, gone) for item in group.items):
            after = 0  # the group lived inside removed residual branches
        if group.name in decision.thresholds:
            threshold: float | dict[str, float] | None = decision.thresholds[group.name]
        else:
            values = {bn: decision.thresholds[bn] for bn in group.bn_names if bn in decision.thresholds}
            distinct = set(values.values())
            threshold = None if not values else (distinct.pop() if len(distinct) == 1 else values)
        rows.append(GroupRow(group.name, list(group.bn_names), group.residual, group.num_channels, after, threshold))
    return rows


def _attach_plan(pruned: nn.Module, base_view: dict[str, Any]) -> None:
    """Record in ``polarprune_spec["plan"]`` how the unpruned architecture becomes ``pruned``'s."""
    spec = getattr(pruned, "polarprune_spec", None)
    if not isinstance(spec, dict):
        return  # a model without a spec: serialization.save records the shape of every layer instead
    pruned.polarprune_spec = {**spec, "plan": make_plan(pruned, base_view)}  # type: ignore[assignment]


def prune_model(model: nn.Module, example_inputs: Any, strategy: str | None = None, *, inplace: bool = False,
                options: PruneOptions | None = None, **fields: Any) -> tuple[nn.Module, PruneReport]:
    """Remove channels for real and return ``(pruned model, report)``.

    Options are ``PruneOptions`` fields (keywords and/or ``options``). ``inplace=False`` prunes a deep
    copy; the layers' modes are restored and the pruned model has the same. ``example_inputs`` is what
    the graph is traced with and the report's output difference is measured on.
    """
    opts = parse_options(strategy, options, **fields)
    if opts.residual == "scatter":
        base_view = unpruned_view(model, (getattr(model, "polarprune_spec", None) or {}).get("plan"))
        scattered, report = prune_scatter(model, example_inputs, options=opts, inplace=inplace)
        _attach_plan(scattered, base_view)
        report.macs_original_accounting = report.macs_after
        return scattered, report
    inputs = _as_input_tuple(example_inputs)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    known = {id(module) for module in model.modules()}
    with restored_modes(model):
        model.eval()
        base_view = unpruned_view(model, (getattr(model, "polarprune_spec", None) or {}).get("plan"))
        work = model if inplace else copy.deepcopy(model)
        notes: list[str] = []
        prepare_for_pruning(work, example_inputs)
        work.eval()
        analysis = analyze(work, example_inputs, count=True)  # one pass: groups, costs, the reference output
        reference, before = analysis.traced_output, analysis.traced_cost
        assert before is not None
        seconds["graph"] = time.perf_counter() - start

        tick = time.perf_counter()
        decision = decide(analysis, options=opts)
        seconds["decide"] = time.perf_counter() - tick
        notes += decision.notes
        tick = time.perf_counter()
        accounting, why = original_accounting(model, example_inputs, opts, decision.threshold, analysis.layer_shapes())
        if why:
            notes.append(f"original accounting: {why}")
        seconds["accounting"] = time.perf_counter() - tick

        tick = time.perf_counter()
        folded = fold_constants(work, analysis, decision, example_inputs) if opts.compensate and decision.removed else None
        seconds["compensation"] = time.perf_counter() - tick

        tick = time.perf_counter()
        apply_decision(work, decision)
        seconds["surgery"] = time.perf_counter() - tick

        uncompensated_diff: float | None = None
        if folded is not None:
            tick = time.perf_counter()
            if folded.changes_outputs:  # else the uncompensated model is this one: one output check serves both
                with torch.no_grad():
                    uncompensated_diff = _max_abs_diff(reference, work(*inputs))
            apply_adjustments(work, decision, folded.adjustments)
            set_block_shifts(work, decision, folded.block_shifts)
            notes += folded.notes
            seconds["compensation"] += time.perf_counter() - tick

        tick = time.perf_counter()
        finish_pruning(work)
        output, after = counted_forward(work, inputs)
        diff = _max_abs_diff(reference, output)
        if folded is not None and not folded.changes_outputs:
            uncompensated_diff = diff
        _attach_plan(work, base_view)
        seconds["report"] = time.perf_counter() - tick
    for module in work.modules():
        if id(module) not in known:  # the copy (or new layers): the model's mode
            module.training = model.training
    recorded = opts.model_dump(exclude={"masks", "bn_include", "bn_exclude"})
    recorded.update(threshold=decision.threshold if decision.threshold is not None else opts.threshold,
                    masks=sorted(opts.masks) if opts.masks else None)
    seconds["total"] = time.perf_counter() - start
    return work, PruneReport(
        strategy=opts.strategy, options=recorded, rows=group_rows(analysis, decision),
        macs_before=before.cost.macs, macs_after=after.cost.macs, flops_before=before.cost.flops,
        flops_after=after.cost.flops, params_before=before.cost.params, params_after=after.cost.params,
        max_abs_output_diff=diff, max_abs_output_diff_uncompensated=uncompensated_diff, compensated=opts.compensate,
        removed_blocks=sorted(decision.removed_blocks), notes=notes, seconds=seconds, macs_original_accounting=accounting)


__all__ = ["prune_model", "plan_pruning", "channel_groups", "prunable_bn_names", "analysed_copy", "group_rows"]
