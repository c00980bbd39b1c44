"""The pipeline: a recipe's stages run in order, each in its own folder, resumable.

Stages (in this order; a recipe names the ones it runs):

- ``baseline``      train without regularizer;
- ``sparsity``      sparsity training (``none``/``l1``/``polarization``), from scratch or a stage;
- ``mask``          MaskSparsity: decide which channels will go (a mask file) from a stage;
- ``mask_sparsity`` L1 on the masked channels only, from the baseline's weights;
- ``prune``         remove channels physically (a strategy), save the pruned model;
- ``finetune``      train the pruned model;
- ``scratch``       train the pruned architecture from random init (Scratch-E, or Scratch-B
                    with epochs scaled by the MACs ratio).

A stage is complete when its folder holds ``done.json`` (written atomically last); complete
stages are skipped, an interrupted training stage resumes from its ``last.pt``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from . import distributed as dist
from .config import Section, TrainConfig, deep_merge, read_yaml, apply_overrides, validate
from .errors import PolarpruneError
from .fileio import atomic_write_text

STAGE_ORDER = ["baseline", "sparsity", "mask", "mask_sparsity", "prune", "finetune", "scratch"]
TRAINING_STAGES = {"baseline", "sparsity", "mask_sparsity", "finetune", "scratch"}
RECIPE_DIR = Path(__file__).parent / "recipes"


# ----------------------------------------------------------------------------- recipe schema


class TrainStage(Section):
    """A training stage: overrides of the recipe's base sections, and where its weights start."""

    init: str | None = Field(None, description="stage whose final weights this one starts from (None: default)")
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    sparsity: dict[str, Any] = Field(default_factory=dict)


class ScratchStage(TrainStage):
    """Train the pruned architecture from random init; ``B`` scales epochs by the MACs ratio."""

    budget: Literal["E", "B"] = "B"


class PruneOptions(Section):
    """How channels are chosen (shared by the ``mask`` and ``prune`` stages)."""

    init: str | None = Field(None, description="stage whose model is pruned (None: default)")
    strategy: Literal["grad", "fixed", "percent", "uniform", "l1-norm", "random", "mask", "flops-target"] = "grad"
    threshold: float = Field(0.01, ge=0)
    percent: float | None = Field(None, gt=0, lt=1)
    ratio: float | None = Field(None, ge=0, lt=1)
    target_macs_reduction: float | None = Field(None, gt=0, lt=1)
    group_rule: Literal["any", "all", "mean"] = "any"
    min_channels: int = Field(1, ge=1)
    round_to: int = Field(1, ge=1, description="every kept count rounded up to a multiple of N (16 for CPU inference)")
    compensate: bool = True

    @model_validator(mode="after")
    def _needs(self) -> "PruneOptions":
        needs = {"percent": "percent", "uniform": "ratio", "l1-norm": "ratio", "random": "ratio",
                 "flops-target": "target_macs_reduction"}
        key = needs.get(self.strategy)
        if key and getattr(self, key) is None:
            raise ValueError(f"strategy {self.strategy!r} needs {key}")
        return self


class Stages(Section):
    baseline: TrainStage | None = None
    sparsity: TrainStage | None = None
    mask: PruneOptions | None = None
    mask_sparsity: TrainStage | None = None
    prune: PruneOptions | None = None
    finetune: TrainStage | None = None
    scratch: ScratchStage | None = None


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
            init = getattr(getattr(s, name), "init", None)
            if init is not None and (init not in present or STAGE_ORDER.index(init) >= STAGE_ORDER.index(name)):
                raise ValueError(f"stages.{name}.init: {init!r} is not an earlier stage of this recipe")
        return self

    def present_stages(self) -> list[str]:
        return [name for name in STAGE_ORDER if getattr(self.stages, name) is not None]


# ----------------------------------------------------------------------------- loading recipes


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
            stage_config(recipe, stage, Path("."))  # validates now, before anything runs
    return recipe


def stage_config(recipe: Recipe, stage: str, run_dir: Path, **extra: Any) -> TrainConfig:
    """The full training config of a training stage: base sections merged with the stage's."""
    spec: TrainStage = getattr(recipe.stages, stage)
    data: dict[str, Any] = {
        "seed": recipe.seed,
        "deterministic": recipe.deterministic,
        "device": recipe.device,
        "out": str(run_dir / stage),
        "model": recipe.model,
        "data": recipe.data,
        "train": recipe.train,
        "sparsity": recipe.sparsity if stage in ("sparsity", "mask_sparsity") else {},
    }
    data = deep_merge(data, {k: getattr(spec, k) for k in ("model", "data", "train", "sparsity")})
    if stage in ("baseline", "finetune", "scratch"):
        data["sparsity"] = deep_merge({"regularizer": "none", "monitor": False}, spec.sparsity)
    if stage == "mask_sparsity":
        data["sparsity"] = deep_merge({"regularizer": "mask-l1"}, data["sparsity"])
        data["sparsity"].setdefault("mask", str(run_dir / "mask" / "mask.json"))
    data = deep_merge(data, extra)
    return validate(TrainConfig, data, source=f"recipe {recipe.name}: stages.{stage}")


