"""The pipeline: a recipe's stages run in order, each in its own folder; a stage whose ``done.json``
(written atomically, last) exists is skipped, an interrupted training stage resumes from its ``last.pt``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from .. import distributed as dist
from ..fileio import atomic_write_json, atomic_write_text, read_json
from .recipe import Recipe
from .stages import STAGES, StageContext, StageRecord, json_default
from .train import resolve_device

log = logging.getLogger(__name__)


def write_done(stage_dir: Path, payload: dict[str, Any]) -> None:
    """Mark a stage complete (rank 0 writes; every rank waits for it)."""
    if dist.is_main():
        atomic_write_json(stage_dir / "done.json", payload, default=json_default)
    dist.barrier()


class Pipeline(StageContext):
    """Runs the stages of a recipe in ``run_dir``."""

    def run(self) -> dict[str, StageRecord]:
        """Run every stage not yet complete; return the records of all stages."""
        dist.init_from_env(resolve_device(self.recipe.device).type)  # join the group before rank-0-only steps
        if dist.is_main():
            atomic_write_text(self.run_dir / "recipe.yaml", _recipe_yaml(self.recipe))
        for stage in self.recipe.present_stages():
            stage_dir = self.run_dir / stage
            done = read_json(stage_dir / "done.json")
            if done is not None:
                log.info("[%s] complete, skipped", stage)
                self.records[stage] = StageRecord(stage, done)
                continue
            log.info("[%s] running", stage)
            if dist.is_main():
                stage_dir.mkdir(parents=True, exist_ok=True)
            payload = STAGES[stage](self, stage, stage_dir)
            payload["stage"] = stage
            write_done(stage_dir, payload)
            self.records[stage] = StageRecord(stage, payload)
        return self.records


def _recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
