"""The records of pruning: what a strategy is and what a group rule is, one registry each.

This module imports neither torch nor the rest of ``polarprune.pruning``: options validation, the
commands' ``--help`` and the recipe schema read it. A record names its function by an import path
(``"polarprune.pruning.strategies:select_grad"``) or holds a callable; the function is imported only
when a pruning runs.

Adding a strategy is one record plus its function::

    register_strategy(Strategy("keep-first-half", decides="bn", select=my_selection))

``my_selection(scores, args) -> (keep, thresholds, notes)`` gets the scored layers' ``|gamma|``
(``scores``: layer name -> 1-D tensor) and the options (``args``: ``threshold``, ``percent``,
``ratio``, ``seed``, ``warn``, ``strategy``); see ``strategies.py`` for the built-in ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar

from ..errors import PolarpruneError

V = TypeVar("V")

# how a strategy decides: per BN on its own scores, per group on aggregated scores,
# by searching a cost target, or from the user's masks
Decides = Literal["bn", "group", "search", "user"]
DECIDES: tuple[str, ...] = ("bn", "group", "search", "user")
# what a strategy ranks channels by: BN |gamma|, or the producing filters' L1 norms
Score = Literal["gamma", "filter-l1"]


def resolve_function(ref: str | Callable[..., Any] | None, what: str) -> Callable[..., Any]:
    """The callable behind ``ref`` (a callable, or ``"module:attribute"`` imported now)."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or ":" not in ref:
        raise PolarpruneError(f"{what} has no function")
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Strategy:
    """One pruning strategy (docs/pruning.md): what it needs, how it decides, which knob sets how much.

    ``needs``: the ``PruneOptions`` field that must be set (None: none), ``hint`` says what it holds;
    ``knob``: the field that sets how much is pruned (what the progressive stage aims, None: nothing),
    ``knob_scale``: its range (``fraction``: [0, 1]; ``gamma``: up to the largest |gamma|);
    ``aims``: for a search, the strategy whose knob it searches; ``cost``: the cost model it needs
    (``latency``: a ``LatencyCost`` the caller builds for a runtime, ``deploy.prune_to_latency``); ``select``: the selection function
    (``bn``/``group``: ``(scores, args) -> (keep, thresholds, notes)``; ``search``:
    ``(analysis, options, quiet=, cost=) -> Decision``; ``user``: none, the masks are the choice).
    """

    name: str
    decides: Decides
    knob: str | None = None
    knob_scale: Literal["fraction", "gamma"] = "fraction"
    needs: str | None = None
    hint: str = ""
    score: Score = "gamma"
    select: str | Callable[..., Any] | None = None
    aims: str | None = None
    needs_cost_model: bool = False
    cost: Literal["macs", "latency"] = "macs"
    progressive: bool = True
    description: str = ""

    @property
    def needs_mask_file(self) -> bool:
        """The user gives the masks (``prune --mask FILE``, a recipe's mask stage)."""
        return self.decides == "user"

    @property
    def needs_gammas(self) -> bool:
        """The decision reads BN ``|gamma|`` (else filter norms or the user's masks)."""
        return self.score == "gamma" and self.decides != "user"

    @property
    def from_scores(self) -> bool:
        """Picks channels from per-layer scores alone (``select_channels``, the mask command)."""
        return self.decides in ("bn", "group")

    @property
    def aimable(self) -> bool:
        """The progressive stage can aim its knob at a round's cost."""
        return self.progressive and self.knob is not None

    def function(self) -> Callable[..., Any]:
        """The selection function (imported on first use)."""
        return resolve_function(self.select, f"strategy {self.name!r}")


@dataclass(frozen=True)
class GroupRule:
    """How the scored BNs of one group agree (docs/pruning.md): ``vote(yes, total, own_prunes) -> keep``
    over the group's channels for per-BN decisions, ``aggregate`` (max, min, mean) of the BNs' scores
    for per-group decisions."""

    name: str
    vote: str | Callable[..., Any]
    aggregate: Literal["max", "min", "mean"]
    description: str = ""

    def voter(self) -> Callable[..., Any]:
        return resolve_function(self.vote, f"group rule {self.name!r}")


