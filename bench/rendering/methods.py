"""Section 1 of BENCHMARKS.md, the subset protocol: ``methods_cifar_<model>.json``."""

from __future__ import annotations

from typing import Any, Callable

from stats import judge, noise_figures

from .engine import RenderError, Results, fmt, renderer, span, table


def _methods(results: Results, model: str) -> dict[str, Any]:
    return results.load(f"methods_cifar_{model}")


def _method(data: dict[str, Any], key: str) -> dict[str, Any]:
    for entry in data["methods"]:
        if entry["method"] == key:
            return entry
    raise RenderError(f"methods_cifar_{data['model']}: no method {key!r}")


def top1_drop(entry: dict[str, Any]) -> float:
    """Top-1 points lost right after pruning (negative: gained)."""
    return entry["prune"]["top1_before"] - entry["prune"]["top1"]


METHOD_ROWS = (
    ("polarization", "polarization + grad"),
    ("l1", "L1 + global threshold"),
    ("none", "no regularizer + global threshold"),
    ("masksparsity", "MaskSparsity"),
    ("tp-bnscale", "Torch-Pruning BNScalePruner"),
    ("tp-groupnorm", "Torch-Pruning GroupNormPruner"),
)


def accuracy_cells(entries: list[tuple[str, dict[str, Any]]], final: Callable[[dict[str, Any]], str]) -> list[tuple[str, str]]:
    """Per entry the "right after pruning (change)" and the fine-tuned cell (``final``), the best of each column in bold."""
    best_pruned = max(e["prune"]["top1"] for _, e in entries)
    best_final = max(e["finetune"]["top1"] for _, e in entries)
    cells = []
    for _, e in entries:
        pruned = f"{e['prune']['top1']:.2f} ({-top1_drop(e):+.2f})"
        cells.append((f"**{pruned}**" if e["prune"]["top1"] == best_pruned else pruned,
                      f"**{final(e)}**" if e["finetune"]["top1"] == best_final else final(e)))
    return cells


@renderer("methods-table")
def methods_table(results: Results, model: str) -> str:
    """The six methods at matched MACs; the best after pruning and after fine-tuning in bold."""
    data = _methods(results, model)
    entries = [(label, _method(data, key)) for key, label in METHOD_ROWS]
    rows = []
    for (label, e), (pruned, final) in zip(entries, accuracy_cells(entries, lambda e: f"{e['finetune']['top1']:.2f}")):
        sparsity = f"{e['sparsity']['top1']:.2f}" + (" (after mask-L1)" if e["method"] == "masksparsity" else "")
        rows.append([
            label, sparsity, pruned, final,
            f"{e['prune']['macs_reduction']:.1%}", f"{e['prune']['params_reduction']:.1%}",
            f"{e['latency_ms']['b1_ratio']:.2f} / {e['latency_ms']['b64_ratio']:.2f}",
        ])
    return table(["method", "top-1 after sparsity training", "right after pruning", "after fine-tuning",
                  "MACs red.", "params red.", "latency b1 / b64 vs unpruned"], rows)


@renderer("methods-drop")
def methods_drop(results: Results, model: str, methods: str) -> str:
    """Top-1 points lost right after pruning by one method, or the range over several (``a,b,c``)."""
    data = _methods(results, model)
    return span([top1_drop(_method(data, key)) for key in methods.split(",")], ".2f")


@renderer("methods-standard-error")
def methods_standard_error(results: Results, model: str, what: str, spec: str = ".1f") -> str:
    """One figure of the sampling noise of a model's fine-tuned top-1s on its evaluation subset
    (``stats.noise_figures``: mean, se, difference, line)."""
    data = _methods(results, model)
    figures = noise_figures([e["finetune"]["top1"] for e in data["methods"]], data["protocol_settings"]["eval_subset"])
    if what not in figures:
        raise RenderError(f"unknown noise figure {what!r} (known: {', '.join(figures)})")
    return fmt(figures[what], spec)


def _labels(keys: str) -> list[tuple[str, str]]:
    """(key, label) of the comma-separated method keys, in the given order."""
    labels = dict(METHOD_ROWS)
    unknown = [k for k in keys.split(",") if k not in labels]
    if unknown:
        raise RenderError(f"unknown methods {unknown} (known: {', '.join(labels)})")
    return [(k, labels[k]) for k in keys.split(",")]


@renderer("methods-changes")
def methods_changes(results: Results, model: str, methods: str) -> str:
    """Each method's top-1 change right after pruning (points, as the table's "change"), in the given order."""
    data = _methods(results, model)
    return ", ".join(f"{label} {-top1_drop(_method(data, key)):+.2f}" for key, label in _labels(methods))


@renderer("methods-worst-drop")
def methods_worst_drop(results: Results, methods: str) -> str:
    """The most points any of ``methods`` lost right after pruning, on either model."""
    return f"{max(top1_drop(_method(_methods(results, m), key)) for m in ('resnet20', 'resnet56') for key, _ in _labels(methods)):.2f}"


@renderer("methods-beyond")
def methods_beyond(results: Results, model: str) -> str:
    """Every pair of methods whose fine-tuned top-1s differ beyond noise (largest difference first), or that none does."""
    data = _methods(results, model)
    n = data["protocol_settings"]["eval_subset"]
    entries = [(label, _method(data, key)["finetune"]) for key, label in METHOD_ROWS]
    pairs = []
    for i, (label_a, a) in enumerate(entries):
        for label_b, b in entries[i + 1:]:
            (high, hi), (low, lo) = sorted([(label_a, a), (label_b, b)], key=lambda item: -item[1]["top1"])
            exceeds, p = judge(lo, hi, n)
            if exceeds:
                note = "" if p is None else f", McNemar p {p:.2g}"
                pairs.append((hi["top1"] - lo["top1"], f"{high} above {low} by {hi['top1'] - lo['top1']:.2f}{note}"))
    if not pairs:
        return "no pair of methods differs beyond noise"
    return "; ".join(text for _, text in sorted(pairs, key=lambda pair: -pair[0]))
