"""The composition root: what turns configs and recipes into built objects and runs them
(``train``, ``recipe``, ``stages``, ``pipeline``, ``summary``). Nothing below this package imports it."""

from .pipeline import Pipeline
from .recipe import Recipe, load_recipe
from .summary import summarize
from .train import build_trainer, run_training

__all__ = ["Pipeline", "Recipe", "build_trainer", "load_recipe", "run_training", "summarize"]
