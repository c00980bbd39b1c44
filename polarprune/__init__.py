"""polarprune: structured channel pruning of CNNs through sparsity training.

The main Python entry points (imported lazily, so ``import polarprune`` stays light):

- ``polarprune.models.create(name, num_classes=...)``: build a model;
- ``polarprune.prune_model(model, example_inputs, strategy=..., ...)``: remove channels;
- ``polarprune.save(model, path)`` / ``polarprune.load(path)``: self-describing model files;
- ``polarprune.count_model(model, input_shape)``: MACs, FLOPs, params;
- ``polarprune.run_training(cfg)``: one training run from a ``TrainConfig``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import PolarpruneError

__version__ = "0.1.0"

_LAZY = {
    "prune_model": ("polarprune.pruning", "prune_model"),
    "plan_pruning": ("polarprune.pruning", "plan_pruning"),
    "save": ("polarprune.serialization", "save"),
    "load": ("polarprune.serialization", "load"),
    "count_model": ("polarprune.flops", "count_model"),
    "run_training": ("polarprune.training.engine", "run_training"),
    "TrainConfig": ("polarprune.config", "TrainConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'polarprune' has no attribute {name!r}")


__all__ = ["PolarpruneError", "__version__", *_LAZY]