def default_init(recipe: Recipe, stage: str) -> str | None:
    """Where a stage's weights come from when the recipe does not say."""
    present = recipe.present_stages()
    spec = getattr(recipe.stages, stage)
    if getattr(spec, "init", None):
        return spec.init
    if stage == "sparsity":
        return "baseline" if "baseline" in present else None
    if stage == "mask":
        return "sparsity" if "sparsity" in present else "baseline"
    if stage == "mask_sparsity":
        return "baseline" if "baseline" in present else None
    if stage == "prune":
        for candidate in ("mask_sparsity", "sparsity", "baseline"):
            if candidate in present:
                return candidate
        return None
    if stage in ("finetune", "scratch"):
        return "prune"
    return None


# ----------------------------------------------------------------------------- stage records


@dataclass
class StageRecord:
    """What a finished stage left (``done.json``)."""

    name: str
    data: dict[str, Any]

    @property
    def model_path(self) -> Path | None:
        path = self.data.get("model_path")
        return Path(path) if path else None


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


STAGE_FAULT_ENV = "POLARPRUNE_FAULT_KILL_BEFORE_DONE"


def _fault_before_done(stage: str) -> None:
    """Fault injection for tests: SIGKILL after a stage's work, before its done.json is written."""
    if os.environ.get(STAGE_FAULT_ENV) == stage:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _log(message: str) -> None:
    if dist.is_main():
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the runner


