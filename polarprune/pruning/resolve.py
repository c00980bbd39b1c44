"""Decisions: from per-channel scores to the channels every layer loses.

The strategies (``strategies.py``) decide per BN (threshold strategies: ``grad``, ``fixed``,
``percent``, user ``mask``) or per group (ratio strategies: ``uniform``, ``l1-norm``,
``random``, on the group's aggregated score). A group's channel is then kept according to
the group rule over its *scored* BNs:

- ``any`` (default): kept if any scored BN keeps it (removal is exact when every BN of the
  group has gamma = beta = 0 there);
- ``all``: kept only if every scored BN keeps it;
- ``mean``: kept if at least half of the scored BNs keep it (majority vote).

Ratio strategies aggregate the scored BNs' |gamma| per channel with the same rule (max, min,
mean); ``l1-norm`` aggregates the L1 norms of the producing filters. After the rule:

- a block-inner group (ResNet basic block ``bn1``, bottleneck ``bn1``/``bn2``) that loses every
  channel removes its residual branch when ``remove_empty_blocks`` (the block becomes its
  shortcut); otherwise every group keeps ``min_channels`` channels (its best scores);
- channels of grouped (not depthwise) convs are balanced: every conv group keeps the same count
  (threshold strategies add back the best channels up to the largest count, so no channel the
  rule keeps is removed; ratio strategies use the mean count), at least one per conv group.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError
from .graph import BN_TYPES, BOTH, IN, OUT, ChannelGroup, ModelAnalysis, deleted_with_block, estimate_macs, is_grouped
from .modules import ChannelPlacementShortcut
from .strategies import select_channels

THRESHOLD_STRATEGIES = ("grad", "fixed", "percent", "mask", "flops-target")
RATIO_STRATEGIES = ("uniform", "l1-norm", "random")
ALL_STRATEGIES = ("grad", "fixed", "percent", "uniform", "l1-norm", "random", "mask", "flops-target")
GROUP_RULES = ("any", "all", "mean")


@dataclass
class BlockInfo:
    """A residual block whose branch may be removed: its inner BNs, last BN and shortcut."""

    name: str
    inner_bns: list[str]
    last_bn: str
    branch: list[str]  # attribute names of the branch layers in order
    emptied_bns: list[str] = field(default_factory=list)  # inner BNs that lost every channel


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


def find_blocks(model: nn.Module) -> dict[str, BlockInfo]:
    """Residual blocks whose branch can be removed: CIFAR BasicBlock, torchvision BasicBlock/Bottleneck."""
    from torchvision.models import resnet as tv_resnet

    from ..models import cifar_resnet

    blocks: dict[str, BlockInfo] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (cifar_resnet.BasicBlock, tv_resnet.BasicBlock)):
            blocks[name] = BlockInfo(name, [prefix + "bn1"], prefix + "bn2", ["conv1", "bn1", "relu", "conv2", "bn2"])
        elif isinstance(module, tv_resnet.Bottleneck):
            blocks[name] = BlockInfo(
                name, [prefix + "bn1", prefix + "bn2"], prefix + "bn3",
                ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"],
            )
    return blocks


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def bn_scores(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """``|gamma|`` of each named BN (float32, CPU)."""
    scores = {}
    for name in names:
        bn = _module(model, name)
        if getattr(bn, "weight", None) is None:
            raise PolarpruneError(f"BatchNorm {name!r} has no affine weight (gamma) to score")
        scores[name] = bn.weight.detach().abs().float().cpu()
    return scores


def _aggregate(values: list[list[float]], rule: str) -> Tensor:
    out = []
    for column in values:
        if not column:
            out.append(math.inf)
        elif rule == "any":
            out.append(max(column))
        elif rule == "all":
            out.append(min(column))
        else:
            out.append(sum(column) / len(column))
    return torch.tensor(out, dtype=torch.float32)


def group_scores(group: ChannelGroup, model: nn.Module, scored: set[str], rule: str, strategy: str) -> Tensor:
    """Per group channel: the rule's aggregate (max/min/mean) of the scored BNs' |gamma|, or of the
    producing filters' L1 norms for ``l1-norm``. Channels no scored layer covers score +inf."""
    columns: list[list[float]] = [[] for _ in range(group.num_channels)]
    if strategy == "l1-norm":
        for item in group.producers():
            weight = item.module.weight.detach().float().cpu()
            norms = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
            for idx, root in zip(item.idxs, item.root_idxs):
                columns[root].append(float(norms[idx]))
    else:
        for item in group.bn_items():
            if item.module_name in scored:
                gamma = item.module.weight.detach().abs().float().cpu()
                for idx, root in zip(item.idxs, item.root_idxs):
                    columns[root].append(float(gamma[idx]))
    return _aggregate(columns, rule)


