"""Decisions: from per-channel scores to the channels every layer loses.

Threshold strategies (``grad``, ``fixed``, ``percent``, ``mask``) decide per BN, ratio strategies
(``uniform``, ``l1-norm``, ``random``) per group on its aggregated score. A group's channel is kept
according to the group rule over its *scored* BNs:

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
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from ..models.layers import BlockInfo
from .graph import BN_TYPES, BOTH, IN, OUT, ChannelGroup, ModelAnalysis, deleted_with_block, estimate_macs, estimate_params, is_grouped
from .modules import ChannelPlacementShortcut
from .options import GROUP_RULES, RATIO_STRATEGIES, STRATEGIES, PruneOptions, parse_options
from .strategies import select_channels
from .votes import relaxed_prune

ALL_STRATEGIES = STRATEGIES


@dataclass
class Decision:
    """What a pruning will do, in the original model's coordinates."""

    group_keep: dict[str, Tensor]
    removed: dict[tuple[str, str], set[int]]
    removed_blocks: dict[str, BlockInfo]
    bn_keep: dict[str, Tensor]
    thresholds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    estimated_macs: int = 0
    estimated_macs_before: int = 0
    estimated_params: int = 0
    estimated_params_before: int = 0
    threshold: float | None = None  # the threshold flops-target found

    @property
    def macs_ratio(self) -> float:
        """Estimated MACs after / before (the per-channel cost model; exact for conv/linear MACs)."""
        return self.estimated_macs / max(1, self.estimated_macs_before)

    @property
    def params_ratio(self) -> float:
        """Estimated parameters after / before (without biases compensation may add)."""
        return self.estimated_params / max(1, self.estimated_params_before)


