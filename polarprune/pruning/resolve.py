"""Decisions: from per-channel scores to the channels every layer loses.

A strategy's record (``registry.STRATEGIES``) says how it decides: per BN (``grad``, ``fixed``,
``percent``), from the user's masks (``mask``), per group on its aggregated score (``uniform``,
``l1-norm``, ``random``) or by a search (``flops-target``). A group's channel is kept according to the
group rule (``registry.GROUP_RULES``) over its *scored* BNs:

- ``any`` (default): kept if any scored BN keeps it (removal is exact when every BN of the
  group has gamma = beta = 0 there);
- ``all``: kept only if every scored BN keeps it;
- ``mean``: kept if at least half of the scored BNs keep it (majority vote);
- ``masksparsity``: MaskSparsity's relaxing vote (``votes.py``).

Ratio strategies aggregate with the same rule (max, min, mean). A block-inner group that loses every
channel removes its residual branch when ``remove_empty_blocks``; otherwise every group keeps
``min_channels``. Grouped (not depthwise) convs keep the same count in every conv group (threshold
strategies: the largest count, so nothing the rule keeps goes; ratio strategies: the mean).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..models.entry import pruning_entry
from ..models.layers import BlockInfo, gamma_magnitude
from .base import BN_TYPES, BOTH, IN, OUT, Removals, deleted_with_block, is_grouped
from .cost import MACS, CostModel, estimate_macs, estimate_params
from .graph import ChannelGroup, ModelAnalysis
from .modules import ChannelPlacementShortcut
from .options import GROUP_RULES, STRATEGIES, PruneOptions, parse_options
from .registry import Strategy
from .search import bisect_knob
from .strategies import keep_at_least, select_channels

ALL_STRATEGIES = STRATEGIES  # the old name (one registry: every strategy)


@dataclass
class Decision:
    """What a pruning will do, in the original model's coordinates; ``estimated_cost``: the cost model's."""

    group_keep: dict[str, Tensor]
    removed: Removals
    removed_blocks: dict[str, BlockInfo]
    bn_keep: dict[str, Tensor]
    thresholds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    estimated_macs: int = 0
    estimated_macs_before: int = 0
    estimated_params: int = 0
    estimated_params_before: int = 0
    threshold: float | None = None  # the threshold flops-target found
    estimated_cost: float = 0.0
    estimated_cost_before: float = 0.0

    @property
    def macs_ratio(self) -> float:
        """Estimated MACs after / before (the per-channel cost model; exact for conv/linear MACs)."""
        return self.estimated_macs / max(1, self.estimated_macs_before)

    @property
    def params_ratio(self) -> float:
        """Estimated parameters after / before (without biases compensation may add)."""
        return self.estimated_params / max(1, self.estimated_params_before)

    @property
    def cost_ratio(self) -> float:
        """Cost after / before under the decision's cost model (``MacsCost``: the MACs ratio)."""
        return self.estimated_cost / self.estimated_cost_before if self.estimated_cost_before > 0 else 1.0


def bn_scores(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """``|gamma|`` of each named BN (float32, CPU)."""
    scores = {}
    for name in names:
        try:
            scores[name] = gamma_magnitude(model.get_submodule(name))
        except ValueError:
            raise PolarpruneError(f"BatchNorm {name!r} has no affine weight (gamma) to score") from None
    return scores


# a group rule's aggregate -> how the values landing on one group channel combine
_REDUCTIONS = {"max": ("amax", -math.inf), "min": ("amin", math.inf)}


def _aggregate(values: list[Tensor], roots: list[Tensor], size: int, how: str) -> Tensor:
    """Per group channel: the max, min or mean (``how``) of the values landing on it; +inf where none does."""
    if not values:
        return torch.full((size,), math.inf)
    value, root = torch.cat(values).double(), torch.cat(roots)
    count = torch.zeros(size, dtype=torch.long).index_add_(0, root, torch.ones_like(root))
    if how == "mean":
        out = torch.zeros(size, dtype=torch.float64).index_add_(0, root, value) / count.clamp(min=1)
    else:
        reduce, start = _REDUCTIONS[how]
        out = torch.full((size,), start, dtype=torch.float64).scatter_reduce_(0, root, value, reduce)
    return torch.where(count > 0, out, torch.full_like(out, math.inf)).float()


def filter_l1(module: nn.Module) -> Tensor:
    """Per output channel, the L1 norm of the layer's filter (float32, CPU)."""
    weight = module.weight.detach().float().cpu()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1)


