"""Physical channel pruning: strategies (which channels), dependency groups, surgery, compensation.

Public API:

- ``prune_model(model, example_inputs, strategy, ...) -> (pruned, PruneReport)``: prunes a deep
  copy (``inplace=False``, the default) or the model itself; the pruned model's
  ``polarprune_spec`` gains a ``"plan"`` so ``serialization.save/load`` can rebuild it;
- ``plan_pruning(...) -> dict[BN name, keep mask]``: what ``prune_model`` would keep, per BN;
- ``prunable_bn_names(model, example_inputs)``, ``channel_groups(model, example_inputs)``;
- ``select_channels`` / ``grad_threshold``: the pure strategies.

See docs/pruning.md for the rules.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..modes import restored_modes
from .graph import ChannelGroup, ModelAnalysis, analyze, run_model
from .report import GroupRow, PruneReport
from .resolve import ALL_STRATEGIES, GROUP_RULES, Decision, decide, search_threshold
from .strategies import STRATEGIES, SelectionResult, grad_threshold, select_channels


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


def _decision(
    analysis: ModelAnalysis,
    strategy: str,
    *,
    threshold: float,
    percent: float | None,
    ratio: float | Mapping[str, float] | None,
    target_macs_reduction: float | None,
    masks: Mapping[str, Tensor] | None,
    bn_names: Sequence[str] | None,
    group_rule: str,
    min_channels: int,
    remove_empty_blocks: bool,
    round_to: int,
    seed: int,
) -> tuple[Decision, float | None]:
    if strategy not in ALL_STRATEGIES:
        raise PolarpruneError(f"unknown pruning strategy {strategy!r}; choose one of {', '.join(ALL_STRATEGIES)}")
    common = dict(bn_names=bn_names, group_rule=group_rule, min_channels=min_channels, remove_empty_blocks=remove_empty_blocks,
                  round_to=round_to, seed=seed)
    if strategy == "flops-target":
        if target_macs_reduction is None:
            raise PolarpruneError("strategy 'flops-target' needs target_macs_reduction in (0, 1)")
        found, decision = search_threshold(analysis, float(target_macs_reduction), **common)  # type: ignore[arg-type]
        return decision, found
    decision = decide(analysis, strategy, threshold=threshold, percent=percent, ratio=ratio, masks=masks, **common)  # type: ignore[arg-type]
    return decision, None


def _prepare(model: nn.Module, example_inputs: Any, inplace: bool) -> nn.Module:
    from .surgery import replace_pad_shortcuts

    work = model if inplace else copy.deepcopy(model)
    replace_pad_shortcuts(work, example_inputs)
    return work


def plan_pruning(
    model: nn.Module,
    example_inputs: Any,
    strategy: str = "fixed",
    *,
    threshold: float = 0.01,
    percent: float | None = None,
    ratio: float | Mapping[str, float] | None = None,
    target_macs_reduction: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    bn_names: Sequence[str] | None = None,
    group_rule: str = "any",
    min_channels: int = 1,
    remove_empty_blocks: bool = True,
    round_to: int = 1,
    compensate: bool = True,
    inplace: bool = False,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The keep mask of every BN of a prunable group after group resolution (what
    ``prune_model`` would keep; BNs of removed branches are all False). The model is unchanged."""
    with restored_modes(model):
        work = _prepare(model, example_inputs, inplace=False)
        analysis = analyze(work, example_inputs)
        decision, _ = _decision(
            analysis, strategy, threshold=threshold, percent=percent, ratio=ratio, target_macs_reduction=target_macs_reduction,
            masks=masks, bn_names=bn_names, group_rule=group_rule, min_channels=min_channels,
            remove_empty_blocks=remove_empty_blocks, round_to=round_to, seed=seed,
        )
    return decision.bn_keep


def channel_groups(model: nn.Module, example_inputs: Any) -> list[ChannelGroup]:
    """Every channel group of the model (``.prunable`` False with ``.reason`` for whole ones)."""
    with restored_modes(model):
        return analyze(_prepare(model, example_inputs, inplace=False), example_inputs).groups


