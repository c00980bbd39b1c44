"""polarprune: structured channel pruning of CNNs through sparsity training.

The main Python entry points (imported lazily, so ``import polarprune`` stays light):

- ``polarprune.models.create(name, num_classes=...)``: build a model;
- ``polarprune.prune_model(model, example_inputs, strategy=..., ...)``: remove channels (``round_to: auto``,
  the default, keeps the widths that pay in the chosen runtime, eager unless ``runtime=`` says otherwise);
- ``polarprune.save(model, path)`` / ``polarprune.load(path, model=None, trust_code=False)``:
  self-describing model files for any ``nn.Module`` (``model=``: load into your fresh instance);
- ``polarprune.count_model(model, input_shape)``: MACs, FLOPs, params;
- ``polarprune.run_training(cfg)``: one training run from a ``TrainConfig``.

Every subpackage and module is an attribute too (``polarprune.models``, ``polarprune.pruning``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import PolarpruneError

__version__ = "0.1.0"

_LAZY = {
    "prune_model": ("polarprune.deploy.latency_cost", "prune_for_runtime"),  # round_to auto: the runtime's widths
    "plan_pruning": ("polarprune.pruning", "plan_pruning"),
    "save": ("polarprune.serialization", "save"),
    "load": ("polarprune.serialization", "load"),
    "count_model": ("polarprune.flops", "count_model"),
    "run_training": ("polarprune.workflows.train", "run_training"),
    "TrainConfig": ("polarprune.config", "TrainConfig"),
}


def _submodules() -> set[str]:
    """Names of polarprune's subpackages and modules (``polarprune.models``, ``polarprune.pruning``, ...)."""
    import pkgutil

    return {info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}


def __getattr__(name: str) -> Any:
    """Lazy attributes: the entry points above and every subpackage/module, imported on first use."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _submodules():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'polarprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _submodules())


__all__ = ["PolarpruneError", "__version__", *_LAZY]