def group_scores(group: ChannelGroup, model: nn.Module, scored: set[str], rule: str, score: str = "gamma") -> Tensor:
    """Per group channel: the rule's aggregate of the scored BNs' |gamma| (``score="filter-l1"``: of the
    producing filters' L1 norms); +inf where no scored layer covers it."""
    values: list[Tensor] = []
    roots: list[Tensor] = []
    if score == "filter-l1":
        for item in group.producers():
            values.append(filter_l1(item.module)[item.idx_t])
            roots.append(item.root_t)
    else:
        for item in group.bn_items():
            if item.module_name in scored:
                values.append(gamma_magnitude(item.module)[item.idx_t])
                roots.append(item.root_t)
    return _aggregate(values, roots, group.num_channels, GROUP_RULES[rule].aggregate)


def vote(group: ChannelGroup, bn_keep: Mapping[str, Tensor], rule: str, excluded: Sequence[str]) -> Tensor:
    """Keep mask over the group's channels from its scored BNs' keep masks (the rule's vote). BNs in
    ``excluded`` (removed branches, now a constant shift) do not vote, and a channel only they covered is removed."""
    size = group.num_channels
    yes = torch.zeros(size, dtype=torch.long)
    total = torch.zeros(size, dtype=torch.long)
    constant_only = torch.zeros(size, dtype=torch.bool)
    own_prunes: list[int] = []  # channels each voting BN removes on its own (masksparsity)
    for item in group.bn_items():
        if item.module_name not in bn_keep:
            continue
        if deleted_with_block(item.module_name, excluded):
            constant_only[item.root_t] = True
        else:
            total.index_add_(0, item.root_t, torch.ones_like(item.root_t))
            yes.index_add_(0, item.root_t, bn_keep[item.module_name][item.idx_t].long())
            own_prunes.append(int((~bn_keep[item.module_name][item.idx_t].bool()).sum()))
    keep = GROUP_RULES[rule].voter()(yes, total, own_prunes)
    return torch.where(total > 0, keep, ~constant_only)


def round_kept(keep: Tensor, scores: Tensor, multiple: int, mode: str) -> Tensor:
    """Kept count rounded to a multiple of ``multiple``; ``mode="up"`` only adds the best removed channels,
    ``"nearest"`` may also drop the worst kept ones."""
    size, count = keep.numel(), int(keep.sum())
    if multiple <= 1 or count == 0 or count == size:
        return keep
    if mode == "up":
        target = min(size, math.ceil(count / multiple) * multiple)
    else:
        target = min(size, max(multiple, int(math.floor(count / multiple + 0.5)) * multiple))
    return keep if target == count else _grown(keep, scores, target)


def snapped_width(count: int, steps: Sequence[int], size: int) -> int:
    """The smallest of ``steps`` at or above ``count`` (``size`` when none is): a width between two steps
    costs as much as the step above it, so the channels up to it are kept for free."""
    return min((int(s) for s in steps if count <= s <= size), default=size)


def snap_kept(keep: Tensor, scores: Tensor, steps: Sequence[int]) -> Tensor:
    """``keep`` grown to ``snapped_width`` channels by adding the best removed channels (``round_to: auto``)."""
    size, count = keep.numel(), int(keep.sum())
    if count == 0 or count == size:
        return keep
    target = snapped_width(count, steps, size)
    if target == count:
        return keep
    return _grown(keep, scores, target)


