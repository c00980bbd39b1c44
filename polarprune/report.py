"""Run summaries: per-stage accuracy, MACs, FLOPs, params and CPU latency (eager, and onnxruntime where the
deploy extra is installed), as a table, JSON and Markdown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .deploy.latency import SUMMARY_THREADS, LatencyFigure, is_noisy, latency_figure, spread_too_wide
from .deploy.runtimes import RUNTIME_RECORDS
from .flops import count_model
from .fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# the runtimes a run summary times every stage in (first: the one of ``latency_ms``); one whose package is
# missing is left out
SUMMARY_RUNTIMES = ("eager", "onnxruntime")


def summary_runtimes() -> list[str]:
    """``SUMMARY_RUNTIMES`` whose package is installed (onnxruntime: the deploy extra)."""
    return [name for name in SUMMARY_RUNTIMES if name in RUNTIME_RECORDS and RUNTIME_RECORDS[name].available]


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, input_shape: Sequence[int], batch: int = 1, repeats: int = 30, warmup: int = 5,
                   threads: int | None = SUMMARY_THREADS) -> LatencyFigure:
    """Eval-mode forward latency on the CPU in eager mode (``deploy.latency.latency_figure`` on a copy of the
    model): the median ms of ``repeats`` rounds, their spread, with torch's threads pinned to ``threads``."""
    return latency_figure(model, input_shape, batch=batch, rounds=repeats, warmup=warmup, threads=threads)


def latency_text(ms: float, spread: float | None) -> str:
    """A latency for people: ``0.290 ms``, or ``0.290 ms (noisy: spread 35%)`` when its spread is too wide."""
    text = f"{ms:.3f} ms"
    if spread is not None and spread_too_wide(spread):
        text += f" (noisy: spread {100 * spread:.0f}%)"
    return text


def runtime_latency(name: str, model: nn.Module, input_shape: Sequence[int], runtime: str) -> LatencyFigure:
    """One stage's latency in ``runtime`` (eager: ``cpu_latency_ms``; others with the runtime's quick
    export); a noisy figure logs one warning naming the model and the runtime."""
    figure = (cpu_latency_ms(model, input_shape) if runtime == "eager"
              else latency_figure(model, input_shape, runtime=runtime, rounds=30, warmup=5, probe=True))
    if is_noisy(figure):
        log.warning("latency of %s on %s is noisy: its rounds spread %.0f%% around the median %.3f ms "
                    "(a loaded machine?)", name, figure.runtime, 100 * figure.spread, figure.median_ms)
    return figure


def stage_row(name: str, model: nn.Module, top1: float | None, input_shape: Sequence[int],
              runtimes: Sequence[str] = ("eager",)) -> dict[str, Any]:
    """One stage's numbers (``top1`` in percent); latency in each of ``runtimes`` (the first one's is
    ``latency_ms``, every one's in ``latency_by_runtime``)."""
    cost = count_model(model, tuple(input_shape))
    figures = {runtime: runtime_latency(name, model, input_shape, runtime) for runtime in runtimes}
    first = figures[runtimes[0]]
    return {"name": name, "top1": None if top1 is None else round(float(top1), 4), "macs": cost.macs,
            "flops": cost.flops, "params": cost.params, "latency_ms": round(first.median_ms, 4),
            "latency_spread": round(first.spread, 4), "latency_threads": first.threads,
            "latency_by_runtime": {runtime: {"ms": round(f.median_ms, 4), "spread": round(f.spread, 4)}
                                   for runtime, f in figures.items()}}


def add_reductions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reductions of every stage against the first, and the final stage's headline numbers."""
    if not rows:
        return {}
    ref = rows[0]
    for row in rows:
        for key in ("macs", "flops", "params"):
            row[f"{key}_reduction"] = round(1.0 - row[key] / ref[key], 6) if ref[key] else 0.0
        row["latency_speedup"] = round(ref["latency_ms"] / row["latency_ms"], 4) if row["latency_ms"] else None
        row["latency_speedup_by_runtime"] = speedups(ref, row)
        if row["top1"] is not None and ref["top1"] is not None:
            row["top1_change"] = round(row["top1"] - ref["top1"], 4)
    last = rows[-1]
    keys = ("macs_reduction", "flops_reduction", "params_reduction", "latency_speedup", "latency_speedup_by_runtime", "top1_change")
    return {"reference_stage": ref["name"], "final_stage": last["name"], **{k: last.get(k) for k in keys}}


