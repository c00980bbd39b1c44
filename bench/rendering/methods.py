"""Section 1 of BENCHMARKS.md, the subset protocol: ``methods_cifar_<model>.json``."""

from __future__ import annotations

import math
import re
import statistics
from typing import Any, Callable

from .engine import RenderError, Results, renderer, span, table
from .provenance import provenance_of
from stats import judge, share_below, standard_error


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


@renderer("methods-unpruned")
def methods_unpruned(results: Results, model: str) -> str:
    """One sentence on the unpruned reference model."""
    u = _methods(results, model)["unpruned"]
    return (f"top-1 {u['top1']:.2f}%, {u['macs'] / 1e6:.2f} M MACs, {u['params'] / 1e3:.1f} k params, "
            f"CPU latency {u['latency_ms']['b1']:.2f} ms (batch 1) / {u['latency_ms']['b64']:.1f} ms (batch 64)")


@renderer("methods-protocol")
def methods_protocol(results: Results, model: str) -> str:
    """The CPU protocol's settings, as the result file records them."""
    s = _methods(results, model)["protocol_settings"]
    p = s["polarization"]
    return (
        f"Fixed stratified subsets of the shared JPEG archive: **{s['train_subset']:,} training and "
        f"{s['eval_subset']:,} test images**; batch {s['batch_size']}; sparsity training **{s['sparsity_epochs']} epochs** "
        f"(SGD momentum 0.9, lr {s['lr']:g} {s['schedule']['type']}, weight decay {s['weight_decay']:g} on all parameters "
        f"incl. BN); fine-tuning **{s['finetune_epochs']} epochs** (lr {s['finetune_lr']:g} {s['finetune_schedule']['type']}); "
        f"MaskSparsity's global-L1 and mask-L1 stages {s['ms_stage_epochs']} epochs each, both from the "
        f"{s['sparsity_epochs']}-epoch no-regularizer run. Regularizer strengths: polarization lambda {p['lbd']:g}, "
        f"t {p['t']:g}, clamp 1, with the paper's `--target-flops` option at {p['target_macs_ratio']:g} (lambda goes to 0 "
        f"once `grad` would remove that share of the MACs); L1 {s['l1_lbd']:g}; MaskSparsity L1 {s['ms_l1_lbd']:g} and "
        f"mask-L1 {s['ms_mask_lbd']:g}; Torch-Pruning BNScale reg {s['tp_bnscale_reg']:g}, GroupNorm reg "
        f"{s['tp_groupnorm_reg']:g}."
    )


@renderer("methods-target")
def methods_target(results: Results, model: str) -> str:
    """Whether polarization's MACs target switched lambda off within the run (last epoch's record)."""
    last = _method(_methods(results, model), "polarization")["sparsity"]["last_epoch"]
    if last.get("sparsity_target_reached"):
        return "reached within the run: lambda was 0 in its last epoch"
    return f"not reached within the run: lambda was still {last['lambda']:g} in its last epoch"


@renderer("methods-max-deviation")
def methods_max_deviation(results: Results) -> str:
    """The largest distance (in points, rounded up to 0.1) of any method's MACs reduction from R."""
    worst = 0.0
    for model in ("resnet20", "resnet56"):
        data = _methods(results, model)
        target = data["target_macs_reduction"]
        worst = max(worst, *(abs(e["prune"]["macs_reduction"] - target) for e in data["methods"]))
    return f"{math.ceil(1000 * worst - 1e-9) / 10:.1f}"


@renderer("methods-latency-rounds")
def methods_latency_rounds(results: Results, model: str) -> str:
    """The latency rounds and threads of the methods benchmark (from its command and machine)."""
    prov = provenance_of(_methods(results, model))
    match = re.search(r"--latency-rounds (\d+)", prov["command"])
    rounds = match.group(1) if match else "the default number of"
    return f"{rounds} round-robin rounds over all seven models, median of the per-round ratios to the unpruned model (torch threads {prov['machine'].get('torch_threads')}"


@renderer("methods-gammas")
def methods_gammas(results: Results, model: str) -> str:
    """Share of BN gammas below 0.01 after sparsity training, per method."""
    data = _methods(results, model)
    parts = []
    for key, label in METHOD_ROWS:
        share = share_below(_method(data, key)["gammas"])
        parts.append(f"{label} {share:.0%}")
    return "; ".join(parts)


@renderer("methods-run")
def methods_run(results: Results, model: str) -> str:
    """Throughput and total stage wall time of a methods run."""
    data = _methods(results, model)
    stages = [e[stage] for e in data["methods"] for stage in ("sparsity", "finetune", "global_l1") if stage in e]
    rates = [e["sparsity"]["images_per_s"] for e in data["methods"]]
    minutes = sum(s["wall_s"] for s in stages) / 60
    return (f"{span(rates, '.0f')} images/s in sparsity training, {minutes:.0f} minutes of training and fine-tuning "
            f"wall time in all (the stages' `wall_s`)")


@renderer("methods-drop")
def methods_drop(results: Results, model: str, methods: str) -> str:
    """Top-1 points lost right after pruning by one method, or the range over several (``a,b,c``)."""
    data = _methods(results, model)
    return span([top1_drop(_method(data, key)) for key in methods.split(",")], ".2f")


@renderer("methods-final")
def methods_final(results: Results, model: str, methods: str) -> str:
    """Top-1 after fine-tuning of one method or the range over several."""
    data = _methods(results, model)
    return span([_method(data, key)["finetune"]["top1"] for key in methods.split(",")], ".2f")


@renderer("methods-final-gap")
def methods_final_gap(results: Results, model: str) -> str:
    """Points between the unpruned reference and the fine-tuned methods (range)."""
    data = _methods(results, model)
    return span([data["unpruned"]["top1"] - e["finetune"]["top1"] for e in data["methods"]], ".2f")


@renderer("methods-final-spread")
def methods_final_spread(results: Results, model: str) -> str:
    """Points between the best and the worst method after fine-tuning."""
    finals = [e["finetune"]["top1"] for e in _methods(results, model)["methods"]]
    return f"{max(finals) - min(finals):.2f}"


@renderer("methods-standard-error")
def methods_standard_error(results: Results, model: str) -> str:
    """Binomial standard error (points) of a top-1 on the evaluation subset at the mean top-1, and of a difference."""
    data = _methods(results, model)
    p = statistics.mean(e["finetune"]["top1"] for e in data["methods"]) / 100
    se = standard_error(100 * p, data["protocol_settings"]["eval_subset"])
    return (f"a top-1 on {data['protocol_settings']['eval_subset']:,} test images at {100 * p:.0f}% has a binomial "
            f"standard error of {se:.1f} points, so the difference of two methods has {math.sqrt(2) * se:.1f} points")


@renderer("methods-latency-ranges")
def methods_latency_ranges(results: Results, model: str) -> str:
    """Latency ratios of the pruned models to the unpruned one, batch 1 and 64."""
    methods = _methods(results, model)["methods"]
    return (f"{span([e['latency_ms']['b1_ratio'] for e in methods], '.2f')}x at batch 1 and "
            f"{span([e['latency_ms']['b64_ratio'] for e in methods], '.2f')}x at batch 64")



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