def _grown(keep: Tensor, scores: Tensor, target: int) -> Tensor:
    """``keep`` with the best-scored removed channels added until ``target`` are kept."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    ranked = by_score[torch.sort(keep[by_score].to(torch.int8), descending=True, stable=True).indices]  # kept first, then by score
    new = torch.zeros_like(keep)
    new[ranked[:target]] = True
    return new


def balance_segments(keep: Tensor, scores: Tensor, segments: list[list[int]], mode: str) -> Tensor:
    """Same number of kept channels in every segment (group channel indices per conv group): the largest
    count (``mode="max"``, adding the best removed channels) or the rounded mean (``"mean"``)."""
    counts = [int(keep[seg].sum()) for seg in segments]
    if not segments or len(set(counts)) == 1 and counts[0] > 0:
        return keep
    target = max(1, max(counts) if mode == "max" else int(round(sum(counts) / len(counts))))
    keep = keep.clone()
    for seg in segments:
        index = torch.tensor(seg, dtype=torch.long)
        seg_scores = scores[index]
        if mode == "max":
            seg_scores = torch.where(keep[index], torch.full_like(seg_scores, math.inf), seg_scores)
        ranked = torch.sort(seg_scores, descending=True, stable=True).indices
        new = torch.zeros(len(seg), dtype=torch.bool)
        new[ranked[: min(target, len(seg))]] = True
        keep[index] = new
    return keep


def grouped_conv_segments(group: ChannelGroup) -> tuple[list[list[list[int]]], str]:
    """Segments (group channel indices per conv group) of every grouped conv side in the group, and an
    error text when a grouped conv is only partly covered."""
    result = []
    for item in group.items:
        if not is_grouped(item.module) or item.side == BOTH:
            continue
        conv = item.module
        size = conv.in_channels if item.side == IN else conv.out_channels
        if len(item.idxs) != size:
            return [], f"grouped conv {item.module_name} is only partly in the group"
        per = size // conv.groups
        root_of = dict(zip(item.idxs, item.root_idxs))
        result.append([[root_of[g * per + j] for j in range(per)] for g in range(conv.groups)])
    return result, ""


def _placement_items(group: ChannelGroup, side: str) -> list:
    return [it for it in group.items if isinstance(it.module, ChannelPlacementShortcut) and it.side == side]


def _waits_for_placement(group: ChannelGroup, pending: Sequence[ChannelGroup], feeds: Mapping[str, set[str]],
                         fed_by: Mapping[str, set[str]]) -> bool:
    """True while a group that feeds one of this group's placement shortcuts is undecided
    (``feeds``/``fed_by``: per group, the placement shortcuts it reads / writes)."""
    sources = fed_by[group.name]
    return bool(sources) and any(other is not group and feeds[other.name] & sources for other in pending)


def _placement_votes(group: ChannelGroup, removed: Mapping[tuple[str, str], set[int]], keep: Tensor) -> Tensor:
    """Channels an option-A shortcut fills with a kept input channel carry signal: keep them."""
    votes = torch.zeros_like(keep)
    for item in _placement_items(group, OUT):
        gone = removed.get((item.module_name, IN), set())
        placement = item.module.placement.tolist()
        targets = {int(j) for i, j in enumerate(placement) if j >= 0 and i not in gone}
        votes[[root for idx, root in zip(item.idxs, item.root_idxs) if idx in targets]] = True
    return votes


def removals_of(group: ChannelGroup, keep: Tensor) -> dict[tuple[str, str], set[int]]:
    """Per (module, side), the module-level indices of the group's removed channels."""
    removed: dict[tuple[str, str], set[int]] = {}
    for item in group.items:
        gone = item.idx_t[~keep[item.root_t]]
        if gone.numel():
            removed.setdefault((item.module_name, item.side), set()).update(gone.tolist())
    return removed


def analysed_bn_names(analysis: ModelAnalysis, all_bns: Sequence[str], names: Sequence[str]) -> list[str]:
    """``names`` (the model's own BN names) as the analysed model's: an adapter that split a layer for the
    analysis (YOLO's ``cv1`` into ``cv1a`` and ``cv1b``) maps one name to several; an unknown name is one line."""
    live = pruning_entry(analysis.model).live
    found: list[str] = []
    for name in names:
        matches = [n for n in all_bns if n == name or live(n) == name]
        if not matches:
            raise PolarpruneError(f"no BatchNorm layer named {name!r} in the model")
        found += matches
    return found


