"""The composition root: what turns configs and recipes into built objects and runs them
(``train``, ``recipe``, ``stages``, ``pipeline``, ``summary``). Nothing below this package imports it."""

from . import stages  # registers the built-in stage kinds (kinds.STAGE_KINDS) before any recipe is read
from .kinds import STAGE_KINDS, StageKind, register_stage_kind
from .pipeline import Pipeline
from .recipe import Recipe, load_recipe
from .summary import summarize
from .train import build_trainer, run_training

__all__ = ["STAGE_KINDS", "StageKind", "register_stage_kind", "Pipeline", "Recipe", "build_trainer", "load_recipe", "run_training", "summarize"]