def vote(group: ChannelGroup, bn_keep: Mapping[str, Tensor], rule: str, excluded: Sequence[str]) -> Tensor:
    """Keep mask over the group's channels from the per-BN keep masks of its scored BNs.

    BNs inside ``excluded`` (removed residual branches, whose output is now a constant shift) do
    not vote; a channel that only they covered carries no signal any more and is removed.
    Channels no scored BN covers are kept.
    """
    votes: list[list[bool]] = [[] for _ in range(group.num_channels)]
    constant_only = [False] * group.num_channels
    for item in group.bn_items():
        if item.module_name not in bn_keep:
            continue
        mask = bn_keep[item.module_name]
        for idx, root in zip(item.idxs, item.root_idxs):
            if deleted_with_block(item.module_name, excluded):
                constant_only[root] = True
            else:
                votes[root].append(bool(mask[idx]))
    keep = []
    for column, constant in zip(votes, constant_only):
        if not column:
            keep.append(not constant)
        elif rule == "any":
            keep.append(any(column))
        elif rule == "all":
            keep.append(all(column))
        else:
            keep.append(sum(column) >= len(column) / 2)
    return torch.tensor(keep, dtype=torch.bool)


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
    """Kept count rounded to a multiple of ``multiple`` (at least one multiple, at most all).

    ``mode="up"`` adds the best removed channels (nothing kept is removed: threshold
    strategies); ``"nearest"`` may also drop the worst kept ones (ratio strategies).
    """
    size, count = keep.numel(), int(keep.sum())
    if multiple <= 1 or count == 0 or count == size:
        return keep
    if mode == "up":
        target = math.ceil(count / multiple) * multiple
    else:
        target = max(multiple, int(math.floor(count / multiple + 0.5)) * multiple)
    target = min(size, target)
    if target == count:
        return keep
    by_score = torch.sort(scores, descending=True, stable=True).indices
    ranked = by_score[torch.sort(keep[by_score].to(torch.int8), descending=True, stable=True).indices]  # kept first, then by score
    new = torch.zeros_like(keep)
    new[ranked[:target]] = True
    return new


def balance_segments(keep: Tensor, scores: Tensor, segments: list[list[int]], mode: str) -> Tensor:
    """Same number of kept channels in every segment (group channel indices per conv group).

    ``mode="max"``: add the best removed channels up to the largest count; ``"mean"``: the
    rounded mean count (at least 1), best channels of each segment.
    """
    counts = [int(keep[seg].sum()) for seg in segments]
    if not segments or len(set(counts)) == 1 and counts[0] > 0:
        return keep
    target = max(counts) if mode == "max" else int(round(sum(counts) / len(counts)))
    target = max(1, target)
    keep = keep.clone()
    for seg in segments:
        index = torch.tensor(seg, dtype=torch.long)
        seg_scores = scores[index]
        seg_keep = keep[index]
        if mode == "max":
            ranked = torch.sort(torch.where(seg_keep, torch.full_like(seg_scores, math.inf), seg_scores), descending=True, stable=True).indices
        else:
            ranked = torch.sort(seg_scores, descending=True, stable=True).indices
        new = torch.zeros(len(seg), dtype=torch.bool)
        new[ranked[: min(target, len(seg))]] = True
        keep[index] = new
    return keep