def scored_bns(analysis: ModelAnalysis, options: PruneOptions, notes: list[str]) -> set[str]:
    """The BNs whose scores decide: ``bn_names`` (default: every BN of a prunable group),
    narrowed by the ``bn_include`` / ``bn_exclude`` fnmatch patterns."""
    all_bns = [n for n, m in analysis.model.named_modules() if isinstance(m, BN_TYPES)]
    prunable = {bn for g in analysis.prunable_groups() for bn in g.bn_names}
    names = None if options.bn_names is None else analysed_bn_names(analysis, all_bns, options.bn_names)
    for pattern in options.bn_include:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_bns):
            raise PolarpruneError(f"bn_include pattern {pattern!r} matches no BatchNorm layer")
    if options.bn_include:
        pool = names if names is not None else all_bns
        names = [n for n in pool if any(fnmatch.fnmatchcase(n, p) for p in options.bn_include)]
    if options.bn_exclude:
        pool = names if names is not None else sorted(prunable)
        names = [n for n in pool if not any(fnmatch.fnmatchcase(n, p) for p in options.bn_exclude)]
    if names is None:
        return prunable
    if not names:
        raise PolarpruneError("no BatchNorm layer is left to score (check bn_include/bn_exclude)")
    notes += [f"{name}: its group cannot be pruned, left whole" for name in names if name not in prunable]
    return {name for name in names if name in prunable}


