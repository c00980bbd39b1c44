"""Recipes: the schema of a whole experiment (base sections and stages), and how one is loaded.
Stages, in the order of ``Stages`` (a recipe names the ones it runs):

- ``baseline``      train without regularizer;
- ``sparsity``      sparsity training (``none``/``l1``/``polarization``), from scratch or a stage;
- ``mask``          MaskSparsity: decide which channels will go (a mask file) from a stage;
- ``mask_sparsity`` L1 on the masked channels only, from the baseline's weights;
- ``prune``         remove channels physically (a strategy), save the pruned model;
- ``progressive``   prune a share and fine-tune, ``steps`` times, to a MACs target (``progressive.py``);
- ``finetune``      train the pruned model;
- ``scratch``       train the pruned architecture from random init (Scratch-E, or Scratch-B
                    with epochs scaled by the MACs ratio).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from ..config import Section, TrainConfig, apply_overrides, deep_merge, read_yaml, validate
from ..data import get_source
from ..errors import PolarpruneError
from ..pruning import registry as pruning_registry
from ..pruning.options import PruneOptions, StrategyName

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


class TrainStage(Section):
    """A training stage: overrides of the recipe's base sections, and where its weights start."""

    init: str | None = Field(None, description="stage whose final weights this one starts from (None: default)")
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    sparsity: dict[str, Any] = Field(default_factory=dict)
    distill: dict[str, Any] | None = Field(
        None, description="knowledge distillation: {teacher: an earlier stage or a model file, temperature, alpha}"
    )


class ScratchStage(TrainStage):
    """Train the pruned architecture from random init; ``B`` scales epochs by the MACs ratio."""

    budget: Literal["E", "B"] = "B"


class PruneStage(PruneOptions):
    """The ``mask`` and ``prune`` stages: ``PruneOptions`` (the API's and the commands' options)
    and the stage whose model is pruned. The BNs scored are those the source stage regularized."""

    init: str | None = Field(None, description="stage whose model is pruned (None: default)")
    strategy: StrategyName = Field("grad", description="how channels are chosen")


# the option of each strategy that progressive pruning sets to aim at a round's MACs
PROGRESSIVE_KNOBS = pruning_registry.PROGRESSIVE_KNOBS  # the strategy records' knobs, read at every use


class ProgressiveStage(TrainStage):
    """Progressive pruning: ``steps`` rounds of pruning a share of the MACs and fine-tuning
    (``train``: each round's fine-tuning) to ``target_macs_reduction`` of the source's MACs."""

    steps: int = Field(3, ge=1, description="rounds of prune + fine-tune")
    target_macs_reduction: float = Field(gt=0, lt=1, description="MACs reduction after the last round, in (0, 1)")
    strategy: StrategyName = Field("flops-target", description="how each round chooses channels (its knob is aimed at the round's MACs)")
    prune: dict[str, Any] = Field(default_factory=dict, description="other PruneOptions of every round (group_rule, min_channels, round_to, ...)")

    @model_validator(mode="after")
    def _aimable(self) -> "ProgressiveStage":
        if self.strategy not in PROGRESSIVE_KNOBS:
            raise ValueError(
                f"strategy {self.strategy!r} has no option to aim at a MACs target; use one of {', '.join(PROGRESSIVE_KNOBS)}"
            )
        fixed = {"strategy", PROGRESSIVE_KNOBS[self.strategy], "bn_names", "masks"} & set(self.prune)
        if fixed:
            raise ValueError(f"prune.{sorted(fixed)[0]} is set by the stage itself")
        PruneOptions(**self.prune_options())  # the other options are checked now
        return self

    def prune_options(self) -> dict[str, Any]:
        """The rounds' ``PruneOptions`` fields; the knob holds a placeholder each round replaces."""
        knob = PROGRESSIVE_KNOBS[self.strategy]
        placeholder = self.target_macs_reduction if knob == "target_macs_reduction" else 0.0
        return {**self.prune, "strategy": self.strategy, knob: placeholder}


class Stages(Section):
    """The stages a recipe runs; the field order is the order they run in."""

    baseline: TrainStage | None = None
    sparsity: TrainStage | None = None
    mask: PruneStage | None = None
    mask_sparsity: TrainStage | None = None
    prune: PruneStage | None = None
    progressive: ProgressiveStage | None = None
    finetune: TrainStage | None = None
    scratch: ScratchStage | None = None


STAGE_ORDER: list[str] = list(Stages.model_fields)
TRAINING_STAGES: set[str] = {  # the stages that train a model (their section is a TrainStage)
    name for name, field in Stages.model_fields.items() if issubclass(get_args(field.annotation)[0], TrainStage)
}


