"""Physical channel pruning: strategies (which channels), dependency groups, surgery, compensation.

Public API (loaded lazily, so ``polarprune.pruning.options`` imports without torch):

- ``prune_model(model, example_inputs, strategy, **options) -> (pruned, PruneReport)``: prunes a
  deep copy (``inplace=False``, the default) or the model itself; the pruned model's
  ``polarprune_spec`` gains a ``"plan"`` so ``serialization.save/load`` can rebuild it;
- ``plan_pruning(...) -> dict[BN name, keep mask]``: what ``prune_model`` would keep, per BN;
- ``trial_macs_ratio(...)`` / ``TrialAnalysis``: the MACs ratio ``prune_model`` would give,
  from one analysis reused for every decision (sparsity training's monitor);
- ``PruneOptions``: every option, validated (shared by the API, the commands and recipes);
- ``prunable_bn_names(model, example_inputs)``, ``channel_groups(model, example_inputs)``;
- ``select_channels`` / ``grad_threshold``: the pure strategies;
- ``STRATEGIES`` / ``register_strategy`` / ``Strategy``, ``GROUP_RULES``: the records (``registry.py``);
- ``CostModel`` / ``MacsCost``: the cost seam (``cost.py``); ``LatencyCost`` / ``profile_latency``: predicted
  latency from per-layer tables (``latency_cost.py``);
- ``Budget``: the time and memory a pruning call may use (``budget.py``; ``budget=`` of the calls above).

See docs/pruning.md for the rules.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import PruneOptions
from .registry import GROUP_RULES, SCORE_STRATEGIES, STRATEGIES, GroupRule, Strategy, register_group_rule, register_strategy

ALL_STRATEGIES = STRATEGIES  # the old name: ``STRATEGIES`` now means every strategy everywhere

_LAZY = {
    "prune_model": "api", "plan_pruning": "api", "prunable_bn_names": "api", "channel_groups": "api",
    "trial_macs_ratio": "trial", "TrialAnalysis": "trial", "ChannelGroup": "graph", "PruneReport": "report",
    "GroupRow": "report", "SelectionResult": "strategies", "grad_threshold": "strategies", "select_channels": "strategies",
    "CostModel": "cost", "MacsCost": "cost", "LatencyCost": "latency_cost", "profile_latency": "latency_cost",
    "Budget": "budget", "DEFAULT_BUDGET": "budget",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, "PruneOptions", "ALL_STRATEGIES", "GROUP_RULES", "STRATEGIES", "SCORE_STRATEGIES", "Strategy", "GroupRule",
           "register_strategy", "register_group_rule"]
