"""What the stages of one run share (``StageContext``) and what a finished stage left (``StageRecord``).
Every stage function, the progressive stage included, takes this one context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle, build_data, probe_batch
from ..errors import PolarpruneError
from ..serialization import load_any_model
from ..sparsity.regularizers import regularizer_class
from ..sparsity.selection import regularized_bn_names
from .kinds import stage_kind
from .recipe import Recipe, stage_config
from .train import data_config_for


@dataclass
class StageRecord:
    """What a finished stage left (``done.json``)."""

    name: str
    data: dict[str, Any]

    @property
    def model_path(self) -> Path | None:
        path = self.data.get("model_path")
        return Path(path) if path else None


def json_default(value: Any) -> Any:
    """Paths and tensors as plain JSON values (the stages' ``done.json`` and ``report.json``)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class StageContext:
    """The state the stages of one run share: the recipe, the run folder, the finished stages."""

    def __init__(self, recipe: Recipe, run_dir: str | Path) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.records: dict[str, StageRecord] = {}
        self._data_bundle: DataBundle | None = None

    def first_training_stage(self) -> str:
        """The first stage that trains (its config says which data the run uses)."""
        training = [name for name in self.recipe.present_stages() if stage_kind(name).trains]
        if not training:
            raise PolarpruneError(f"recipe {self.recipe.name}: has no training stage to take the data settings from")
        return training[0]

    def data(self) -> DataBundle:
        """The recipe's data (evaluation split and probe batch), built once."""
        if self._data_bundle is None:
            cfg = stage_config(self.recipe, self.first_training_stage(), self.run_dir)
            self._data_bundle = build_data(data_config_for(cfg), seed=cfg.seed)
        return self._data_bundle

    def example_inputs(self) -> torch.Tensor:
        return probe_batch(self.data(), 8)

    def model_of(self, stage: str) -> nn.Module:
        """The final model of a completed stage, on the CPU in eval mode."""
        record = self.records.get(stage)
        if record is None or record.model_path is None:
            raise PolarpruneError(f"stage {stage!r} has no model (has it run?)")
        return load_any_model(record.model_path).cpu().eval()

    def bn_names(self, model: nn.Module, source: str) -> list[str]:
        """The BNs the source stage's regularizer chose (narrowed by ``sparsity.include``/``exclude``)."""
        if not stage_kind(source).trains:
            return regularized_bn_names(model, self.example_inputs())
        sparsity = stage_config(self.recipe, source, self.run_dir).sparsity
        method = regularizer_class(sparsity.regularizer).method
        return regularized_bn_names(model, self.example_inputs(), sparsity.include, sparsity.exclude, method=method)

    def distill_overrides(self, stage: str) -> dict[str, Any]:
        """``stage_config`` extras pointing ``distill.teacher`` at the teacher stage's model file (a path stays)."""
        spec = self.recipe.stages[stage]
        teacher = (getattr(spec, "distill", None) or {}).get("teacher")
        if teacher not in self.recipe.present_stages():
            return {}
        record = self.records.get(teacher)
        if record is None or record.model_path is None:
            raise PolarpruneError(f"stages.{stage}.distill.teacher: stage {teacher!r} has no model (has it run?)")
        return {"distill": {"teacher": str(record.model_path)}}
