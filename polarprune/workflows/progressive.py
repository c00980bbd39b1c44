"""Progressive pruning: reach a MACs (or latency) target in ``steps`` rounds of prune-a-share, fine-tune.

Round ``k`` of ``K`` aims at ``macs_0 * (1 - target_macs_reduction) ** (k / K)`` MACs, always against
the original count so rounding errors do not add up. With ``target_latency_reduction`` the same steps
are taken in predicted latency: the latency cost model of the source model (its tables price every
narrower copy) counts ``latency_0`` and each round's model, and the rounds' trials aim with it. ``flops-target`` gets the round's reduction;
the other strategies' knob (their record's ``knob``) is found by ``search.bisect_knob`` on ``TrialAnalysis`` decisions.

Round ``k`` lives in ``<stage>/step-<k>/`` (``prune.json``, ``pruned.safetensors``, the fine-tuning,
``done.json``); a rerun skips complete rounds and resumes the others, ending with the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as dist
from ..errors import PolarpruneError
from ..fileio import atomic_write_json, atomic_write_json_lines, read_json
from ..flops import count_model
from ..deploy.latency_cost import latency_cost_model, runtime_widths
from ..pruning import TrialAnalysis, prune_model
from ..pruning.cost import MACS
from ..pruning.graph import ModelAnalysis, analysed_copy
from ..pruning.latency_cost import LatencyCost
from ..models.layers import gamma_magnitude
from ..pruning.options import PruneOptions
from ..pruning.registry import STRATEGIES
from ..pruning.search import bisect_knob
from ..serialization import load_any_model, save
from ..training.engine import evaluate
from .context import StageContext
from .recipe import PROGRESSIVE_KNOBS, ProgressiveStage, default_init, stage_config
from .train import run_training


BISECTION_ROUNDS = 40


def step_targets(macs_before: float, reduction: float, steps: int) -> list[float]:
    """The MACs to reach after each of ``steps`` rounds: the same share removed every round,
    the last round exactly ``macs_before * (1 - reduction)``."""
    if steps < 1 or not 0.0 < reduction < 1.0:
        raise ValueError(f"need steps >= 1 and a reduction in (0, 1), got {steps}, {reduction}")
    return [macs_before * (1.0 - reduction) ** (k / steps) for k in range(1, steps + 1)]


def aimed_options(analysis: TrialAnalysis, model: nn.Module, options: PruneOptions,
                  wanted_ratio: float) -> tuple[PruneOptions, float]:
    """``options`` with the strategy's knob set so that pruning ``model`` leaves a cost (the trial's cost
    model; default MACs) as close as possible to ``wanted_ratio`` of its current one; returns them and
    the ratio they give."""
    record = STRATEGIES[options.strategy]
    if not record.aimable:
        raise PolarpruneError(
            f"progressive pruning: strategy {options.strategy!r} has no option to aim at a MACs target; "
            f"use one of {', '.join(PROGRESSIVE_KNOBS)}"
        )
    knob = record.knob

    def ratio_at(value: float) -> tuple[float, PruneOptions]:
        aimed = options.model_copy(update={knob: value})
        return analysis.decide(model, options=aimed).cost_ratio, aimed

    if record.decides == "search":  # the strategy aims itself
        found = ratio_at(min(max(1.0 - wanted_ratio, 1e-6), 1 - 1e-6))
        return found[1], found[0]
    high = 1.0  # a fraction; a threshold above every |gamma| removes all it may
    if record.knob_scale == "gamma":
        high = 1.001 * max(float(gamma_magnitude(m).max()) for m in model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None)
    best = bisect_knob(ratio_at, wanted_ratio, 0.0, high, rounds=BISECTION_ROUNDS)
    return best.result, best.value


def current_cost(model: nn.Module, inputs: torch.Tensor, cost: LatencyCost | None, analysis: ModelAnalysis | None = None) -> float:
    """What a round's target counts: the model's MACs (``cost`` None), else its predicted latency (ms)
    (``analysis``: the model's, when the caller has one; else it is analysed here)."""
    if cost is None:
        return float(count_model(model, inputs[:1]).macs)
    return cost.cost(analysis if analysis is not None else analysed_copy(model, inputs[:1]), {}, ())


def stage_cost_model(ctx: StageContext, spec: ProgressiveStage, model: nn.Module) -> LatencyCost | None:
    """Rank 0's latency cost model of the source model for a latency target (None: a MACs target, other ranks)."""
    if spec.target_latency_reduction is None or not dist.is_main():
        return None
    opts = PruneOptions(**spec.prune_options())
    return latency_cost_model(model, ctx.example_inputs()[:1], opts.runtime, opts.batch, opts.threads)


def _prune_round(ctx: StageContext, model: nn.Module, options: PruneOptions, target: float,
                 step_dir: Path, cost: LatencyCost | None = None) -> dict[str, Any]:
    """Rank 0 prunes ``model`` towards ``target`` (MACs, else predicted ms under ``cost``) and writes the
    round's pruned model; the record (MACs, top-1 right after pruning, the knob used) is returned on every rank."""
    record: dict[str, Any] = {}
    if dist.is_main():
        inputs = ctx.example_inputs()
        names = set(dict(model.named_modules()))
        bn_names = [n for n in (options.bn_names or []) if n in names] or None
        options = options.model_copy(update={"bn_names": bn_names})
        widths = runtime_widths(model, inputs[:1], options)  # round_to auto: this round's model's steps in the runtime
        analysis = TrialAnalysis(model, inputs, cost=cost or MACS, widths=widths)
        now = current_cost(model, inputs, cost, analysis.analysis)
        aimed, _ = aimed_options(analysis, model, options, target / max(now, 1e-12))
        pruned, report = prune_model(model, inputs, options=aimed, widths=widths)
        step_dir.mkdir(parents=True, exist_ok=True)
        save(pruned, step_dir / "pruned.safetensors")
        report_dict = report.to_dict()
        record = {key: report_dict[key] for key in ("macs_before", "macs_after", "params_after")}
        if cost is not None:
            record.update(target_latency_ms=target, latency_after_ms=current_cost(pruned, inputs, cost))
        else:
            record.update(target_macs=target)
        record.update(options=aimed.model_dump(mode="json", exclude={"masks", "bn_names"}),
                      top1_after_prune=evaluate(pruned, ctx.data().eval_loader, torch.device("cpu"))["top1"])
        atomic_write_json(step_dir / "prune.json", record)
    dist.barrier()
    return dist.broadcast_object(record)


def progressive_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict[str, Any]:
    """Prune a share and fine-tune, ``steps`` times, to the stage's MACs target (resumable per round)."""
    spec = getattr(ctx.recipe.stages, stage)
    source = default_init(ctx.recipe, stage)
    if source is None:
        raise PolarpruneError(f"stages.{stage}: needs a stage whose model it prunes (init)")
    model = ctx.model_of(source)
    options = PruneOptions(**spec.prune_options(), bn_names=ctx.bn_names(model, source))
    macs_0 = count_model(model, ctx.example_inputs()[:1]).macs
    cost = stage_cost_model(ctx, spec, model)
    base = dist.broadcast_object(current_cost(model, ctx.example_inputs(), cost) if dist.is_main() else None)
    rounds: list[dict[str, Any]] = []
    for k, target in enumerate(step_targets(base, spec.target_reduction, spec.steps), start=1):
        step_dir = stage_dir / f"step-{k}"
        done = read_json(step_dir / "done.json")
        if done is not None:
            rounds.append(done)
            continue
        if rounds:  # always from the file, so a resumed run prunes exactly what a straight one does
            model = load_any_model(rounds[-1]["model_path"]).cpu().eval()
        pruned_record = read_json(step_dir / "prune.json") or _prune_round(ctx, model, options, target, step_dir, cost)
        pruned = load_any_model(step_dir / "pruned.safetensors")
        cfg = stage_config(ctx.recipe, stage, ctx.run_dir, out=str(step_dir), **ctx.distill_overrides(stage))
        result = run_training(cfg, model=pruned)
        done = {**pruned_record, "step": k, "model_path": str(step_dir / "last.pt"), "top1": result.final_top1,
                "epochs": cfg.train.epochs}
        if dist.is_main():
            atomic_write_json(step_dir / "done.json", done)
        dist.barrier()
        rounds.append(done)
    if dist.is_main():
        atomic_write_json_lines(stage_dir / "metrics.jsonl", _joined_metrics(stage_dir, len(rounds)))
    last = rounds[-1]
    result = {"kind": "progressive", "source": source, "model_path": last["model_path"], "top1": last["top1"],
              "macs_before": macs_0, "macs_after": last["macs_after"],
              "macs_reduction": 1.0 - last["macs_after"] / max(macs_0, 1.0),
              "target_macs_reduction": spec.target_macs_reduction, "epochs": sum(r["epochs"] for r in rounds),
              "steps": rounds}
    if spec.target_latency_reduction is not None:  # predicted by the source model's latency cost model
        result.update(target_latency_reduction=spec.target_latency_reduction, latency_before_ms=base,
                      latency_after_ms=last["latency_after_ms"], latency_reduction=1.0 - last["latency_after_ms"] / max(base, 1e-12))
    return result


def _joined_metrics(stage_dir: Path, steps: int) -> list[dict[str, Any]]:
    """The rounds' epoch rows one after another, numbered through, each tagged with its round."""
    rows: list[dict[str, Any]] = []
    for k in range(1, steps + 1):
        path = stage_dir / f"step-{k}" / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        for line in filter(str.strip, lines):
            rows.append({**json.loads(line), "epoch": len(rows) + 1, "round": k})
    return rows