def bn_scores(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """``|gamma|`` of each named BN (float32, CPU)."""
    scores = {}
    for name in names:
        bn = model.get_submodule(name)
        if getattr(bn, "weight", None) is None:
            raise PolarpruneError(f"BatchNorm {name!r} has no affine weight (gamma) to score")
        scores[name] = bn.weight.detach().abs().float().cpu()
    return scores


def _aggregate(values: list[Tensor], roots: list[Tensor], size: int, rule: str) -> Tensor:
    """Per group channel: max (``any``), min (``all``) or mean (``mean``) of the values landing on it; +inf where none does."""
    if not values:
        return torch.full((size,), math.inf)
    value, root = torch.cat(values).double(), torch.cat(roots)
    count = torch.zeros(size, dtype=torch.long).index_add_(0, root, torch.ones_like(root))
    if rule == "mean":
        out = torch.zeros(size, dtype=torch.float64).index_add_(0, root, value) / count.clamp(min=1)
    else:
        high = rule in ("any", "masksparsity")  # ratio strategies: masksparsity aggregates like any
        start = -math.inf if high else math.inf
        out = torch.full((size,), start, dtype=torch.float64).scatter_reduce_(0, root, value, "amax" if high else "amin")
    return torch.where(count > 0, out, torch.full_like(out, math.inf)).float()


def group_scores(group: ChannelGroup, model: nn.Module, scored: set[str], rule: str, strategy: str) -> Tensor:
    """Per group channel: the rule's aggregate of the scored BNs' |gamma| (``l1-norm``: of the producing filters'
    L1 norms); +inf where no scored layer covers it."""
    values: list[Tensor] = []
    roots: list[Tensor] = []
    if strategy == "l1-norm":
        for item in group.producers():
            weight = item.module.weight.detach().float().cpu()
            values.append(weight.abs().reshape(weight.shape[0], -1).sum(dim=1)[item.idx_t])
            roots.append(item.root_t)
    else:
        for item in group.bn_items():
            if item.module_name in scored:
                values.append(item.module.weight.detach().abs().float().cpu()[item.idx_t])
                roots.append(item.root_t)
    return _aggregate(values, roots, group.num_channels, rule)


def vote(group: ChannelGroup, bn_keep: Mapping[str, Tensor], rule: str, excluded: Sequence[str]) -> Tensor:
    """Keep mask over the group's channels from its scored BNs' keep masks. BNs in ``excluded`` (removed
    branches, now a constant shift) do not vote, and a channel only they covered is removed."""
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
    if rule == "any":
        keep = yes > 0
    elif rule == "all":
        keep = yes == total
    elif rule == "masksparsity":
        keep = ~relaxed_prune(total - yes, max(1, int(total.max())), min(own_prunes, default=0))
    else:
        keep = 2 * yes >= total
    return torch.where(total > 0, keep, ~constant_only)


def keep_at_least(keep: Tensor, scores: Tensor, count: int) -> Tensor:
    """``keep`` plus the best-scored channels so that ``min(count, size)`` stay."""
    need = min(count, keep.numel())
    if int(keep.sum()) >= need:
        return keep
    keep = keep.clone()
    order = torch.sort(torch.where(keep, torch.full_like(scores, math.inf), scores), descending=True, stable=True).indices
    keep[order[:need]] = True
    return keep


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
    if target == count:
        return keep
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


def scored_bns(analysis: ModelAnalysis, options: PruneOptions, notes: list[str]) -> set[str]:
    """The BNs whose scores decide: ``bn_names`` (default: every BN of a prunable group),
    narrowed by the ``bn_include`` / ``bn_exclude`` fnmatch patterns."""
    all_bns = [n for n, m in analysis.model.named_modules() if isinstance(m, BN_TYPES)]
    prunable = {bn for g in analysis.prunable_groups() for bn in g.bn_names}
    names = options.bn_names
    for name in names or ():
        if name not in all_bns:
            raise PolarpruneError(f"no BatchNorm layer named {name!r} in the model")
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


def _per_bn_choice(analysis: ModelAnalysis, options: PruneOptions, scored: set[str], groups: list[ChannelGroup],
                   notes: list[str], quiet: bool) -> tuple[dict[str, Tensor], dict[str, float], set[str]]:
    """Threshold strategies and user masks: a keep mask per scored BN (the groups vote later)."""
    if options.strategy == "mask":
        user = _check_masks(analysis, options.masks)
        notes += [f"{n}: mask ignored (its group cannot be pruned or the BN is not scored)" for n in user if n not in scored]
        bn_keep = {n: m for n, m in user.items() if n in scored}
        return bn_keep, {}, set(bn_keep)
    ordered = list(dict.fromkeys(bn for g in groups for bn in g.bn_names if bn in scored))
    result = select_channels(bn_scores(analysis.model, ordered), options.strategy, threshold=options.threshold,
                             percent=options.percent, min_channels=0, seed=options.seed, warn=not quiet)
    notes += result.notes
    return result.keep, result.thresholds, scored


def _per_group_choice(analysis: ModelAnalysis, options: PruneOptions, scored: set[str], groups: list[ChannelGroup],
                      notes: list[str]) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Ratio strategies: a keep mask per group from its aggregated score."""
    scores = {g.name: group_scores(g, analysis.model, scored, options.group_rule, options.strategy) for g in groups}
    finite = {k: torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for k, v in scores.items()}
    ratio: float | dict[str, float] | None = options.ratio
    if isinstance(options.ratio, Mapping):
        keys = {g.name: next((k for k in [g.name, *g.bn_names] if k in options.ratio), None) for g in groups}
        ratio = {name: float(options.ratio[key]) for name, key in keys.items() if key is not None}
    result = select_channels(finite, options.strategy, ratio=ratio, min_channels=0, seed=options.seed)
    notes += result.notes
    return {g.name: result.keep[g.name] | ~torch.isfinite(scores[g.name]) for g in groups}, result.thresholds


def decide(analysis: ModelAnalysis, strategy: str | None = None, options: PruneOptions | None = None, *,
           quiet: bool = False, **fields: Any) -> Decision:
    """Resolve a strategy (``PruneOptions`` and/or keywords) into per-layer removals for the analysed model.
    ``quiet`` keeps ``grad``'s per-layer warnings out of the log (trial decisions every epoch)."""
    opts = parse_options(strategy, options, **fields)
    if opts.strategy == "flops-target":
        return search_threshold(analysis, float(opts.target_macs_reduction), opts, quiet=quiet)  # type: ignore[arg-type]
    model = analysis.model
    notes: list[str] = []
    scored = scored_bns(analysis, opts, notes)
    groups = analysis.prunable_groups()
    scored_groups = [g for g in groups if any(bn in scored for bn in g.bn_names)]
    bn_keep: dict[str, Tensor] = {}
    group_choice: dict[str, Tensor] = {}
    if opts.strategy in RATIO_STRATEGIES:
        group_choice, thresholds = _per_group_choice(analysis, opts, scored, scored_groups, notes)
    else:
        bn_keep, thresholds, scored = _per_bn_choice(analysis, opts, scored, scored_groups, notes, quiet)
        scored_groups = [g for g in groups if any(bn in scored for bn in g.bn_names)]

    blocks = analysis.blocks
    inner_of = {bn: block for block in blocks.values() for bn in block.inner_bns}
    removed_blocks: dict[str, BlockInfo] = {}
    group_keep: dict[str, Tensor] = {}

    def is_inner(group: ChannelGroup) -> BlockInfo | None:
        owners = {inner_of[bn].name if bn in inner_of else None for bn in group.bn_names}
        if len(owners) == 1 and None not in owners:
            return blocks[owners.pop()]  # type: ignore[index]
        return None

    # inner groups first (their emptiness decides which blocks go); a group fed by an option-A
    # placement shortcut waits for the group that feeds it (its placed channels vote keep)
    pending = sorted(scored_groups, key=lambda g: is_inner(g) is None)
    feeds = {g.name: {it.module_name for it in _placement_items(g, IN)} for g in pending}
    fed_by = {g.name: {it.module_name for it in _placement_items(g, OUT)} for g in pending}
    removed_so_far: dict[tuple[str, str], set[int]] = {}
    removals: dict[str, dict[tuple[str, str], set[int]]] = {}  # per decided group
    score_kind = "l1-norm" if opts.strategy == "l1-norm" else "bn"
    while pending:
        ready = [g for g in pending if not _waits_for_placement(g, pending, feeds, fed_by)]
        group = (ready or pending)[0]
        pending.remove(group)
        if group.name in group_choice:
            keep = group_choice[group.name]
        else:
            keep = vote(group, bn_keep, opts.group_rule, list(removed_blocks))
            keep = keep | _placement_votes(group, removed_so_far, keep)
        scores = group_scores(group, model, scored, opts.group_rule, score_kind)
        block = is_inner(group)
        if int(keep.sum()) == 0 and block is not None and opts.remove_empty_blocks:
            removed_blocks[block.name] = dataclasses.replace(block, emptied_bns=[bn for bn in group.bn_names if bn in block.inner_bns])
            notes.append(f"{block.name}: residual branch removed (no channel of {group.name} kept); the block is its shortcut")
            group_keep[group.name] = keep
            continue
        if block is not None and block.name in removed_blocks:
            group_keep[group.name] = torch.ones_like(keep)
            continue
        before = int(keep.sum())
        keep = keep_at_least(keep, scores, opts.min_channels)
        if int(keep.sum()) != before:
            notes.append(f"{group.name}: kept {int(keep.sum())} channels (min_channels={opts.min_channels}) instead of {before}")
        segments, problem = grouped_conv_segments(group)
        if opts.round_to > 1 and not segments:
            keep = round_kept(keep, scores, opts.round_to, "nearest" if opts.strategy in RATIO_STRATEGIES else "up")
        if problem:
            notes.append(f"{group.name}: left whole ({problem})")
            keep = torch.ones_like(keep)
        for segs in segments:
            keep = balance_segments(keep, scores, segs, "mean" if opts.strategy in RATIO_STRATEGIES else "max")
        group_keep[group.name] = keep
        removals[group.name] = removals_of(group, keep)
        for key, idxs in removals[group.name].items():
            removed_so_far.setdefault(key, set()).update(idxs)

    removed: dict[tuple[str, str], set[int]] = {}
    by_name = analysis.group_by_name()
    for name, keep in group_keep.items():
        for key, idxs in (removals[name] if name in removals else removals_of(by_name[name], keep)).items():
            removed.setdefault(key, set()).update(idxs)
    for block in removed_blocks.values():
        for bn in block.emptied_bns:
            removed[(bn, BOTH)] = set(range(analysis.channel_params[bn][1]))
    gone = list(removed_blocks)
    bn_keep = {}
    for bn in sorted({bn for g in groups for bn in g.bn_names}):
        mask = torch.ones(analysis.channel_params[bn][1], dtype=torch.bool)
        mask[sorted(removed.get((bn, BOTH), ()))] = False
        if deleted_with_block(bn, gone):
            mask[:] = False  # the whole branch is gone
        bn_keep[bn] = mask
    return Decision(group_keep, removed, removed_blocks, bn_keep, thresholds, notes,
                    estimate_macs(analysis, removed, gone), estimate_macs(analysis, {}, ()),
                    estimate_params(analysis, removed, removed_blocks), estimate_params(analysis, {}, {}))


def search_threshold(analysis: ModelAnalysis, target_reduction: float, options: PruneOptions | None = None, *,
                     tolerance: float = 0.005, iterations: int = 40, quiet: bool = False) -> Decision:
    """The ``fixed`` decision whose estimated MACs reduction is closest to the target (threshold in
    ``decision.threshold``): bisection on the global |gamma| threshold, within ``tolerance``."""
    if not 0.0 < float(target_reduction) < 1.0:
        raise PolarpruneError(f"target MACs reduction must be in (0, 1), got {target_reduction}")
    base = (options or PruneOptions()).model_copy(update={"strategy": "fixed"})
    scored = scored_bns(analysis, base, [])
    if not scored:
        raise PolarpruneError("flops-target: the model has no prunable BatchNorm layer")
    top = max(float(score.max()) for score in bn_scores(analysis.model, sorted(scored)).values())

    def at(threshold: float) -> Decision:
        found = decide(analysis, options=base.model_copy(update={"threshold": threshold}), quiet=quiet)
        found.threshold = threshold
        return found

    def miss(decision: Decision) -> float:
        return abs(1.0 - decision.macs_ratio - target_reduction)

    low, high = 0.0, top * (1 + 1e-6) + 1e-12
    best = at(low)
    if miss(best) <= tolerance:
        return best
    for _ in range(iterations):
        middle = (low + high) / 2
        decision = at(middle)
        if miss(decision) < miss(best):
            best = decision
        if miss(decision) <= tolerance:
            break
        if 1.0 - decision.macs_ratio < target_reduction:
            low = middle
        else:
            high = middle
    best.notes.append(f"flops-target: threshold {best.threshold:.6g} gives an estimated MACs reduction of "
                      f"{1.0 - best.macs_ratio:.2%} (target {target_reduction:.2%})")
    return best


__all__ = ["ALL_STRATEGIES", "GROUP_RULES", "BlockInfo", "Decision", "decide", "search_threshold", "scored_bns",
           "vote", "keep_at_least", "balance_segments", "group_scores", "bn_scores"]