def latencies(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A row's latency per runtime (a row written before ``latency_by_runtime``: eager only)."""
    return row.get("latency_by_runtime") or {"eager": {"ms": row["latency_ms"], "spread": row.get("latency_spread")}}


def speedups(ref: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    """Per runtime both rows were timed in: the reference's latency over the row's."""
    mine, theirs = latencies(row), latencies(ref)
    return {rt: round(theirs[rt]["ms"] / mine[rt]["ms"], 4) for rt in mine if rt in theirs and mine[rt]["ms"]}


def summary_runtime_names(summary: dict[str, Any]) -> list[str]:
    """The runtimes the stages were timed in, in order."""
    return list(dict.fromkeys(rt for row in summary["stages"] for rt in latencies(row)))


def latency_cells(row: dict[str, Any], runtimes: Sequence[str]) -> list[str]:
    """The row's latency text per runtime ("-" where it was not timed in it)."""
    by = latencies(row)
    return [latency_text(by[rt]["ms"], by[rt].get("spread")) if rt in by else "-" for rt in runtimes]


def speedup_text(speedups_by_runtime: dict[str, float]) -> str:
    """``CPU latency x1.20 faster in eager, not faster in onnxruntime (x0.95)``: every runtime, slower ones said so."""
    parts = [f"x{v:.2f} faster in {rt}" if v > 1 else f"not faster in {rt} (x{v:.2f})" for rt, v in speedups_by_runtime.items()]
    return "CPU latency " + ", ".join(parts) if parts else ""


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def threads_text(count: int) -> str:
    """``1 thread`` or ``N threads``."""
    return f"{count} thread" + ("" if count == 1 else "s")


def _threads_label(summary: dict[str, Any]) -> str:
    """The stages' latency thread count as text (empty for files written before it was stated)."""
    threads = {row.get("latency_threads") for row in summary["stages"]} - {None}
    return threads_text(next(iter(threads))) if len(threads) == 1 else ""


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width table of the stages (for the terminal), one latency column per runtime; a noisy
    latency says so; the run's warnings (a pruned model slower than its source) follow."""
    threads = _threads_label(summary)
    runtimes = summary_runtime_names(summary)
    latency = f"latency, {threads}" if threads else "latency"
    named = [f"{rt} latency{', ' + threads if threads and i == 0 else ''}" for i, rt in enumerate(runtimes)]
    labels = [latency] if runtimes == ["eager"] else named
    width = 30 if len(labels) > 1 else 0  # room for "0.290 ms (noisy: spread 35%)"
    header = (f"{'stage':<14} {'top-1 %':>8} {'MACs':>9} {'FLOPs':>9} {'params':>9} {'MACs -':>8} {'params -':>9}  "
              + "".join(f"{label:<{width}}" for label in labels).rstrip())
    lines = [header, "-" * len(header)]
    for row in summary["stages"]:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        cells = "".join(f"{cell:<{width}}" for cell in latency_cells(row, runtimes)).rstrip()
        lines.append(
            f"{row['name']:<14} {top1:>8} {_human(row['macs']):>9} {_human(row['flops']):>9} "
            f"{_human(row['params']):>9} {100 * row['macs_reduction']:>7.1f}% "
            f"{100 * row['params_reduction']:>8.1f}%  {cells}"
        )
    return "\n".join(lines + list(summary.get("warnings") or []))


def format_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown (``summary.md``)."""
    out = [f"# {summary['recipe']}", ""]
    threads = _threads_label(summary)
    if summary.get("description"):
        out += [summary["description"], ""]
    runtimes = summary_runtime_names(summary)
    where = f"batch 1{', ' + threads if threads else ''}"
    columns = [f"CPU latency, {where}"] if runtimes == ["eager"] else [f"{rt} latency, {where}" for rt in runtimes]
    out += [
        f"| stage | top-1 (%) | MACs | FLOPs | params | {' | '.join(columns)} | MACs reduction | params reduction |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(columns) + "---:|---:|",
    ]
    for row in summary["stages"]:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        out.append(
            f"| {row['name']} | {top1} | {row['macs']:,} | {row['flops']:,} | {row['params']:,} | "
            f"{' | '.join(latency_cells(row, runtimes))} | {100 * row['macs_reduction']:.1f}% | {100 * row['params_reduction']:.1f}% |"
        )
    red = summary.get("reductions", {})
    if red:
        out += [
            "",
            f"Against `{red['reference_stage']}`, `{red['final_stage']}` removes "
            f"{100 * red['macs_reduction']:.1f}% of the MACs and {100 * red['params_reduction']:.1f}% of the "
            f"parameters"
            + (f", top-1 change {red['top1_change']:+.2f} points" if red.get("top1_change") is not None else "")
            + (f", {speedup_text(red['latency_speedup_by_runtime'])}." if red.get("latency_speedup_by_runtime")
               else f", CPU latency x{red['latency_speedup']:.2f} faster." if red.get("latency_speedup") else "."),
        ]
    out += ["", *summary["warnings"]] if summary.get("warnings") else []
    plots = summary.get("plots") or []
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(out) + "\n"


def write_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """``summary.json`` and ``summary.md`` in the run folder."""
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "summary.md", format_markdown(summary))