class Pipeline:
    """Runs the stages of a recipe in ``run_dir``."""

    def __init__(self, recipe: Recipe, run_dir: str | Path) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.records: dict[str, StageRecord] = {}
        self._data_bundle = None

    # -- shared helpers

    def data(self):
        """The recipe's data (evaluation split and probe batch), built once."""
        if self._data_bundle is None:
            from .data import build_data

            cfg = stage_config(self.recipe, self._first_training_stage(), self.run_dir)
            self._data_bundle = build_data(cfg.data, seed=cfg.seed)
        return self._data_bundle

    def _first_training_stage(self) -> str:
        for name in self.recipe.present_stages():
            if name in TRAINING_STAGES:
                return name
        return "baseline"

    def example_inputs(self) -> torch.Tensor:
        from .data import probe_batch

        return probe_batch(self.data(), 8)

    def model_of(self, stage: str) -> nn.Module:
        """The final model of a completed stage, on the CPU in eval mode."""
        from .training.checkpoint import load_any_model

        record = self.records.get(stage)
        if record is None or record.model_path is None:
            raise PolarpruneError(f"stage {stage!r} has no model (has it run?)")
        return load_any_model(record.model_path).cpu().eval()

    def _init_model(self, stage: str) -> nn.Module | None:
        source = default_init(self.recipe, stage)
        return self.model_of(source) if source else None

    # -- running

    def run(self) -> dict[str, StageRecord]:
        """Run every stage not yet complete; return the records of all stages."""
        from .training.engine import resolve_device

        dist.init_from_env(resolve_device(self.recipe.device).type)  # join the group before rank-0-only steps
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(_recipe_yaml(self.recipe))
        for stage in self.recipe.present_stages():
            stage_dir = self.run_dir / stage
            done = read_done(stage_dir)
            if done is not None:
                _log(f"[{stage}] complete, skipped")
                self.records[stage] = StageRecord(stage, done)
                continue
            _log(f"[{stage}] running")
            if dist.is_main():
                stage_dir.mkdir(parents=True, exist_ok=True)
            runner = getattr(self, f"_run_{stage}")
            payload = runner(stage_dir)
            payload["stage"] = stage
            _fault_before_done(stage)
            if dist.is_main():
                _write_json_atomic(stage_dir / "done.json", payload)
            dist.barrier()
            self.records[stage] = StageRecord(stage, payload)
        return self.records

    def _train(self, stage: str, stage_dir: Path, model: nn.Module | None, **extra: Any) -> dict[str, Any]:
        from .training.engine import run_training

        cfg = stage_config(self.recipe, stage, self.run_dir, **extra)
        result = run_training(cfg, model=model)
        return {
            "kind": "train",
            "model_path": str(stage_dir / "last.pt"),
            "top1": result.final_top1,
            "top5": result.final_top5,
            "best_top1": result.best_top1,
            "epochs": cfg.train.epochs,
        }

    def _run_baseline(self, stage_dir: Path) -> dict[str, Any]:
        return self._train("baseline", stage_dir, self._init_model("baseline"))

    def _run_sparsity(self, stage_dir: Path) -> dict[str, Any]:
        return self._train("sparsity", stage_dir, self._init_model("sparsity"))

    def _run_mask_sparsity(self, stage_dir: Path) -> dict[str, Any]:
        return self._train("mask_sparsity", stage_dir, self._init_model("mask_sparsity"))

    def _run_finetune(self, stage_dir: Path) -> dict[str, Any]:
        return self._train("finetune", stage_dir, self.model_of("prune"))

    def _run_scratch(self, stage_dir: Path) -> dict[str, Any]:
        spec: ScratchStage = self.recipe.stages.scratch  # type: ignore[assignment]
        model = self.model_of("prune")
        reinitialise(model, stage_config(self.recipe, "scratch", self.run_dir).model.bn_init)
        epochs = stage_config(self.recipe, "scratch", self.run_dir).train.epochs
        if spec.budget == "B":
            ratio = self.records["prune"].data["macs_before"] / max(self.records["prune"].data["macs_after"], 1)
            epochs = max(1, round(epochs * ratio))
        payload = self._train("scratch", stage_dir, model, train={"epochs": epochs})
        payload["budget"] = spec.budget
        return payload

    def _selection_options(self, source: str) -> dict[str, Any]:
        """The BNs the source stage regularized, so pruning scores exactly those."""
        from .sparsity.selection import regularized_bn_names

        cfg = stage_config(self.recipe, source, self.run_dir) if source in TRAINING_STAGES else None
        include = cfg.sparsity.include if cfg else []
        exclude = cfg.sparsity.exclude if cfg else []
        return {"include": include, "exclude": exclude, "selector": regularized_bn_names}

    def _bn_names(self, model: nn.Module, source: str) -> list[str]:
        opts = self._selection_options(source)
        return opts["selector"](model, self.example_inputs(), include=opts["include"], exclude=opts["exclude"])

    def _run_mask(self, stage_dir: Path) -> dict[str, Any]:
        from .pruning import plan_pruning
        from .sparsity.masks import save_mask

        opts: PruneOptions = self.recipe.stages.mask  # type: ignore[assignment]
        source = default_init(self.recipe, "mask")
        model = self.model_of(source)
        masks = None
        if dist.is_main():
            masks = plan_pruning(model, self.example_inputs(), **_prune_kwargs(opts), bn_names=self._bn_names(model, source))
            save_mask(masks, stage_dir / "mask.json", model.polarprune_spec["name"])
        dist.barrier()
        kept = sum(int(m.sum()) for m in (masks or {}).values())
        total = sum(m.numel() for m in (masks or {}).values())
        payload = {"kind": "mask", "mask_path": str(stage_dir / "mask.json"), "source": source,
                   "channels_kept": kept, "channels_total": total}
        return dist.broadcast_object(payload)

    def _run_prune(self, stage_dir: Path) -> dict[str, Any]:
        from .pruning import prune_model
        from .serialization import save
        from .training.engine import evaluate

        opts: PruneOptions = self.recipe.stages.prune  # type: ignore[assignment]
        source = default_init(self.recipe, "prune")
        model = self.model_of(source)
        out = stage_dir / "pruned.safetensors"
        payload: dict[str, Any] = {"kind": "prune", "model_path": str(out), "source": source}
        if dist.is_main():
            kwargs = _prune_kwargs(opts)
            if opts.strategy == "mask":
                from .sparsity.masks import load_mask

                kwargs["masks"] = load_mask(self.run_dir / "mask" / "mask.json", model)
            pruned, report = prune_model(model, self.example_inputs(), bn_names=self._bn_names(model, source), **kwargs)
            data = self.data()
            device = torch.device("cpu")
            top1_before = evaluate(model, data.eval_loader, device)["top1"]
            top1_after = evaluate(pruned, data.eval_loader, device)["top1"]
            report_dict = report.to_dict()
            save(pruned, out, extra={"report": _report_summary(report_dict)})
            _write_json_atomic(stage_dir / "report.json", report_dict)
            payload.update(
                top1=top1_after,
                top1_before=top1_before,
                macs_before=report_dict["macs_before"],
                macs_after=report_dict["macs_after"],
                params_before=report_dict["params_before"],
                params_after=report_dict["params_after"],
            )
        payload = dist.broadcast_object(payload)
        return payload