class Recipe(Section):
    """A whole experiment: base sections shared by every training stage, and the stages."""

    name: str = "recipe"
    description: str = ""
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    sparsity: dict[str, Any] = Field(default_factory=dict)
    stages: Stages = Field(default_factory=Stages)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value:
            raise ValueError("must be a non-empty name without '/'")
        return value

    @model_validator(mode="after")
    def _check_stages(self) -> "Recipe":
        present = self.present_stages()
        if not present:
            raise ValueError("stages: a recipe needs at least one stage")
        s = self.stages
        if s.mask_sparsity is not None and s.mask is None:
            raise ValueError("stages.mask_sparsity needs a stages.mask stage (the mask it regularizes)")
        if s.mask is not None and s.mask.strategy == "mask":
            raise ValueError("stages.mask.strategy cannot be 'mask'")
        if (s.finetune is not None or s.scratch is not None) and s.prune is None:
            raise ValueError("stages.finetune and stages.scratch need a stages.prune stage")
        for name in present:
            init = getattr(s, name).init
            if init is not None and (init not in present or STAGE_ORDER.index(init) >= STAGE_ORDER.index(name)):
                raise ValueError(f"stages.{name}.init: {init!r} is not an earlier stage of this recipe")
            teacher = (getattr(getattr(s, name), "distill", None) or {}).get("teacher")
            if teacher in STAGE_ORDER and (teacher not in present or STAGE_ORDER.index(teacher) >= STAGE_ORDER.index(name)):
                raise ValueError(f"stages.{name}.distill.teacher: {teacher!r} is not an earlier stage of this recipe")
        return self

    def present_stages(self) -> list[str]:
        return [name for name in STAGE_ORDER if getattr(self.stages, name) is not None]


def builtin_recipes() -> dict[str, Path]:
    """Recipe name -> file, for the recipes shipped in the package."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe given by built-in name or by file path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if name_or_path in builtin:
        return builtin[name_or_path]
    if path.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        raise PolarpruneError(f"recipe file not found: {name_or_path}")
    raise PolarpruneError(f"unknown recipe {name_or_path!r}; `polarprune recipes` lists the built-in ones")


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe, including every training stage's merged config."""
    path = resolve_recipe_path(name_or_path)
    data = apply_overrides(read_yaml(path), overrides or [])
    recipe = validate(Recipe, data, source=f"recipe {path.name}")
    for stage in recipe.present_stages():
        if stage in TRAINING_STAGES:
            get_source(stage_config(recipe, stage, Path(".")).data.name)  # validates now, before anything runs
    return recipe


def stage_config(recipe: Recipe, stage: str, run_dir: Path, **extra: Any) -> TrainConfig:
    """The full training config of a training stage: base sections merged with the stage's."""
    spec: TrainStage = getattr(recipe.stages, stage)
    data: dict[str, Any] = {
        "seed": recipe.seed, "deterministic": recipe.deterministic, "device": recipe.device, "out": str(run_dir / stage),
        "model": recipe.model, "data": recipe.data, "train": recipe.train,
        "sparsity": recipe.sparsity if stage in ("sparsity", "mask_sparsity") else {},
    }
    data = deep_merge(data, {k: getattr(spec, k) for k in ("model", "data", "train", "sparsity")})
    if spec.distill is not None:
        data["distill"] = spec.distill
    if stage in ("baseline", "progressive", "finetune", "scratch"):
        data["sparsity"] = deep_merge({"regularizer": "none", "monitor": False}, spec.sparsity)
    if stage == "mask_sparsity":
        data["sparsity"] = deep_merge({"regularizer": "mask-l1"}, data["sparsity"])
        data["sparsity"].setdefault("mask", str(run_dir / "mask" / "mask.json"))
    data = deep_merge(data, extra)
    return validate(TrainConfig, data, source=f"recipe {recipe.name}: stages.{stage}")


def default_init(recipe: Recipe, stage: str) -> str | None:
    """Where a stage's weights come from when the recipe does not say."""
    spec = getattr(recipe.stages, stage)
    if spec.init:
        return spec.init
    present = recipe.present_stages()
    candidates = {
        "sparsity": ("baseline",),
        "mask": ("sparsity", "baseline"),
        "mask_sparsity": ("baseline",),
        "prune": ("mask_sparsity", "sparsity", "baseline"),
        "progressive": ("mask_sparsity", "sparsity", "baseline"),
        "finetune": ("prune",),
        "scratch": ("prune",),
    }.get(stage, ())
    return next((c for c in candidates if c in present), None)
