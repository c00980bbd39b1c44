"""Section 2b of BENCHMARKS.md: pruning time and peak memory of the detection and segmentation
families, polarprune next to Torch-Pruning (``bench/bench_detector_pruning.py``)."""

from __future__ import annotations

from typing import Any

from .engine import Results, renderer, table

TOOLS = ("polarprune", "torch-pruning")


def _short(error: str) -> str:
    """An error without the budget guard's advice (the budget is stated above the table)."""
    return error.split(" (budget:")[0].replace("PolarpruneError: pruning torch-pruning ", "")


def _cell(run: dict[str, Any]) -> list[str]:
    """Seconds, peak memory and MACs of one run; its error in place of the MACs when it failed."""
    memory = f"{run['peak_memory_gb']:.2f}" if "peak_memory_gb" in run else "-"
    if run.get("error"):
        return [f"{run['seconds']:.1f}", memory, f"failed: {_short(run['error'])}"]
    return [f"{run['seconds']:.1f}", memory, f"{run['macs_before'] / 1e9:.2f} -> {run['macs_after'] / 1e9:.2f}"]


@renderer("detector-pruning-table")
def detector_pruning_table(results: Results) -> str:
    """One row per family and tool: seconds, peak memory growth (GB), MACs before -> after or the error."""
    rows = []
    for family in results.load("detector_pruning")["families"]:
        for tool in TOOLS:
            rows.append([family["name"], family["task"], str(family["input_size"]), tool, *_cell(family[tool])])
    return table(["family", "task", "side (px)", "tool", "seconds", "peak memory (GB)", "MACs before -> after (G)"], rows,
                 align="llrlrrl")