def prunable_bn_names(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the BNs in prunable groups, in model order."""
    names = {bn for g in channel_groups(model, example_inputs) if g.prunable for bn in g.bn_names}
    return [n for n, _ in model.named_modules() if n in names]


def _rows(analysis: ModelAnalysis, decision: Decision, strategy: str) -> list[GroupRow]:
    from .graph import deleted_with_block

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


def _attach_plan(pruned: nn.Module, notes: list[str]) -> None:
    spec = getattr(pruned, "polarprune_spec", None)
    if not isinstance(spec, dict):
        notes.append("the model has no polarprune_spec: the pruned model cannot be saved with polarprune.serialization")
        return
    from ..serialization import build_model
    from .plan import make_plan

    base = build_model({**spec, "plan": None})
    pruned.polarprune_spec = {**spec, "plan": make_plan(pruned, base)}  # type: ignore[assignment]


def prune_model(
    model: nn.Module,
    example_inputs: Any,
    strategy: str = "fixed",
    *,
    threshold: float = 0.01,
    percent: float | None = None,
    ratio: float | Mapping[str, float] | None = None,
    target_macs_reduction: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    bn_names: Sequence[str] | None = None,
    group_rule: str = "any",
    min_channels: int = 1,
    remove_empty_blocks: bool = True,
    round_to: int = 1,
    compensate: bool = True,
    inplace: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, PruneReport]:
    """Remove channels for real and return ``(pruned model, report)``.

    ``inplace=False`` prunes a deep copy and leaves ``model`` untouched; ``inplace=True``
    changes ``model`` itself (and returns it). The model runs in eval mode for the probes; the
    modes of its layers are restored, and the pruned model has the same modes.
    ``example_inputs`` (a tensor or a tuple) is what the graph is traced with and what the
    output difference in the report is measured on. ``round_to`` > 1 rounds every group's kept
    count to a multiple of it (up for threshold strategies, to the nearest for ratio ones) so
    widths suit SIMD blocking (oneDNN uses blocks of 8 or 16 channels).
    """
    from ..flops import count_model
    from .compensation import compensate as fold_constants
    from .surgery import apply_decision

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    known = {id(module) for module in model.modules()}
    first_input = _first_tensor(example_inputs)
    with restored_modes(model):
        model.eval()
        with torch.no_grad():
            reference = run_model(model, example_inputs)
        cost_before = count_model(model, first_input)
        seconds["probe"] = time.perf_counter() - start

        tick = time.perf_counter()
        work = _prepare(model, example_inputs, inplace)
        work.eval()
        analysis = analyze(work, example_inputs)
        seconds["graph"] = time.perf_counter() - tick

        tick = time.perf_counter()
        decision, found = _decision(
            analysis, strategy, threshold=threshold, percent=percent, ratio=ratio, target_macs_reduction=target_macs_reduction,
            masks=masks, bn_names=bn_names, group_rule=group_rule, min_channels=min_channels,
            remove_empty_blocks=remove_empty_blocks, round_to=round_to, seed=seed,
        )
        seconds["decide"] = time.perf_counter() - tick
        notes = list(decision.notes)

        uncompensated_diff: float | None = None
        tick = time.perf_counter()
        if compensate and decision.removed:
            plain = copy.deepcopy(work)
            apply_decision(plain, decision)
            with torch.no_grad():
                uncompensated_diff = _max_abs_diff(reference, run_model(plain, example_inputs))
            del plain
            folded = fold_constants(work, analysis, decision, example_inputs)
            notes += folded.notes
            block_shifts = folded.block_shifts
        else:
            block_shifts = None
        seconds["compensation"] = time.perf_counter() - tick

        tick = time.perf_counter()
        apply_decision(work, decision, block_shifts)
        seconds["surgery"] = time.perf_counter() - tick

        tick = time.perf_counter()
        with torch.no_grad():
            output = run_model(work, example_inputs)
        diff = _max_abs_diff(reference, output)
        cost_after = count_model(work, first_input)
        _attach_plan(work, notes)
        seconds["report"] = time.perf_counter() - tick
    for module in work.modules():
        if id(module) not in known:  # the copy (or new layers): the model's mode
            module.training = model.training
    options: dict[str, Any] = {
        "threshold": found if found is not None else threshold, "percent": percent,
        "ratio": dict(ratio) if isinstance(ratio, Mapping) else ratio,
        "target_macs_reduction": target_macs_reduction, "masks": sorted(masks) if masks else None,
        "bn_names": list(bn_names) if bn_names is not None else None, "group_rule": group_rule,
        "min_channels": min_channels, "remove_empty_blocks": remove_empty_blocks, "round_to": round_to,
        "compensate": compensate, "seed": seed,
    }
    seconds["total"] = time.perf_counter() - start
    report = PruneReport(
        strategy=strategy, options=options, rows=_rows(analysis, decision, strategy),
        macs_before=cost_before.macs, macs_after=cost_after.macs, flops_before=cost_before.flops,
        flops_after=cost_after.flops, params_before=cost_before.params, params_after=cost_after.params,
        max_abs_output_diff=diff, max_abs_output_diff_uncompensated=uncompensated_diff,
        compensated=bool(compensate), removed_blocks=sorted(decision.removed_blocks), notes=notes, seconds=seconds,
    )
    return work, report


__all__ = [
    "prune_model",
    "plan_pruning",
    "prunable_bn_names",
    "channel_groups",
    "ChannelGroup",
    "PruneReport",
    "GroupRow",
    "STRATEGIES",
    "ALL_STRATEGIES",
    "GROUP_RULES",
    "SelectionResult",
    "grad_threshold",
    "select_channels",
]
