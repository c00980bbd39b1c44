"""``latency-target``: remove the least important channels per unit of predicted latency saved until
the predicted latency is at most ``1 - target_latency_reduction`` of the unpruned model's.

The cost model is the caller's (``decide(..., cost=)``): ``polarprune.deploy.latency_cost`` builds a
``LatencyCost`` for a runtime, batch and thread count; tests hand in one built from a fake runtime.
Pruning never imports deploy. Greedy, one step at a time: every scored group offers its next cut
(down to the next width its ``cost.steps`` says pays, its lowest-|gamma| channels first); the cut
with the lowest summed score per ms saved goes, and the last one is the cut that lands closest below
the target. Every group keeps at least ``max(1, min_channels)``
channels, so no residual branch is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import PolarpruneError
from .base import Removals
from .cost import CostModel, MacsCost
from .graph import ChannelGroup, ModelAnalysis
from .options import PruneOptions
from .resolve import Choice, Decision, decision_of, group_scores, removals_of, scored_bns, search_threshold


@dataclass
class Cut:
    """A group's next cut: the kept mask after it, the summed score of the channels it removes, the ms it saves."""

    keep: Tensor
    score: float
    saving: float

    @property
    def price(self) -> float:
        """Score given up per ms saved (lower goes first)."""
        return self.score / self.saving


@dataclass
class _Greedy:
    """The greedy search's state: per group its keep mask, removal order and removals."""

    analysis: ModelAnalysis
    cost: CostModel
    keep: dict[str, Tensor] = field(default_factory=dict)
    order: dict[str, list[int]] = field(default_factory=dict)  # removable channels, lowest score first
    scores: dict[str, Tensor] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)
    removals: dict[str, Removals] = field(default_factory=dict)

    def removed(self, replace: Mapping[str, Removals] | None = None) -> Removals:
        """Every group's removals merged (``replace``: some groups' removals swapped for others)."""
        merged: Removals = {}
        for removals in {**self.removals, **(replace or {})}.values():
            for key, idxs in removals.items():
                merged.setdefault(key, set()).update(idxs)
        return merged

    def cut(self, group: ChannelGroup, floor: int, now: float) -> Cut | None:
        """The group's next cut, or None when it cannot shrink further or nothing is saved."""
        keep = self.keep[group.name]
        width = int(keep.sum())
        lower = [s for s in self.steps[group.name] if floor <= s < width]
        gone = width - (lower[-1] if lower else 0)
        removable = [c for c in self.order[group.name] if keep[c]]
        if not lower or len(removable) < gone:
            return None
        new = keep.clone()
        new[removable[:gone]] = False
        saving = now - self.cost.cost(self.analysis, self.removed({group.name: removals_of(group, new)}))
        score = float(self.scores[group.name][removable[:gone]].sum())
        return Cut(new, score, saving) if saving > 0 else None


def _start(analysis: ModelAnalysis, options: PruneOptions, cost: CostModel) -> tuple[_Greedy, list[ChannelGroup], set[str]]:
    scored = scored_bns(analysis, options, [])
    if not scored:
        raise PolarpruneError(f"{options.strategy}: the model has no prunable BatchNorm layer")
    groups = [g for g in analysis.prunable_groups() if any(bn in scored for bn in g.bn_names)]
    state = _Greedy(analysis, cost)
    for group in groups:
        scores = group_scores(group, analysis.model, scored, options.group_rule)
        state.scores[group.name] = scores
        state.keep[group.name] = torch.ones(group.num_channels, dtype=torch.bool)
        finite = [int(c) for c in torch.sort(scores, stable=True).indices if torch.isfinite(scores[c])]
        state.order[group.name] = finite
        state.steps[group.name] = sorted(int(s) for s in cost.steps(analysis, group))
        state.removals[group.name] = {}
    return state, groups, scored


def _neighbours(groups: Sequence[ChannelGroup]) -> dict[str, set[str]]:
    """Per group, the groups sharing a layer with it (their cuts' savings change when it shrinks)."""
    layers = {g.name: {item.module_name for item in g.items} for g in groups}
    return {g.name: {h.name for h in groups if layers[g.name] & layers[h.name]} for g in groups}


def _next_cut(offers: Mapping[str, Cut], now: float, goal: float) -> str:
    """The group whose cut goes next: the lowest score per ms saved; once some cut reaches the goal, the
    one of those landing closest to it (a last cut of a coarse grid would otherwise overshoot)."""
    reaching = [name for name, cut in offers.items() if now - cut.saving <= goal]
    if reaching:
        return max(reaching, key=lambda n: (now - offers[n].saving, -offers[n].price))
    return min(offers, key=lambda n: offers[n].price)


def latency_target_of(options: PruneOptions, cost: CostModel | None) -> float:
    """The latency reduction a latency strategy aims at, checked with its cost model (one line when either is wrong)."""
    target = options.target_latency_reduction
    if target is None or not 0.0 < float(target) < 1.0:
        raise PolarpruneError(f"target latency reduction must be in (0, 1), got {target}")
    if cost is None or isinstance(cost, MacsCost):
        raise PolarpruneError(f"strategy {options.strategy!r} needs a latency cost model: prune with "
                              "polarprune.deploy.prune_to_latency or `polarprune prune`")
    return float(target)


def search_latency_threshold(analysis: ModelAnalysis, options: PruneOptions, *, quiet: bool = False,
                             cost: CostModel | None = None, widths: CostModel | None = None) -> Decision:
    """``latency-threshold``: flops-target's search on the latency cost model: the one global |gamma| threshold
    whose predicted latency reduction is closest to ``target_latency_reduction``. Unlike latency-target's greedy it
    never trades a larger gamma for a larger saving: the smallest gammas go, wherever they are."""
    target = latency_target_of(options, cost)
    return search_threshold(analysis, options.model_copy(update={"target_macs_reduction": target}), quiet=quiet,
                            cost=cost, widths=widths)  # type: ignore[arg-type]


def select_latency_target(analysis: ModelAnalysis, options: PruneOptions, *, quiet: bool = False,
                          cost: CostModel | None = None, widths: CostModel | None = None) -> Decision:
    """The greedy decision whose predicted cost is at most ``1 - target_latency_reduction`` of the unpruned."""
    target = latency_target_of(options, cost)
    assert cost is not None  # latency_target_of refused None
    state, groups, scored = _start(analysis, options, cost)
    floor = max(1, options.min_channels)
    before = now = cost.cost(analysis, {}, ())
    goal = (1.0 - target) * before
    by_name, near = {g.name: g for g in groups}, _neighbours(groups)
    cuts = {g.name: state.cut(g, floor, now) for g in groups}
    while now > goal:
        offers = {name: c for name, c in cuts.items() if c is not None}
        if not offers:
            break
        name = _next_cut(offers, now, goal)
        state.keep[name] = offers[name].keep
        state.removals[name] = removals_of(by_name[name], state.keep[name])
        now = cost.cost(analysis, state.removed(), ())
        cuts.update({other: state.cut(by_name[other], floor, now) for other in near[name]})
    notes = [f"{options.strategy}: predicted {cost.name} {now:.4g} vs {before:.4g} unpruned, a reduction of "
             f"{1.0 - now / before:.2%} (target {target:.2%})"]
    if now > goal:
        notes.append(f"{options.strategy}: no further cut saves {cost.name}; the target is not reached")
    return decision_of(analysis, Choice({}, dict(state.keep), {}, scored), options, notes, cost, widths)


__all__ = ["Cut", "select_latency_target"]
