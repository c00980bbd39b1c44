"""What each built-in kind of stage does, and its record in ``kinds.STAGE_KINDS`` (registered here,
in run order). A stage function gets the ``StageContext``, the stage's name and folder, and returns
the payload of its ``done.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as dist
from ..config import deep_merge
from ..deploy.latency_cost import prune_with_cost_model
from ..fileio import atomic_write_json
from ..models import init_bn_gamma
from ..pruning import plan_pruning
from ..serialization import save
from ..sparsity.masks import load_mask, save_mask
from ..training.engine import evaluate
from .context import StageContext, StageRecord, json_default
from .kinds import StageKind, no_sparsity, register_stage_kind
from .progressive import progressive_stage
from .recipe import MaskStage, ProgressiveStage, PruneStage, ScratchStage, TrainStage, default_init, stage_config
from .train import run_training

__all__ = ["StageContext", "StageRecord", "json_default", "train_stage", "scratch_stage", "mask_stage", "prune_stage",
           "prune_kwargs", "reinitialise"]


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
    spec: ScratchStage = ctx.recipe.stages[stage]
    source = default_init(ctx.recipe, stage)
    model = ctx.model_of(source)
    cfg = stage_config(ctx.recipe, stage, ctx.run_dir)
    reinitialise(model, cfg.model.bn_init, cfg.model.bn_init_scope)
    epochs = cfg.train.epochs
    if spec.budget == "B":
        prune = ctx.records[source].data
        epochs = max(1, round(epochs * prune["macs_before"] / max(prune["macs_after"], 1)))
    payload = _train(ctx, stage, stage_dir, model, train={"epochs": epochs})
    payload["budget"] = spec.budget
    return payload


def prune_kwargs(opts: PruneStage) -> dict[str, Any]:
    """The ``PruneOptions`` fields of a prune or mask stage as keywords of ``prune_model`` and ``plan_pruning``."""
    return opts.model_dump(exclude={"init", "bn_names", "masks"})


def mask_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """MaskSparsity's mask: the channels a strategy would remove from the source stage's model."""
    opts: PruneStage = ctx.recipe.stages[stage]
    source = default_init(ctx.recipe, stage)
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
    opts: PruneStage = ctx.recipe.stages[stage]
    source = default_init(ctx.recipe, stage)
    model = ctx.model_of(source)
    out = stage_dir / "pruned.safetensors"
    payload: dict[str, Any] = {"kind": "prune", "model_path": str(out), "source": source}
    if dist.is_main():
        kwargs = prune_kwargs(opts)
        if opts.strategy_record.needs_mask_file:
            kwargs["masks"] = load_mask(ctx.run_dir / "mask" / "mask.json", model)
        pruned, report, _ = prune_with_cost_model(model, ctx.example_inputs(), bn_names=ctx.bn_names(model, source), **kwargs)
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


def mask_file_sparsity(run_dir: Path) -> dict[str, Any]:
    """mask_sparsity's defaults: mask-l1 on the mask the ``mask`` stage wrote."""
    return {"regularizer": "mask-l1", "mask": str(run_dir / "mask" / "mask.json")}


_FROM_TRAINED = ("mask_sparsity", "sparsity", "baseline")  # a pruning stage's source, the most regularized first

for _kind in (
    StageKind("baseline", TrainStage, train_stage, trains=True, sparsity_defaults=no_sparsity),
    StageKind("sparsity", TrainStage, train_stage, sources=("baseline",), trains=True, reads_recipe_sparsity=True),
    StageKind("mask", MaskStage, mask_stage, sources=("sparsity", "baseline"), needs_source=True, produces_model=False),
    StageKind("mask_sparsity", TrainStage, train_stage, sources=("baseline",), needs=("mask",), trains=True,
              reads_recipe_sparsity=True, sparsity_defaults=mask_file_sparsity),
    StageKind("prune", PruneStage, prune_stage, sources=_FROM_TRAINED, needs_source=True),
    StageKind("progressive", ProgressiveStage, progressive_stage, sources=_FROM_TRAINED, needs_source=True, trains=True,
              sparsity_defaults=no_sparsity),
    StageKind("finetune", TrainStage, train_stage, sources=("prune",), needs_source=True, needs=("prune",), trains=True,
              sparsity_defaults=no_sparsity),
    StageKind("scratch", ScratchStage, scratch_stage, sources=("prune",), needs_source=True, needs=("prune",),
              trains=True, sparsity_defaults=no_sparsity),
):
    register_stage_kind(_kind)