def grouped_conv_segments(group: ChannelGroup) -> tuple[list[list[list[int]]], str]:
    """Segments (group channel indices per conv group) of every grouped conv side in the group.

    Returns the segment lists and an error text when a grouped conv is only partly covered.
    """
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


def _waits_for_placement(group: ChannelGroup, pending: Sequence[ChannelGroup]) -> bool:
    """True while a group that feeds one of this group's placement shortcuts is undecided."""
    sources = {it.module_name for it in _placement_items(group, OUT)}
    return any(other is not group and any(it.module_name in sources for it in _placement_items(other, IN)) for other in pending)


def _placement_votes(group: ChannelGroup, removed: Mapping[tuple[str, str], set[int]], keep: Tensor) -> Tensor:
    """Channels an option-A shortcut fills with a kept input channel: they carry signal, keep them.

    Channels that receive no input (the zero padding) or a removed input do not vote.
    """
    votes = torch.zeros_like(keep)
    for item in _placement_items(group, OUT):
        gone = removed.get((item.module_name, IN), set())
        placement = item.module.placement.tolist()
        targets = {int(j) for i, j in enumerate(placement) if j >= 0 and i not in gone}
        for idx, root in zip(item.idxs, item.root_idxs):
            if idx in targets:
                votes[root] = True
    return votes


def removals_of(group: ChannelGroup, keep: Tensor) -> dict[tuple[str, str], set[int]]:
    """Per (module, side), the module-level indices of the group's removed channels."""
    removed: dict[tuple[str, str], set[int]] = {}
    for item in group.items:
        idxs = {idx for idx, root in zip(item.idxs, item.root_idxs) if not bool(keep[root])}
        if idxs:
            removed.setdefault((item.module_name, item.side), set()).update(idxs)
    return removed


def _check_bn_names(analysis: ModelAnalysis, bn_names: Sequence[str] | None, notes: list[str]) -> set[str]:
    all_bns = {n for n, m in analysis.model.named_modules() if isinstance(m, BN_TYPES)}
    prunable = {bn for g in analysis.prunable_groups() for bn in g.bn_names}
    if bn_names is None:
        return prunable
    chosen = set()
    for name in bn_names:
        if name not in all_bns:
            raise PolarpruneError(f"no BatchNorm layer named {name!r} in the model")
        if name in prunable:
            chosen.add(name)
        else:
            notes.append(f"{name}: its group cannot be pruned, left whole")
    return chosen


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


