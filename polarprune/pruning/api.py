"""The pruning entry points: ``prune_model``, ``plan_pruning``, ``channel_groups``, ``prunable_bn_names``.

Every entry point works the same way: adapt a copy of the model for the analysis (the model
entry's ``prepare_for_pruning``, e.g. the option-A shortcut), analyse it once
(``graph.analyze``), decide (``resolve.decide``) and, for ``prune_model``, fold constants and
slice. ``trial.TrialAnalysis`` reuses the same analysis for every epoch of a training run.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..flops import CostProfile, counted_forward
from ..models.entry import pruning_entry
from ..models.inputs import record_input_shape
from ..modes import restored_modes
from .base import as_input_tuple, deleted_with_block, max_abs_diff
from .budget import Budget, Guard, guarded
from .cost import MACS, CostModel
from .compensation import CompensationResult, apply_adjustments, compensate as fold_constants
from .graph import (ChannelGroup, ModelAnalysis, analysed_copy, analyze, finish_pruning, live_keep, prepare_for_pruning,
                    traced_inputs)
from .options import PruneOptions, parse_options
from .plan import make_plan, unpruned_view
from .report import GroupRow, PruneReport, build_report
from .resolve import Decision, decide
from .scatter import original_accounting, prune_scatter
from .surgery import apply_decision, set_block_shifts


class Timer:
    """Seconds spent per step (``with timer("decide"): ...`` adds to ``seconds["decide"]``); with a
    budget ``guard``, each step is also the stage the guard names when the budget runs out."""

    def __init__(self, guard: Guard | None = None) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.guard = guard

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            if self.guard is None:
                yield
            else:
                with self.guard.step(step):
                    yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - tick

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.start}


def model_label(model: nn.Module) -> str:
    """The model's name for messages: its family name from the spec, else its class name."""
    spec = getattr(model, "polarprune_spec", None)
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else type(model).__name__


def plan_pruning(model: nn.Module, example_inputs: Any, strategy: str | None = None, *,
                 options: PruneOptions | None = None, budget: Budget | None = None, **fields: Any) -> dict[str, Tensor]:
    """The keep mask of every BN of a prunable group after group resolution (what ``prune_model`` would
    keep); the model is unchanged."""
    opts = parse_options(strategy, options, **fields)
    with guarded(model, budget, model_label(model)) as guard:
        with guard.step("graph"):
            analysis = analysed_copy(model, example_inputs)
        with guard.step("decide"):
            return live_keep(model, analysis, decide(analysis, options=opts).bn_keep)


def channel_groups(model: nn.Module, example_inputs: Any, *, budget: Budget | None = None) -> list[ChannelGroup]:
    """Every channel group of the model (``.prunable`` False with ``.reason`` for whole ones)."""
    with guarded(model, budget, model_label(model)) as guard, guard.step("graph"):
        return analysed_copy(model, example_inputs).groups


def prunable_bn_names(model: nn.Module, example_inputs: Any, *, budget: Budget | None = None) -> list[str]:
    """Names of the BNs in prunable groups, in model order."""
    entry = pruning_entry(model)
    names = {entry.live(bn) for g in channel_groups(model, example_inputs, budget=budget) if g.prunable for bn in g.bn_names}
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


def paper_accounting(model: nn.Module, example_inputs: Any, opts: PruneOptions, decision: Decision,
                     analysis: ModelAnalysis, notes: list[str]) -> int | None:
    """The original code's (scatter) accounting of the same per-BN choice, only where the model's family
    declares it wants it (``ModelEntry.paper_accounting``); None elsewhere or when it is not defined."""
    if not pruning_entry(model).paper_accounting:
        return None
    accounting, why = original_accounting(model, example_inputs, opts, decision.threshold, analysis.layer_shapes())
    if why:
        notes.append(f"original accounting: {why}")
    return accounting


def _compensate_and_slice(work: nn.Module, analysis: ModelAnalysis, decision: Decision, opts: PruneOptions,
                          example_inputs: Any, timer: Timer) -> tuple[CompensationResult | None, float | None]:
    """Fold the removed channels' constants (when asked), slice, then apply the folded adjustments;
    the output difference without compensation when it differs from the final one."""
    with timer("compensation"):
        folded = fold_constants(work, analysis, decision, example_inputs) if opts.compensate and decision.removed else None
    with timer("surgery"):
        apply_decision(work, decision)
    uncompensated: float | None = None
    if folded is not None:
        with timer("compensation"):
            if folded.changes_outputs:  # else the uncompensated model is this one: one output check serves both
                with torch.no_grad():
                    uncompensated = max_abs_diff(analysis.traced_output, work(*as_input_tuple(example_inputs)))
            apply_adjustments(work, decision, folded.adjustments)
            set_block_shifts(work, decision, folded.block_shifts)
    return folded, uncompensated


