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
- ``select_channels`` / ``grad_threshold``: the pure strategies.

See docs/pruning.md for the rules.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import GROUP_RULES, SCORE_STRATEGIES as STRATEGIES, PruneOptions, STRATEGIES as ALL_STRATEGIES

_LAZY = {
    "prune_model": "api", "plan_pruning": "api", "prunable_bn_names": "api", "channel_groups": "api",
    "trial_macs_ratio": "trial", "TrialAnalysis": "trial", "ChannelGroup": "graph", "PruneReport": "report",
    "GroupRow": "report", "SelectionResult": "strategies", "grad_threshold": "strategies", "select_channels": "strategies",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, "PruneOptions", "ALL_STRATEGIES", "GROUP_RULES", "STRATEGIES"]
