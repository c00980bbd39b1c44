"""Recipes: the schema of a whole experiment (base sections and stages), and how one is loaded.
Each stage is validated by its kind's schema (``kinds.STAGE_KINDS``). The built-in kinds, in the
order they run (a recipe names the ones it runs):

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

import copy
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import (Section, TrainConfig, deep_merge, describe_validation_error, parse_override, read_yaml, set_path,
                      validate)
from ..data import get_source
from ..deploy.runtimes import runtime
from ..errors import PolarpruneError
from ..pruning import registry as pruning_registry
from ..pruning.options import PruneOptions, StrategyName
from ..sparsity.regularizers import resolve_sparsity
from .kinds import STAGE_KINDS, stage_kind

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


class MaskStage(PruneStage):
    """The ``mask`` stage: a prune stage's options; its strategy makes the mask, so it is not ``mask``."""

    @model_validator(mode="after")
    def _not_from_a_mask(self) -> "MaskStage":
        if self.strategy_record.needs_mask_file:
            raise ValueError(f"strategy cannot be {self.strategy!r} (this stage makes the mask)")
        return self


# the option of each strategy that progressive pruning sets to aim at a round's MACs
PROGRESSIVE_KNOBS = pruning_registry.PROGRESSIVE_KNOBS  # the strategy records' knobs, read at every use


class ProgressiveStage(TrainStage):
    """Progressive pruning: ``steps`` rounds of pruning a share of the MACs (or of the predicted latency)
    and fine-tuning (``train``: each round's fine-tuning) to ``target_macs_reduction`` of the source's MACs
    (or ``target_latency_reduction`` of its latency in ``prune.runtime`` at ``prune.batch``, ``prune.threads``)."""

    steps: int = Field(3, ge=1, description="rounds of prune + fine-tune")
    target_macs_reduction: float | None = Field(None, gt=0, lt=1, description="MACs reduction after the last round, in (0, 1)")
    target_latency_reduction: float | None = Field(
        None, gt=0, lt=1, description="instead of target_macs_reduction: predicted latency reduction after the last round, in (0, 1), "
        "in prune.runtime at prune.batch and prune.threads (the latency cost model of the source model)")
    strategy: StrategyName = Field("flops-target", description="how each round chooses channels (its knob is aimed at the round's MACs)")
    prune: dict[str, Any] = Field(default_factory=dict, description="other PruneOptions of every round (group_rule, min_channels, round_to, ...)")

    @model_validator(mode="after")
    def _aimable(self) -> "ProgressiveStage":
        if (self.target_macs_reduction is None) == (self.target_latency_reduction is None):
            raise ValueError("give exactly one of target_macs_reduction and target_latency_reduction")
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
        placeholder = self.target_reduction if knob in ("target_macs_reduction", "target_latency_reduction") else 0.0
        return {**self.prune, "strategy": self.strategy, knob: placeholder}

    @property
    def target_reduction(self) -> float:
        """The reduction the last round reaches, of the MACs or of the predicted latency."""
        return float(self.target_macs_reduction if self.target_macs_reduction is not None else self.target_latency_reduction)  # type: ignore[arg-type]


SECTIONS = ("model", "data", "train", "sparsity")  # the recipe's base sections, merged into training stages


class Stages(dict):
    """A recipe's stages: stage name -> its kind's validated schema, in run order. A registered
    kind the recipe does not run reads as None (``recipe.stages.mask is None``)."""

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in STAGE_KINDS:
            return None
        raise AttributeError(name)


def typed_stages(raw: dict[str, Any]) -> Stages:
    """Each stage validated by its kind's schema (a None stage is absent), in the registry's order."""
    unknown = [name for name in raw if name not in STAGE_KINDS]
    if unknown:
        raise ValueError(f"unknown key 'stages.{unknown[0]}' (stage kinds: {', '.join(STAGE_KINDS)})")
    stages = Stages()
    for name, kind in STAGE_KINDS.items():
        value = raw.get(name)
        if value is None:
            continue
        try:
            stages[name] = value if isinstance(value, kind.schema) else kind.schema.model_validate(value)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, prefix=f"stages.{name}")) from None
    return stages


def check_stage_links(stages: Stages) -> None:
    """Stages a stage needs are present; ``init`` and a stage teacher are earlier stages."""
    if not stages:
        raise ValueError("stages: a recipe needs at least one stage")
    order = list(stages)
    for position, (name, spec) in enumerate(stages.items()):
        kind = stage_kind(name)
        missing = [need for need in kind.needs if need not in stages]
        if missing:
            raise ValueError(f"stages.{name} needs a stages.{missing[0]} stage")
        init = getattr(spec, "init", None)
        if kind.needs_source and init is None and not set(kind.sources) & set(order[:position]):
            raise ValueError(f"stages.{name} needs a stage whose model it takes: one of {', '.join(kind.sources)}, or init")
        if init is not None and init not in order[:position]:
            raise ValueError(f"stages.{name}.init: {init!r} is not an earlier stage of this recipe")
        teacher = (getattr(spec, "distill", None) or {}).get("teacher")
        if teacher in STAGE_KINDS and teacher not in order[:position]:
            raise ValueError(f"stages.{name}.distill.teacher: {teacher!r} is not an earlier stage of this recipe")