def _check_masks(analysis: ModelAnalysis, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if masks is None:
        raise PolarpruneError("strategy 'mask' needs masks (BN name -> keep vector)")
    checked = {}
    for name, mask in masks.items():
        try:
            bn = analysis.model.get_submodule(name)
        except AttributeError:
            raise PolarpruneError(f"mask names {name!r}, which is not a layer of the model") from None
        if not isinstance(bn, BN_TYPES):
            raise PolarpruneError(f"mask names {name!r}, which is a {type(bn).__name__}, not a BatchNorm")
        vector = torch.as_tensor(mask).flatten().to(torch.bool).cpu()
        if vector.numel() != bn.num_features:
            raise PolarpruneError(f"mask for {name!r} has {vector.numel()} entries, the layer has {bn.num_features} channels")
        checked[name] = vector
    return checked


@dataclass
class Choice:
    """A strategy's first choice, before groups are resolved: a keep mask per scored BN (its groups vote)
    or per group; the thresholds used; the BNs whose choice counts."""

    bn_keep: dict[str, Tensor]
    group_keep: dict[str, Tensor]
    thresholds: dict[str, float]
    scored: set[str]


def _ordered_bns(groups: Sequence[ChannelGroup], scored: set[str]) -> list[str]:
    return list(dict.fromkeys(bn for g in groups for bn in g.bn_names if bn in scored))


def choose_per_bn(analysis: ModelAnalysis, options: PruneOptions, scored: set[str], notes: list[str], quiet: bool) -> Choice:
    """``decides="bn"``: a keep mask per scored BN from its scores (the groups vote later)."""
    names = _ordered_bns(analysis.prunable_groups(), scored)
    result = select_channels(bn_scores(analysis.model, names), options.strategy, threshold=options.threshold,
                             percent=options.percent, min_channels=0, seed=options.seed, warn=not quiet)
    notes += result.notes
    return Choice(result.keep, {}, result.thresholds, scored)


def choose_user(analysis: ModelAnalysis, options: PruneOptions, scored: set[str], notes: list[str], quiet: bool) -> Choice:
    """``decides="user"``: the user's keep mask per BN (only scored BNs of prunable groups count)."""
    user = _check_masks(analysis, options.masks)
    notes += [f"{n}: mask ignored (its group cannot be pruned or the BN is not scored)" for n in user if n not in scored]
    bn_keep = {n: m for n, m in user.items() if n in scored}
    return Choice(bn_keep, {}, {}, set(bn_keep))


def choose_per_group(analysis: ModelAnalysis, options: PruneOptions, scored: set[str], notes: list[str], quiet: bool) -> Choice:
    """``decides="group"``: a keep mask per scored group from its aggregated score."""
    groups = [g for g in analysis.prunable_groups() if any(bn in scored for bn in g.bn_names)]
    score = STRATEGIES[options.strategy].score
    scores = {g.name: group_scores(g, analysis.model, scored, options.group_rule, score) for g in groups}
    finite = {k: torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for k, v in scores.items()}
    ratio: float | dict[str, float] | None = options.ratio
    if isinstance(options.ratio, Mapping):
        keys = {g.name: next((k for k in [g.name, *g.bn_names] if k in options.ratio), None) for g in groups}
        ratio = {name: float(options.ratio[key]) for name, key in keys.items() if key is not None}
    result = select_channels(finite, options.strategy, ratio=ratio, min_channels=0, seed=options.seed)
    notes += result.notes
    keep = {g.name: result.keep[g.name] | ~torch.isfinite(scores[g.name]) for g in groups}
    return Choice({}, keep, result.thresholds, scored)


# how a strategy decides (its record's ``decides``) -> the function making its first choice
CHOOSERS: dict[str, Callable[..., Choice]] = {"bn": choose_per_bn, "user": choose_user, "group": choose_per_group}


@dataclass
class _Resolution:
    """Groups resolved so far (``resolve_groups``' state)."""

    group_keep: dict[str, Tensor] = field(default_factory=dict)
    removed_blocks: dict[str, BlockInfo] = field(default_factory=dict)
    removals: dict[str, Removals] = field(default_factory=dict)  # per decided group
    removed_so_far: Removals = field(default_factory=dict)


def inner_block(group: ChannelGroup, blocks: Mapping[str, BlockInfo], inner_of: Mapping[str, BlockInfo]) -> BlockInfo | None:
    """The residual block whose inner BNs are all of the group's BNs (its emptiness removes the branch)."""
    owners = {inner_of[bn].name if bn in inner_of else None for bn in group.bn_names}
    if len(owners) == 1 and None not in owners:
        return blocks[owners.pop()]  # type: ignore[index]
    return None


def _fit_group(group: ChannelGroup, keep: Tensor, scores: Tensor, opts: PruneOptions, record: Strategy,
               notes: list[str], analysis: ModelAnalysis, widths: CostModel | None) -> Tensor:
    """A group's keep mask after ``min_channels``, ``round_to`` and the grouped convs' balance
    (``round_to: auto`` snaps up to ``widths.steps``; without ``widths`` every width pays: no rounding)."""
    before = int(keep.sum())
    keep = keep_at_least(keep, scores, opts.min_channels)
    if int(keep.sum()) != before:
        notes.append(f"{group.name}: kept {int(keep.sum())} channels (min_channels={opts.min_channels}) instead of {before}")
    per_group = record.decides == "group"
    segments, problem = grouped_conv_segments(group)
    if opts.round_to == "auto" and widths is not None and not segments:
        keep = snap_kept(keep, scores, widths.steps(analysis, group))
    elif isinstance(opts.round_to, int) and opts.round_to > 1 and not segments:
        keep = round_kept(keep, scores, opts.round_to, "nearest" if per_group else "up")
    if problem:
        notes.append(f"{group.name}: left whole ({problem})")
        keep = torch.ones_like(keep)
    for segs in segments:
        keep = balance_segments(keep, scores, segs, "mean" if per_group else "max")
    return keep


def _resolve_group(group: ChannelGroup, block: BlockInfo | None, choice: Choice, state: _Resolution, opts: PruneOptions,
                   record: Strategy, notes: list[str], analysis: ModelAnalysis, widths: CostModel | None) -> None:
    """Decide one group: its vote (or its own choice), branch removal, then ``_fit_group``."""
    if group.name in choice.group_keep:
        keep = choice.group_keep[group.name]
    else:
        keep = vote(group, choice.bn_keep, opts.group_rule, list(state.removed_blocks))
        keep = keep | _placement_votes(group, state.removed_so_far, keep)
    if int(keep.sum()) == 0 and block is not None and opts.remove_empty_blocks:
        state.removed_blocks[block.name] = dataclasses.replace(block, emptied_bns=[bn for bn in group.bn_names if bn in block.inner_bns])
        notes.append(f"{block.name}: residual branch removed (no channel of {group.name} kept); the block is its shortcut")
        state.group_keep[group.name] = keep
        return
    if block is not None and block.name in state.removed_blocks:
        state.group_keep[group.name] = torch.ones_like(keep)
        return
    scores = group_scores(group, analysis.model, choice.scored, opts.group_rule, record.score)
    keep = _fit_group(group, keep, scores, opts, record, notes, analysis, widths)
    state.group_keep[group.name] = keep
    state.removals[group.name] = removals_of(group, keep)
    for key, idxs in state.removals[group.name].items():
        state.removed_so_far.setdefault(key, set()).update(idxs)


def resolve_groups(analysis: ModelAnalysis, choice: Choice, opts: PruneOptions, notes: list[str],
                   widths: CostModel | None = None) -> _Resolution:
    """Every scored group's keep mask. Inner groups go first (their emptiness decides which blocks go); a
    group fed by an option-A placement shortcut waits for the group that feeds it (placed channels vote keep)."""
    record = STRATEGIES[opts.strategy]
    blocks = analysis.blocks
    inner_of = {bn: block for block in blocks.values() for bn in block.inner_bns}
    scored_groups = [g for g in analysis.prunable_groups() if any(bn in choice.scored for bn in g.bn_names)]
    pending = sorted(scored_groups, key=lambda g: inner_block(g, blocks, inner_of) is None)
    feeds = {g.name: {it.module_name for it in _placement_items(g, IN)} for g in pending}
    fed_by = {g.name: {it.module_name for it in _placement_items(g, OUT)} for g in pending}
    state = _Resolution()
    while pending:
        ready = [g for g in pending if not _waits_for_placement(g, pending, feeds, fed_by)]
        group = (ready or pending)[0]
        pending.remove(group)
        _resolve_group(group, inner_block(group, blocks, inner_of), choice, state, opts, record, notes, analysis, widths)
    return state


def _removed_and_bn_keep(analysis: ModelAnalysis, state: _Resolution) -> tuple[Removals, dict[str, Tensor]]:
    """Every removal of the resolved groups and removed branches, and the keep mask of every BN of a prunable group."""
    removed: Removals = {}
    by_name = analysis.group_by_name()
    for name, keep in state.group_keep.items():
        for key, idxs in (state.removals[name] if name in state.removals else removals_of(by_name[name], keep)).items():
            removed.setdefault(key, set()).update(idxs)
    for block in state.removed_blocks.values():
        for bn in block.emptied_bns:
            removed[(bn, BOTH)] = set(range(analysis.channel_params[bn][1]))
    gone = list(state.removed_blocks)
    bn_keep = {}
    for bn in sorted({bn for g in analysis.prunable_groups() for bn in g.bn_names}):
        mask = torch.ones(analysis.channel_params[bn][1], dtype=torch.bool)
        mask[sorted(removed.get((bn, BOTH), ()))] = False
        if deleted_with_block(bn, gone):
            mask[:] = False  # the whole branch is gone
        bn_keep[bn] = mask
    return removed, bn_keep


def estimated(analysis: ModelAnalysis, decision: Decision, cost: CostModel) -> Decision:
    """``decision`` with its estimated MACs, parameters and cost (before and after) filled in."""
    gone = list(decision.removed_blocks)
    decision.estimated_macs = estimate_macs(analysis, decision.removed, gone)
    decision.estimated_macs_before = estimate_macs(analysis, {}, ())
    decision.estimated_params = estimate_params(analysis, decision.removed, decision.removed_blocks)
    decision.estimated_params_before = estimate_params(analysis, {}, {})
    same = cost == MACS  # the MACs just computed serve
    decision.estimated_cost = float(decision.estimated_macs) if same else cost.cost(analysis, decision.removed, gone)
    decision.estimated_cost_before = float(decision.estimated_macs_before) if same else cost.cost(analysis, {}, ())
    return decision


def decide(analysis: ModelAnalysis, strategy: str | None = None, options: PruneOptions | None = None, *,
           quiet: bool = False, cost: CostModel = MACS, widths: CostModel | None = None, **fields: Any) -> Decision:
    """Resolve a strategy (``PruneOptions`` and/or keywords) into per-layer removals for the analysed model.
    ``quiet`` keeps ``grad``'s per-layer warnings out of the log (trial decisions every epoch); ``cost``:
    the cost model searches aim with and ``Decision.cost_ratio`` reports; ``widths``: the cost model whose
    ``steps`` ``round_to: auto`` snaps to (None: every width pays, no rounding)."""
    opts = parse_options(strategy, options, **fields)
    record = STRATEGIES[opts.strategy]
    if record.decides == "search":
        extra = {"widths": widths} if widths is not None else {}  # a search registered before widths existed takes none
        return record.function()(analysis, opts, quiet=quiet, cost=cost, **extra)
    notes: list[str] = []
    scored = scored_bns(analysis, opts, notes)
    choice = CHOOSERS[record.decides](analysis, opts, scored, notes, quiet)
    return decision_of(analysis, choice, opts, notes, cost, widths)


def decision_of(analysis: ModelAnalysis, choice: Choice, opts: PruneOptions, notes: list[str], cost: CostModel,
                widths: CostModel | None = None) -> Decision:
    """The decision of a first choice: its groups resolved, its removals gathered, its cost estimated."""
    state = resolve_groups(analysis, choice, opts, notes, widths)
    removed, bn_keep = _removed_and_bn_keep(analysis, state)
    decision = Decision(state.group_keep, removed, state.removed_blocks, bn_keep, choice.thresholds, notes)
    return estimated(analysis, decision, cost)


def search_threshold(analysis: ModelAnalysis, options: PruneOptions, *, quiet: bool = False, cost: CostModel = MACS,
                     widths: CostModel | None = None, tolerance: float = 0.005, iterations: int = 40) -> Decision:
    """The decision of the searched strategy's ``aims`` (``fixed``) whose estimated cost reduction is closest
    to ``target_macs_reduction`` (threshold in ``decision.threshold``): bisection on the global |gamma|
    threshold, within ``tolerance``."""
    target = options.target_macs_reduction
    if target is None or not 0.0 < float(target) < 1.0:
        raise PolarpruneError(f"target MACs reduction must be in (0, 1), got {target}")
    base = options.model_copy(update={"strategy": STRATEGIES[options.strategy].aims or "fixed"})
    scored = scored_bns(analysis, base, [])
    if not scored:
        raise PolarpruneError(f"{options.strategy}: the model has no prunable BatchNorm layer")
    top = max(float(score.max()) for score in bn_scores(analysis.model, sorted(scored)).values())

    def at(threshold: float) -> tuple[float, Decision]:
        found = decide(analysis, options=base.model_copy(update={"threshold": threshold}), quiet=quiet, cost=cost, widths=widths)
        found.threshold = threshold
        return found.cost_ratio, found

    best = bisect_knob(at, 1.0 - float(target), 0.0, top * (1 + 1e-6) + 1e-12, rounds=iterations, tolerance=tolerance).result
    best.notes.append(f"{options.strategy}: threshold {best.threshold:.6g} gives an estimated {cost.name} reduction of "
                      f"{1.0 - best.cost_ratio:.2%} (target {float(target):.2%})")
    return best


__all__ = ["ALL_STRATEGIES", "GROUP_RULES", "BlockInfo", "Decision", "Choice", "CHOOSERS", "decide", "decision_of", "removals_of", "search_threshold",
           "scored_bns", "vote", "keep_at_least", "balance_segments", "group_scores", "bn_scores", "resolve_groups",
           "filter_l1", "snap_kept", "snapped_width"]