def decide(
    analysis: ModelAnalysis,
    strategy: str = "fixed",
    *,
    threshold: float = 0.01,
    percent: float | None = None,
    ratio: float | Mapping[str, float] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    bn_names: Sequence[str] | None = None,
    group_rule: str = "any",
    min_channels: int = 1,
    remove_empty_blocks: bool = True,
    round_to: int = 1,
    seed: int = 0,
) -> Decision:
    """Resolve a strategy into per-layer removals for the analysed model (see the module docstring).

    ``flops-target`` is resolved by the caller into ``fixed`` with a searched threshold.
    """
    if strategy not in ALL_STRATEGIES or strategy == "flops-target":
        raise PolarpruneError(f"unknown pruning strategy {strategy!r}; choose one of {', '.join(ALL_STRATEGIES)}")
    if group_rule not in GROUP_RULES:
        raise PolarpruneError(f"unknown group rule {group_rule!r}; choose one of {', '.join(GROUP_RULES)}")
    if min_channels < 0:
        raise PolarpruneError(f"min_channels must be >= 0, got {min_channels}")
    if round_to < 1:
        raise PolarpruneError(f"round_to must be >= 1, got {round_to}")
    model = analysis.model
    notes: list[str] = []
    scored = _check_bn_names(analysis, bn_names, notes)
    thresholds: dict[str, float] = {}
    bn_keep: dict[str, Tensor] = {}
    group_choice: dict[str, Tensor] = {}
    groups = analysis.prunable_groups()
    scored_groups = [g for g in groups if any(bn in scored for bn in g.bn_names)]

    if strategy == "mask":
        user = _check_masks(analysis, masks)
        bn_keep = {n: m for n, m in user.items() if n in scored}
        notes += [f"{n}: mask ignored (its group cannot be pruned or the BN is not scored)" for n in user if n not in scored]
        scored = set(bn_keep)
        scored_groups = [g for g in groups if any(bn in scored for bn in g.bn_names)]
    elif strategy in THRESHOLD_STRATEGIES:
        ordered = [bn for g in scored_groups for bn in g.bn_names if bn in scored]
        ordered = list(dict.fromkeys(ordered))
        result = select_channels(bn_scores(model, ordered), strategy, threshold=threshold, percent=percent, min_channels=0, seed=seed)
        bn_keep, thresholds = result.keep, result.thresholds
        notes += result.notes
    else:
        scores = {g.name: group_scores(g, model, scored, group_rule, strategy) for g in scored_groups}
        finite = {k: torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for k, v in scores.items()}
        group_ratio: float | dict[str, float] | None = ratio
        if isinstance(ratio, Mapping):
            group_ratio = {}
            for g in scored_groups:
                for key in [g.name, *g.bn_names]:
                    if key in ratio:
                        group_ratio[g.name] = float(ratio[key])
                        break
        result = select_channels(finite, strategy, ratio=group_ratio, min_channels=0, seed=seed)
        for g in scored_groups:
            group_choice[g.name] = result.keep[g.name] | ~torch.isfinite(scores[g.name])
        thresholds = result.thresholds
        notes += result.notes

    blocks = find_blocks(model)
    inner_of = {bn: block for block in blocks.values() for bn in block.inner_bns}
    removed_blocks: dict[str, BlockInfo] = {}
    group_keep: dict[str, Tensor] = {}

    def is_inner(group: ChannelGroup) -> BlockInfo | None:
        owners = {inner_of.get(bn) and inner_of[bn].name for bn in group.bn_names}
        if len(owners) == 1 and None not in owners:
            return blocks[owners.pop()]  # type: ignore[index]
        return None

    # inner groups first (their emptiness decides which blocks go); a group fed by an option-A
    # placement shortcut waits for the group that feeds it (its placed channels vote keep)
    pending = sorted(scored_groups, key=lambda g: is_inner(g) is None)
    removed_so_far: dict[tuple[str, str], set[int]] = {}
    while pending:
        ready = [g for g in pending if not _waits_for_placement(g, pending)]
        if not ready:
            ready = pending[:1]
        group = ready[0]
        pending.remove(group)
        keep = group_choice[group.name] if group.name in group_choice else vote(group, bn_keep, group_rule, list(removed_blocks))
        if group.name not in group_choice:
            keep = keep | _placement_votes(group, removed_so_far, keep)
        scores = group_scores(group, model, scored, group_rule, "l1-norm" if strategy == "l1-norm" else "bn")
        block = is_inner(group)
        if int(keep.sum()) == 0 and block is not None and remove_empty_blocks:
            removed_blocks[block.name] = dataclasses.replace(block, emptied_bns=[bn for bn in group.bn_names if bn in block.inner_bns])
            notes.append(f"{block.name}: residual branch removed (no channel of {group.name} kept); the block is its shortcut")
            group_keep[group.name] = keep
            continue
        if block is not None and block.name in removed_blocks:
            group_keep[group.name] = torch.ones_like(keep)
            continue
        before = int(keep.sum())
        keep = keep_at_least(keep, scores, min_channels)
        if int(keep.sum()) != before:
            notes.append(f"{group.name}: kept {int(keep.sum())} channels (min_channels={min_channels}) instead of {before}")
        segments, problem = grouped_conv_segments(group)
        if round_to > 1 and not segments:
            keep = round_kept(keep, scores, round_to, "nearest" if strategy in RATIO_STRATEGIES else "up")
        if problem:
            notes.append(f"{group.name}: left whole ({problem})")
            keep = torch.ones_like(keep)
        for segs in segments:
            keep = balance_segments(keep, scores, segs, "mean" if strategy in RATIO_STRATEGIES else "max")
        group_keep[group.name] = keep
        for key, idxs in removals_of(group, keep).items():
            removed_so_far.setdefault(key, set()).update(idxs)

    removed: dict[tuple[str, str], set[int]] = {}
    by_name = analysis.group_by_name()
    for name, keep in group_keep.items():
        for key, idxs in removals_of(by_name[name], keep).items():
            removed.setdefault(key, set()).update(idxs)
    for block in removed_blocks.values():
        for bn in block.emptied_bns:
            removed[(bn, BOTH)] = set(range(_module(model, bn).num_features))
    all_prunable_bns = {bn for g in groups for bn in g.bn_names}
    for bn in sorted(all_prunable_bns):
        mask = torch.ones(_module(model, bn).num_features, dtype=torch.bool)
        mask[sorted(removed.get((bn, BOTH), ()))] = False
        if deleted_with_block(bn, list(removed_blocks)):
            mask[:] = False  # the whole branch is gone
        bn_keep[bn] = mask
    bn_keep = {bn: bn_keep[bn] for bn in sorted(all_prunable_bns)}
    gone = list(removed_blocks)
    decision = Decision(group_keep, removed, removed_blocks, bn_keep, thresholds, notes)
    decision.estimated_macs = estimate_macs(analysis, removed, gone)
    decision.estimated_macs_before = estimate_macs(analysis, {}, ())
    return decision


