"""The pipeline: a recipe's stages run in order, each in its own folder, by their kind's ``run``
(``kinds.STAGE_KINDS``); a stage whose ``done.json`` (written atomically, last) exists is skipped, an
interrupted training stage resumes from its ``last.pt``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from .. import distributed as dist
from ..fileio import atomic_write_json, atomic_write_text, read_json
from .context import StageContext, StageRecord, json_default
from .kinds import stage_kind
from .recipe import Recipe
from .train import resolve_device

log = logging.getLogger(__name__)


def write_done(stage_dir: Path, payload: dict[str, Any]) -> None:
    """Mark a stage complete (rank 0 writes; every rank waits for it)."""
    if dist.is_main():
        atomic_write_json(stage_dir / "done.json", payload, default=json_default)
    dist.barrier()


class Pipeline:
    """Runs the stages of a recipe in ``run_dir``; the stages share ``context``."""

    def __init__(self, recipe: Recipe, run_dir: str | Path) -> None:
        self.context = StageContext(recipe, run_dir)

    def run(self) -> dict[str, StageRecord]:
        """Run every stage not yet complete; return the records of all stages."""
        ctx = self.context
        dist.init_from_env(resolve_device(ctx.recipe.device).type)  # join the group before rank-0-only steps
        if dist.is_main():
            atomic_write_text(ctx.run_dir / "recipe.yaml", _recipe_yaml(ctx.recipe))
        for stage in ctx.recipe.present_stages():
            stage_dir = ctx.run_dir / stage
            done = read_json(stage_dir / "done.json")
            if done is not None:
                log.info("[%s] complete, skipped", stage)
                ctx.records[stage] = StageRecord(stage, done)
                continue
            log.info("[%s] running", stage)
            if dist.is_main():
                stage_dir.mkdir(parents=True, exist_ok=True)
            payload = stage_kind(stage).run(ctx, stage, stage_dir)
            payload["stage"] = stage
            write_done(stage_dir, payload)
            ctx.records[stage] = StageRecord(stage, payload)
        return ctx.records


def _recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