class Recipe(Section):
    """A whole experiment: base sections shared by the training stages, and the stages."""

    name: str = "recipe"
    description: str = ""
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    sparsity: dict[str, Any] = Field(default_factory=dict, description="reaches the stages whose kind reads it (sparsity, mask_sparsity)")
    stages: dict[str, Any] = Field(default_factory=dict, description="stage name -> its settings (its kind's schema)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value:
            raise ValueError("must be a non-empty name without '/'")
        return value

    @model_validator(mode="after")
    def _check_stages(self) -> "Recipe":
        self.__dict__["stages"] = stages = typed_stages(self.stages)  # typed in place (no re-validation)
        check_stage_links(stages)
        if self.sparsity and not any(stage_kind(s).reads_section("sparsity") for s in stages):
            raise ValueError("sparsity: no stage of this recipe reads the recipe's sparsity section; "
                             "set it on a stage (stages.<stage>.sparsity)")
        return self

    def present_stages(self) -> list[str]:
        """The recipe's stages, in run order."""
        return list(self.stages)


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


def section_readers(data: dict[str, Any], section: str) -> list[str]:
    """The stages of raw recipe ``data`` that its top-level ``section`` reaches."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return []
    return [name for name, spec in stages.items()
            if spec is not None and name in STAGE_KINDS and STAGE_KINDS[name].reads_section(section)]


def apply_recipe_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with dotted ``key=value`` overrides set. An override of a base section's key
    (``sparsity.lbd=...``) is also set in every stage that section reaches, so it wins over the
    stages' own values; when it reaches no stage, the command stops with one line."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        targets = [path]
        if path[0] in SECTIONS and len(path) > 1:
            readers = section_readers(data, path[0])
            if not readers:
                raise PolarpruneError(f"override {item!r}: no stage of this recipe reads its top-level {path[0]} section; "
                                      f"set stages.<stage>.{'.'.join(path)} instead")
            targets += [["stages", stage, *path] for stage in readers]
        for target in targets:
            set_path(data, target, value, item)
    return data


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe, including every training stage's merged config."""
    path = resolve_recipe_path(name_or_path)
    data = apply_recipe_overrides(read_yaml(path), overrides or [])
    recipe = validate(Recipe, data, source=f"recipe {path.name}")
    for stage in recipe.present_stages():
        if stage_kind(stage).trains:
            cfg = stage_config(recipe, stage, Path("."))  # validates now, before anything runs
            get_source(cfg.data.name)
            check_latency_runtimes(recipe, stage, cfg)
    return recipe


def check_latency_runtimes(recipe: Recipe, stage: str, cfg: TrainConfig) -> None:
    """The runtimes a training stage's latency targets name, checked before anything runs: an unknown
    one, or one whose extra is missing, is one line naming the stage and the key."""
    spec = recipe.stages[stage]
    wanted = []
    if cfg.sparsity.target_latency_ratio is not None:
        wanted.append(("sparsity.latency_runtime", cfg.sparsity.latency_runtime))
    if getattr(spec, "target_latency_reduction", None) is not None:
        wanted.append(("prune.runtime", PruneOptions(**spec.prune_options()).runtime))
    for key, name in wanted:
        try:
            runtime(name)
        except PolarpruneError as exc:
            raise PolarpruneError(f"recipe {recipe.name}: stages.{stage}.{key}: {exc}") from None


def stage_config(recipe: Recipe, stage: str, run_dir: Path, **extra: Any) -> TrainConfig:
    """The full training config of a training stage: its kind's sparsity defaults, the recipe's
    base sections (the sparsity section only where the kind reads it), the stage's own, ``extra``."""
    kind = stage_kind(stage)
    spec = recipe.stages.get(stage)
    if not kind.trains or spec is None:
        raise PolarpruneError(f"recipe {recipe.name}: stages.{stage}: not a training stage of this recipe")
    sparsity = deep_merge(kind.sparsity_defaults(run_dir), recipe.sparsity if kind.reads_recipe_sparsity else {})
    data: dict[str, Any] = {
        "seed": recipe.seed, "deterministic": recipe.deterministic, "device": recipe.device, "out": str(run_dir / stage),
        "model": recipe.model, "data": recipe.data, "train": recipe.train, "sparsity": sparsity,
    }
    data = deep_merge(data, {k: getattr(spec, k) for k in SECTIONS})
    if spec.distill is not None:
        data["distill"] = spec.distill
    data = deep_merge(data, extra)
    source = f"recipe {recipe.name}: stages.{stage}"
    cfg = validate(TrainConfig, data, source=source)
    return cfg.model_copy(update={"sparsity": resolve_sparsity(cfg.sparsity, source)})


def default_init(recipe: Recipe, stage: str) -> str | None:
    """Where a stage's weights come from when the recipe does not say: the first of its kind's sources present."""
    init = getattr(recipe.stages[stage], "init", None)
    if init:
        return init
    return next((c for c in stage_kind(stage).sources if c in recipe.stages), None)
