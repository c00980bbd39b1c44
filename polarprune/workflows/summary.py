"""The summary of a finished run: numbers per model-producing stage, reductions, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import plots as plotting
from ..models import create
from ..report import add_reductions, stage_row, summary_runtimes, write_summary
from .context import StageContext
from .kinds import stage_kind
from .recipe import default_init, stage_config


def summarize(run: StageContext, *, plots: bool = True) -> dict[str, Any]:
    """Numbers of every model-producing stage, reductions against the first, plots; written to the run folder."""
    bundle = run.data()
    shape = (bundle.in_channels, *bundle.input_size)
    runtimes = summary_runtimes()  # eager, and onnxruntime where the deploy extra is installed
    rows = [
        stage_row(stage, run.model_of(stage), run.records[stage].data.get("top1"), shape, runtimes)
        for stage in run.recipe.present_stages()
        if stage_kind(stage).produces_model and stage in run.records
    ]
    summary: dict[str, Any] = {
        "recipe": run.recipe.name,
        "description": run.recipe.description,
        "run_dir": str(run.run_dir),
        "stages": rows,
        "reductions": add_reductions(rows),
        "warnings": prune_warnings(run),
    }
    if plots:
        summary["plots"] = [str(p) for p in make_plots(run, rows)]
    write_summary(summary, run.run_dir)
    return summary


def prune_warnings(run: StageContext) -> list[str]:
    """The warnings of the run's prune reports (a pruned model not faster than its source in the runtime
    that chose its widths), each naming its stage."""
    found = []
    for stage in run.records:
        path = run.run_dir / stage / "report.json"
        if path.is_file():
            notes = json.loads(path.read_text()).get("notes") or []
            found += [f"{stage}: {note}" for note in notes if str(note).startswith("warning:")]
    return found


def _metrics_curve(stage_dir: Path) -> list[tuple[int, float]]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["epoch"]), float(r["eval_top1"])) for r in rows if "eval_top1" in r]


def _layer_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer rows of a prune report as {name, before, after}."""
    out = []
    for row in report.get("layers") or report.get("groups") or []:
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


def _initial_gammas(run: StageContext, source: str, names: list[str]) -> dict[str, torch.Tensor] | None:
    """The gammas the source stage started from: its init stage's model, or a fresh model built
    with the stage's seed (what the training drew); None when neither applies."""
    start = default_init(run.recipe, source)
    if start:
        return plotting.bn_gammas(run.model_of(start), names)
    if not stage_kind(source).trains:
        return None
    cfg = stage_config(run.recipe, source, run.run_dir)
    data = run.data()
    torch.manual_seed(cfg.seed)
    fresh = create(cfg.model.name, cfg.model.num_classes or data.num_classes, in_channels=data.in_channels,
                   bn_init=cfg.model.bn_init, bn_init_scope=cfg.model.bn_init_scope, **cfg.model.options)
    return plotting.bn_gammas(fresh, names)


def make_plots(run: StageContext, rows: list[dict[str, Any]]) -> list[Path]:
    """The run's PNGs: gamma histograms, channels per layer, accuracy curves, accuracy vs MACs."""
    run_dir = run.run_dir
    made: list[Path] = []
    curves = {s: _metrics_curve(run_dir / s) for s in run.recipe.present_stages() if stage_kind(s).trains}
    if any(curves.values()):
        made.append(plotting.accuracy_curves(curves, run_dir / "accuracy_curves.png"))
    if rows:
        made.append(plotting.accuracy_vs_macs(rows, run_dir / "accuracy_vs_macs.png"))
    pruned = [s for s, r in run.records.items() if (run_dir / s / "report.json").is_file() and r.data.get("source")]
    if pruned:  # the first stage that left a prune report (the prune stage)
        made += _prune_plots(run, pruned[0])
    return made


def _prune_plots(run: StageContext, stage: str) -> list[Path]:
    """Channels per layer and the source stage's gamma histograms, from ``stage``'s prune report."""
    run_dir = run.run_dir
    report = json.loads((run_dir / stage / "report.json").read_text())
    made: list[Path] = []
    layer_rows = _layer_rows(report)
    if layer_rows:
        made.append(plotting.channels_per_layer(layer_rows, run_dir / "channels_per_layer.png"))
    source = run.records[stage].data["source"]
    after_model = run.model_of(source)
    names = run.bn_names(after_model, source)
    made.append(plotting.gamma_histograms(
        _initial_gammas(run, source, names), plotting.bn_gammas(after_model, names),
        run_dir / "gamma_histograms.png", thresholds=_thresholds(report), title=f"BN scaling factors ({source} stage)",
    ))
    return made