def _prune_grouped(model: nn.Module, example_inputs: Any, opts: PruneOptions, inplace: bool,
                   timer: Timer, cost: CostModel = MACS, widths: CostModel | None = None) -> tuple[nn.Module, PruneReport]:
    """``prune_model`` for ``residual: group`` (the model in eval mode, modes restored by the caller)."""
    with timer("graph"):
        work = model if inplace else copy.deepcopy(model)
        prepare_for_pruning(work, example_inputs)
        work.eval()
        traced = traced_inputs(work, example_inputs)  # what the (adapted) model is traced with
        analysis = analyze(work, traced, count=True)  # one pass: groups, costs, the reference output
    before: CostProfile = analysis.traced_cost  # type: ignore[assignment]
    with timer("decide"):
        decision = decide(analysis, options=opts, cost=cost, widths=widths)
    notes = list(decision.notes) + [f"left whole: {what}" for what in pruning_entry(model).kept_whole]
    with timer("accounting"):
        accounting = paper_accounting(model, example_inputs, opts, decision, analysis, notes)
    folded, uncompensated = _compensate_and_slice(work, analysis, decision, opts, traced, timer)
    notes += folded.notes if folded is not None else []
    with timer("report"):
        output, after = counted_forward(work, as_input_tuple(traced))  # the traced form, as the analysis saw it
        diff = max_abs_diff(analysis.traced_output, output)
        finish_pruning(work)
    if folded is not None and not folded.changes_outputs:
        uncompensated = diff
    return work, build_report(opts, group_rows(analysis, decision), before, after, diff, threshold=decision.threshold,
                              max_abs_output_diff_uncompensated=uncompensated, compensated=opts.compensate,
                              removed_blocks=sorted(decision.removed_blocks), notes=notes, macs_original_accounting=accounting)


def prune_model(model: nn.Module, example_inputs: Any, strategy: str | None = None, *, inplace: bool = False,
                options: PruneOptions | None = None, cost: CostModel = MACS, widths: CostModel | None = None,
                budget: Budget | None = None,
                **fields: Any) -> tuple[nn.Module, PruneReport]:
    """Remove channels for real and return ``(pruned model, report)``.

    Options are ``PruneOptions`` fields (keywords and/or ``options``). ``inplace=False`` prunes a deep
    copy; the layers' modes are restored and the pruned model has the same. ``example_inputs`` is what
    the graph is traced with and the report's output difference is measured on. ``cost``: the cost model
    a search aims with (``latency-target`` needs a ``LatencyCost``: ``polarprune.deploy.prune_to_latency``).
    ``widths``: the cost model whose ``steps`` ``round_to: auto`` snaps kept widths up to; without it every
    width pays and auto keeps the exact counts (``polarprune.prune_model``, the prune command and the
    recipes pass the runtime's ``LatencyCost``).
    ``budget``: the time and memory the call may use (``pruning.budget``; default ``DEFAULT_BUDGET``).
    """
    opts = parse_options(strategy, options, **fields)
    base_view = unpruned_view(model, (getattr(model, "polarprune_spec", None) or {}).get("plan"))
    if opts.residual == "scatter":
        work, report = prune_scatter(model, example_inputs, options=opts, inplace=inplace)
    else:
        known = {id(module) for module in model.modules()}
        with guarded(model, budget, model_label(model)) as guard, restored_modes(model):
            timer = Timer(guard)
            model.eval()
            work, report = _prune_grouped(model, example_inputs, opts, inplace, timer, cost, widths)
        for module in work.modules():
            if id(module) not in known:  # the copy (or new layers): the model's mode
                module.training = model.training
        report.seconds = timer.total()
    _attach_plan(work, base_view)
    _record_traced_input(work, example_inputs)
    return work, report


def _record_traced_input(pruned: nn.Module, example_inputs: Any) -> None:
    """An image model's spec records the ``(C, H, W)`` it was pruned at, so its file says what it takes."""
    first = as_input_tuple(example_inputs)[0]
    if isinstance(first, Tensor) and first.dim() == 4:
        record_input_shape(pruned, first.shape[1:])


__all__ = ["max_abs_diff", "Timer", "model_label", "paper_accounting", "prune_model", "plan_pruning", "channel_groups", "prunable_bn_names", "analysed_copy", "group_rows"]
