"""Issue 26's accuracy at equal latency (``bench/results/latency_accuracy.json``): latency-target and flops-target
pruned from the same polarization model to the same measured onnxruntime latency, then fine-tuned alike."""

from __future__ import annotations

from typing import Any, Mapping

from stats import ALPHA

from .engine import Results, renderer, table

STEM = "latency_accuracy"
ARMS = ("latency-target", "flops-target", "latency-threshold")
VERDICTS = {"latency-target": "paired", "latency-threshold": "paired_threshold"}  # each against flops-target


def _cells(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(result["cells"].values())


def verdict(paired: Mapping[str, Any]) -> str:
    """latency-target against flops-target after fine-tuning, by McNemar's exact test on the same test images."""
    diff = paired["difference"]
    if paired["p"] >= ALPHA:
        return f"{diff:+.2f} points, within noise (p = {paired['p']:.2g})"
    return f"{diff:+.2f} points, {'ahead' if diff > 0 else 'behind'} beyond noise (p = {paired['p']:.2g})"


def cell_table(result: Mapping[str, Any]) -> str:
    """Per cell and arm: MACs cut, latency ratio to the unpruned model in the matching run (flops-target picked among
    its candidates in the same interleaved rounds as latency-target) and in a second side-by-side run (the
    confirmation), top-1 after pruning and after fine-tuning."""
    rows = []
    for c in _cells(result):
        if "arms" not in c:
            rows.append([c["model"], c["batch"], "latency-target failed", "-", "-", "-", "-", "-", "-"])
            continue
        for arm in [a for a in ARMS if a in c["arms"]]:
            a = c["arms"][arm]
            rows.append([c["model"], c["batch"], arm, f"{a['macs_cut']:.1%}", f"{c['match_ratios'][arm]:.2f}", f"{a['latency_ratio']:.2f}",
                         f"{a['top1_pruned']:.2f}", f"{a['finetune']['top1']:.2f}",
                         verdict(c[VERDICTS[arm]]) if arm in VERDICTS else "(reference)"])
    return table(["model", "batch", "arm", "MACs cut", "latency / unpruned: match", "confirmation", "top-1 after prune",
                  "top-1 after fine-tuning", "vs flops-target after fine-tuning (McNemar)"], rows, align="lrlrrrrrl")


def _tally(cells: list[dict[str, Any]], arm: str) -> str:
    """How ``arm`` came out against flops-target after fine-tuning, over the cells that have it."""
    tests = [c[VERDICTS[arm]] for c in cells if arm in c["arms"]]
    ahead = sum(1 for t in tests if t["p"] < ALPHA and t["difference"] > 0)
    behind = sum(1 for t in tests if t["p"] < ALPHA and t["difference"] < 0)
    return f"{arm} ahead of flops-target beyond noise in {ahead} cells, behind in {behind}, within noise in {len(tests) - ahead - behind}"


def summary_text(result: Mapping[str, Any]) -> str:
    """Counts over the measured cells: equal latency reached, and how the paired tests came out."""
    cells = [c for c in _cells(result) if "arms" in c]
    match = result["protocol"]["match"]
    matched = [c for c in cells if c["latency_ratios_differ_by"] <= match]
    failed = [f"{c['model']}/{c['batch']}" for c in _cells(result) if "error" in c]
    tallies = [_tally(cells, arm) for arm in VERDICTS if any(arm in c["arms"] for c in cells)]
    return (f"Latency ratios of latency-target and flops-target within {match} of each other in the confirmation run: "
            f"{len(matched)} of {len(cells)} cells. After fine-tuning, " + "; ".join(tallies)
            + (f"; latency-target failed in {', '.join(failed)}" if failed else "") + ".")


def cells_markdown(result: Mapping[str, Any]) -> str:
    """The whole result as Markdown (the script's ``.md``)."""
    return "\n\n".join([cell_table(result), summary_text(result)])


@renderer("latency-accuracy-table")
def latency_accuracy_table(results: Results) -> str:
    return cell_table(results.load(STEM))


@renderer("latency-accuracy-summary")
def latency_accuracy_summary(results: Results) -> str:
    return summary_text(results.load(STEM))