def search_threshold(
    analysis: ModelAnalysis,
    target_reduction: float,
    *,
    tolerance: float = 0.005,
    iterations: int = 40,
    **kwargs: object,
) -> tuple[float, Decision]:
    """Global |gamma| threshold (``fixed``) whose estimated MACs reduction is closest to the target.

    Bisection on the threshold between 0 and the largest scored |gamma|; stops within
    ``tolerance`` of the target. The reduction grows with the threshold.
    """
    if not 0.0 < float(target_reduction) < 1.0:
        raise PolarpruneError(f"target MACs reduction must be in (0, 1), got {target_reduction}")
    scored = _check_bn_names(analysis, kwargs.get("bn_names"), [])  # type: ignore[arg-type]
    if not scored:
        raise PolarpruneError("flops-target: the model has no prunable BatchNorm layer")
    top = max(float(bn_scores(analysis.model, [bn]).get(bn).max()) for bn in scored)  # type: ignore[union-attr]

    def reduction(decision: Decision) -> float:
        return 1.0 - decision.estimated_macs / max(1, decision.estimated_macs_before)

    low, high = 0.0, top * (1 + 1e-6) + 1e-12
    best_t, best = low, decide(analysis, "fixed", threshold=low, **kwargs)  # type: ignore[arg-type]
    if abs(reduction(best) - target_reduction) <= tolerance:
        return best_t, best
    for _ in range(iterations):
        middle = (low + high) / 2
        decision = decide(analysis, "fixed", threshold=middle, **kwargs)  # type: ignore[arg-type]
        value = reduction(decision)
        if abs(value - target_reduction) < abs(reduction(best) - target_reduction):
            best_t, best = middle, decision
        if abs(value - target_reduction) <= tolerance:
            break
        if value < target_reduction:
            low = middle
        else:
            high = middle
    got = reduction(best)
    best.notes.append(f"flops-target: threshold {best_t:.6g} gives an estimated MACs reduction of {got:.2%} (target {target_reduction:.2%})")
    return best_t, best


__all__ = [
    "ALL_STRATEGIES",
    "GROUP_RULES",
    "BlockInfo",
    "Decision",
    "decide",
    "search_threshold",
    "find_blocks",
    "vote",
    "keep_at_least",
    "balance_segments",
    "group_scores",
    "bn_scores",
]