STRATEGIES: dict[str, Strategy] = {}
GROUP_RULES: dict[str, GroupRule] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add ``strategy`` (a later record of the same name replaces the earlier one)."""
    if not strategy.name or strategy.decides not in DECIDES:
        raise PolarpruneError(f"strategy {strategy.name!r}: needs a name and decides in {', '.join(DECIDES)}")
    if strategy.decides in ("bn", "group", "search") and strategy.select is None:
        raise PolarpruneError(f"strategy {strategy.name!r} decides by {strategy.decides!r}: it needs a select function")
    STRATEGIES[strategy.name] = strategy
    return strategy


def unregister_strategy(name: str) -> None:
    """Remove a strategy (tests that add a toy one)."""
    STRATEGIES.pop(name, None)


def register_group_rule(rule: GroupRule) -> GroupRule:
    GROUP_RULES[rule.name] = rule
    return rule


def lookup(records: Mapping[str, V], name: str, what: str) -> V:
    """``records[name]``; a one-line error naming ``what`` and the known names."""
    if name not in records:
        raise PolarpruneError(f"unknown {what} {name!r}; choose one of {', '.join(records)}")
    return records[name]


def strategy(name: str) -> Strategy:
    """The record of ``name``; a one-line error naming the known ones."""
    return lookup(STRATEGIES, name, "pruning strategy")


class LiveView(Mapping[str, V]):
    """A read-only selection of a registry, recomputed at every use (a later record shows up)."""

    def __init__(self, build: Callable[[], dict[str, V]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> V:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return f"LiveView({list(self)})"


# derived views (names kept for the readers outside this package)
SCORE_STRATEGIES: Mapping[str, Strategy] = LiveView(lambda: {n: s for n, s in STRATEGIES.items() if s.from_scores})
RATIO_STRATEGIES: Mapping[str, Strategy] = LiveView(lambda: {n: s for n, s in STRATEGIES.items() if s.decides == "group"})
STRATEGY_NEEDS: Mapping[str, str | None] = LiveView(lambda: {n: s.needs for n, s in STRATEGIES.items()})
PROGRESSIVE_KNOBS: Mapping[str, str] = LiveView(lambda: {n: s.knob for n, s in STRATEGIES.items() if s.aimable})  # type: ignore[misc]

_SELECT = "polarprune.pruning.strategies:"
_VOTE = "polarprune.pruning.votes:"

for _record in (
    Strategy("grad", "bn", select=_SELECT + "select_grad", progressive=False,
             description="per BN, the first valley of its |gamma| histogram"),
    Strategy("fixed", "bn", knob="threshold", knob_scale="gamma", select=_SELECT + "select_fixed", description="one global |gamma| threshold"),
    Strategy("percent", "bn", knob="percent", needs="percent", hint=" in [0, 1] (a fraction)", select=_SELECT + "select_percent",
             description="the smallest fraction of all scored |gamma| goes (global quantile)"),
    Strategy("uniform", "group", knob="ratio", needs="ratio", select=_SELECT + "select_smallest",
             description="the smallest fraction of every group's |gamma| goes"),
    Strategy("l1-norm", "group", knob="ratio", needs="ratio", score="filter-l1", select=_SELECT + "select_smallest",
             description="the smallest fraction of every group's filter L1 norms goes"),
    Strategy("random", "group", knob="ratio", needs="ratio", select=_SELECT + "select_random",
             description="a seeded random fraction of every group goes"),
    Strategy("mask", "user", needs="masks", hint=" (BN name -> keep vector)", progressive=False,
             description="the user's keep masks"),
    Strategy("flops-target", "search", knob="target_macs_reduction", needs="target_macs_reduction", hint=" in (0, 1)",
             select="polarprune.pruning.resolve:search_threshold", aims="fixed", needs_cost_model=True,
             description="the fixed threshold whose estimated cost reduction is closest to the target"),
    Strategy("latency-target", "search", knob="target_latency_reduction", needs="target_latency_reduction", hint=" in (0, 1)",
             select="polarprune.pruning.latency_target:select_latency_target", needs_cost_model=True, cost="latency",
             progressive=False,
             description="the least important channels per ms of predicted latency saved go, until the target is reached"),
    Strategy("latency-threshold", "search", knob="target_latency_reduction", needs="target_latency_reduction", hint=" in (0, 1)",
             select="polarprune.pruning.latency_target:search_latency_threshold", aims="fixed", needs_cost_model=True,
             cost="latency", progressive=False,
             description="the global |gamma| threshold whose predicted latency reduction is closest to the target (flops-target's search on latency)"),
):
    register_strategy(_record)

for _rule in (
    GroupRule("any", _VOTE + "vote_any", "max", "a channel stays while any scored BN keeps it"),
    GroupRule("all", _VOTE + "vote_all", "min", "a channel stays only if every scored BN keeps it"),
    GroupRule("mean", _VOTE + "vote_mean", "mean", "a channel stays if at least half of the scored BNs keep it"),
    GroupRule("masksparsity", _VOTE + "vote_masksparsity", "max", "MaskSparsity's relaxing vote"),
):
    register_group_rule(_rule)

BUILTIN_STRATEGIES: tuple[str, ...] = tuple(STRATEGIES)
BUILTIN_GROUP_RULES: tuple[str, ...] = tuple(GROUP_RULES)

__all__ = ["Strategy", "GroupRule", "STRATEGIES", "GROUP_RULES", "register_strategy", "unregister_strategy",
           "register_group_rule", "strategy", "LiveView", "SCORE_STRATEGIES", "RATIO_STRATEGIES", "STRATEGY_NEEDS",
           "PROGRESSIVE_KNOBS", "BUILTIN_STRATEGIES", "BUILTIN_GROUP_RULES", "resolve_function", "lookup", "DECIDES"]