def _prune_kwargs(opts: PruneOptions) -> dict[str, Any]:
    return {
        "strategy": opts.strategy,
        "threshold": opts.threshold,
        "percent": opts.percent,
        "ratio": opts.ratio,
        "target_macs_reduction": opts.target_macs_reduction,
        "group_rule": opts.group_rule,
        "min_channels": opts.min_channels,
        "round_to": opts.round_to,
        "compensate": opts.compensate,
    }


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("strategy", "macs_before", "macs_after", "params_before", "params_after", "flops_before", "flops_after")
    return {k: report[k] for k in keys if k in report}


def reinitialise(model: nn.Module, bn_init: float | None) -> None:
    """Random init of every layer (Scratch training of a pruned architecture)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if bn_init is not None:
        from .models import init_bn_gamma

        init_bn_gamma(model, bn_init)


def _recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ----------------------------------------------------------------------------- summary and plots


def _metrics_curve(stage_dir: Path) -> list[tuple[int, float]]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["epoch"]), float(r["eval_top1"])) for r in rows if "eval_top1" in r]


def _layer_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer rows of a prune report as {name, before, after}."""
    rows = report.get("layers") or report.get("groups") or []
    out = []
    for row in rows:
        before = row.get("channels_before", row.get("before"))
        after = row.get("channels_after", row.get("after"))
        if before is not None and after is not None:
            out.append({"name": row.get("name", row.get("group", "?")), "before": before, "after": after})
    return out


def _thresholds(report: dict[str, Any]) -> list[float]:
    values = [row.get("threshold") for row in report.get("layers") or report.get("groups") or []]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    if report.get("threshold") is not None:
        values.append(float(report["threshold"]))
    return sorted(set(round(v, 6) for v in values))


def summarize(pipeline: Pipeline, *, plots: bool = True) -> dict[str, Any]:
    """Numbers of every model-producing stage, reductions against the first, plots; written to the run folder."""
    from .report import MODEL_STAGES, add_reductions, stage_row, write_summary

    bundle = pipeline.data()
    shape = (bundle.in_channels, *bundle.input_size)
    rows = []
    for stage in pipeline.recipe.present_stages():
        if stage in MODEL_STAGES and stage in pipeline.records:
            rows.append(stage_row(stage, pipeline.model_of(stage), pipeline.records[stage].data.get("top1"), shape))
    summary: dict[str, Any] = {
        "recipe": pipeline.recipe.name,
        "description": pipeline.recipe.description,
        "run_dir": str(pipeline.run_dir),
        "stages": rows,
        "reductions": add_reductions(rows),
    }
    if plots:
        summary["plots"] = [str(p) for p in make_plots(pipeline, rows)]
    write_summary(summary, pipeline.run_dir)
    return summary


def make_plots(pipeline: Pipeline, rows: list[dict[str, Any]]) -> list[Path]:
    """The run's PNGs: gamma histograms, channels per layer, accuracy curves, accuracy vs MACs."""
    from . import plots

    run_dir = pipeline.run_dir
    made: list[Path] = []
    curves = {s: _metrics_curve(run_dir / s) for s in pipeline.recipe.present_stages() if s in TRAINING_STAGES}
    if any(curves.values()):
        made.append(plots.accuracy_curves(curves, run_dir / "accuracy_curves.png"))
    if rows:
        made.append(plots.accuracy_vs_macs(rows, run_dir / "accuracy_vs_macs.png"))
    report_path = run_dir / "prune" / "report.json"
    if "prune" in pipeline.records and report_path.is_file():
        report = json.loads(report_path.read_text())
        layer_rows = _layer_rows(report)
        if layer_rows:
            made.append(plots.channels_per_layer(layer_rows, run_dir / "channels_per_layer.png"))
        source = pipeline.records["prune"].data.get("source")
        if source:
            after_model = pipeline.model_of(source)
            names = pipeline._bn_names(after_model, source)
            before = None
            start = default_init(pipeline.recipe, source)
            if start:
                before = plots.bn_gammas(pipeline.model_of(start), names)
            elif source in TRAINING_STAGES:
                from .models import create

                cfg = stage_config(pipeline.recipe, source, run_dir)
                torch.manual_seed(cfg.seed)
                fresh = create(cfg.model.name, bundle_classes(pipeline), in_channels=pipeline.data().in_channels,
                               bn_init=cfg.model.bn_init, **cfg.model.options)
                before = plots.bn_gammas(fresh, names)
            made.append(
                plots.gamma_histograms(
                    before, plots.bn_gammas(after_model, names), run_dir / "gamma_histograms.png",
                    thresholds=_thresholds(report), title=f"BN scaling factors ({source} stage)",
                )
            )
    return made


def bundle_classes(pipeline: Pipeline) -> int:
    cfg = stage_config(pipeline.recipe, pipeline._first_training_stage(), pipeline.run_dir)
    return cfg.model.num_classes or pipeline.data().num_classes
