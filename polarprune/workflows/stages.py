"""What each kind of stage does, behind one registry (``STAGES``: stage name -> function that gets the
``StageContext`` and the stage's folder and returns the payload of its ``done.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed as dist
from ..data import DataBundle, build_data, probe_batch
from ..errors import PolarpruneError
from ..fileio import atomic_write_json
from ..models import init_bn_gamma
from ..pruning import plan_pruning, prune_model
from ..serialization import load_any_model, save
from ..sparsity.masks import load_mask, save_mask
from ..sparsity.regularizers import regularizer_class
from ..sparsity.selection import regularized_bn_names
from ..training.engine import evaluate
from ..config import deep_merge
from .progressive import progressive_stage
from .recipe import TRAINING_STAGES, PruneStage, Recipe, ScratchStage, default_init, stage_config
from .train import data_config_for, run_training


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
        return next((name for name in self.recipe.present_stages() if name in TRAINING_STAGES), "baseline")

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
        if source not in TRAINING_STAGES:
            return regularized_bn_names(model, self.example_inputs())
        sparsity = stage_config(self.recipe, source, self.run_dir).sparsity
        method = regularizer_class(sparsity.regularizer).method
        return regularized_bn_names(model, self.example_inputs(), sparsity.include, sparsity.exclude, method=method)

    def distill_overrides(self, stage: str) -> dict[str, Any]:
        """``stage_config`` extras pointing ``distill.teacher`` at the teacher stage's model file (a path stays)."""
        spec = getattr(self.recipe.stages, stage)
        teacher = (getattr(spec, "distill", None) or {}).get("teacher")
        if teacher not in self.recipe.present_stages():
            return {}
        record = self.records.get(teacher)
        if record is None or record.model_path is None:
            raise PolarpruneError(f"stages.{stage}.distill.teacher: stage {teacher!r} has no model (has it run?)")
        return {"distill": {"teacher": str(record.model_path)}}


def _train(ctx: StageContext, stage: str, stage_dir: Path, model: nn.Module | None, **extra: Any) -> dict[str, Any]:
    cfg = stage_config(ctx.recipe, stage, ctx.run_dir, **deep_merge(ctx.distill_overrides(stage), extra))
    result = run_training(cfg, model=model)
    return {"kind": "train", "model_path": str(stage_dir / "last.pt"), "top1": result.final_top1,
            "top5": result.final_top5, "best_top1": result.best_top1, "epochs": cfg.train.epochs}


def train_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """baseline, sparsity, mask_sparsity, finetune: train from the default init stage (or afresh)."""
    source = default_init(ctx.recipe, stage)
    return _train(ctx, stage, stage_dir, ctx.model_of(source) if source else None)


def scratch_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """The pruned architecture from random init; Scratch-B scales the epochs by the MACs ratio."""
    spec: ScratchStage = ctx.recipe.stages.scratch  # type: ignore[assignment]
    model = ctx.model_of("prune")
    cfg = stage_config(ctx.recipe, stage, ctx.run_dir)
    reinitialise(model, cfg.model.bn_init, cfg.model.bn_init_scope)
    epochs = cfg.train.epochs
    if spec.budget == "B":
        prune = ctx.records["prune"].data
        epochs = max(1, round(epochs * prune["macs_before"] / max(prune["macs_after"], 1)))
    payload = _train(ctx, stage, stage_dir, model, train={"epochs": epochs})
    payload["budget"] = spec.budget
    return payload


def prune_kwargs(opts: PruneStage) -> dict[str, Any]:
    """The ``PruneOptions`` fields of a prune or mask stage as keywords of ``prune_model`` and ``plan_pruning``."""
    return opts.model_dump(exclude={"init", "bn_names", "masks"})


def mask_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """MaskSparsity's mask: the channels a strategy would remove from the source stage's model."""
    opts: PruneStage = ctx.recipe.stages.mask  # type: ignore[assignment]
    source = default_init(ctx.recipe, stage) or "baseline"
    model = ctx.model_of(source)
    masks = None
    if dist.is_main():
        masks = plan_pruning(model, ctx.example_inputs(), **prune_kwargs(opts), bn_names=ctx.bn_names(model, source))
        save_mask(masks, stage_dir / "mask.json", model.polarprune_spec["name"])
    dist.barrier()
    kept = sum(int(m.sum()) for m in (masks or {}).values())
    total = sum(m.numel() for m in (masks or {}).values())
    payload = {"kind": "mask", "mask_path": str(stage_dir / "mask.json"), "source": source,
               "channels_kept": kept, "channels_total": total}
    return dist.broadcast_object(payload)


def prune_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """Remove channels (rank 0), save the pruned model and its report, evaluate before and after."""
    opts: PruneStage = ctx.recipe.stages.prune  # type: ignore[assignment]
    source = default_init(ctx.recipe, stage)
    model = ctx.model_of(source)
    out = stage_dir / "pruned.safetensors"
    payload: dict[str, Any] = {"kind": "prune", "model_path": str(out), "source": source}
    if dist.is_main():
        kwargs = prune_kwargs(opts)
        if opts.strategy_record.needs_mask_file:
            kwargs["masks"] = load_mask(ctx.run_dir / "mask" / "mask.json", model)
        pruned, report = prune_model(model, ctx.example_inputs(), bn_names=ctx.bn_names(model, source), **kwargs)
        eval_loader, device = ctx.data().eval_loader, torch.device("cpu")
        top1_before, top1_after = evaluate(model, eval_loader, device)["top1"], evaluate(pruned, eval_loader, device)["top1"]
        report_dict = report.to_dict()
        save(pruned, out, extra={"report": _report_summary(report_dict)})
        atomic_write_json(stage_dir / "report.json", report_dict, default=json_default)
        payload["top1"], payload["top1_before"] = top1_after, top1_before
        payload.update({key: report_dict[key] for key in ("macs_before", "macs_after", "params_before", "params_after")})
    return dist.broadcast_object(payload)


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("strategy", "macs_before", "macs_after", "params_before", "params_after", "flops_before", "flops_after")
    return {k: report[k] for k in keys if k in report}


def reinitialise(model: nn.Module, bn_init: float | None, bn_init_scope: str = "all") -> None:
    """Random init of every layer (Scratch training of a pruned architecture)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if bn_init is not None:
        init_bn_gamma(model, bn_init, bn_init_scope)


StageFunction = Callable[[StageContext, str, Path], dict[str, Any]]

STAGES: dict[str, StageFunction] = {
    "baseline": train_stage,
    "sparsity": train_stage,
    "mask": mask_stage,
    "mask_sparsity": train_stage,
    "prune": prune_stage,
    "progressive": progressive_stage,
    "finetune": train_stage,
    "scratch": scratch_stage,
}
