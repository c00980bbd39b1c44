"""Section 1 of BENCHMARKS.md, all of CIFAR-10: ``methods_full_resnet20*.json``."""

from __future__ import annotations

import collections
from typing import Any

from stats import judge, noise_figures, noise_line, share_below

from .engine import RenderError, Results, fmt, renderer, span, table
from .methods import accuracy_cells, top1_drop
from .provenance import machine_cell

FULL_STEM = "methods_full_resnet20"


FULL_ROWS = (
    ("polarization", "polarization + grad"),
    ("polarization-distill", "polarization + grad, distilled fine-tuning"),
    ("masksparsity", "MaskSparsity"),
    ("l1", "L1 + global threshold"),
    ("none", "no regularizer + global threshold"),
    ("tp-bnscale", "Torch-Pruning BNScalePruner"),
    ("tp-groupnorm", "Torch-Pruning GroupNormPruner"),
)


def _full_rows(results: Results, level: str, stem: str = FULL_STEM) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of every method run at ``level``, in the table's order."""
    by_key = {e["method"]: e for e in results.load(stem)["methods"] if e["level"] == level}
    if not by_key:
        raise RenderError(f"{stem}: no method at level {level!r}")
    return [(label, by_key[key]) for key, label in FULL_ROWS if key in by_key]


def _full_entry(results: Results, level: str, key: str) -> dict[str, Any]:
    for _, entry in _full_rows(results, level):
        if entry["method"] == key:
            return entry
    raise RenderError(f"{FULL_STEM}: no method {key!r} at level {level!r}")


@renderer("full-table")
def full_table(results: Results, level: str) -> str:
    """Every method at one level; the best right after pruning and after fine-tuning in bold."""
    base = results.load(FULL_STEM)["baseline"]["top1"]
    entries = _full_rows(results, level)
    cells = accuracy_cells(entries, lambda e: f"{e['finetune']['top1']:.2f} ({e['finetune']['top1'] - base:+.2f})")
    rows = []
    for (label, e), (pruned, final) in zip(entries, cells):
        lat = e.get("latency") or {}
        rows.append([
            label, f"{e['sparsity']['top1']:.2f}", pruned, final,
            f"{e['prune']['macs_reduction']:.1%}", f"{e['prune']['params_reduction']:.1%}",
            f"{lat['b1_ratio']:.2f} / {lat['b64_ratio']:.2f}" if lat else "-",
        ])
    return table(["method", "top-1 after sparsity stage", "right after pruning (change)", "after fine-tuning (vs baseline)",
                  "MACs red.", "params red.", "latency b1 / b64 vs baseline"], rows)


@renderer("full-target-spread")
def full_target_spread(results: Results, level: str) -> str:
    """How far (points of MACs reduction, .1f) the farthest method at a level is from the level's target."""
    target = results.load(FULL_STEM)["level_targets"][level]
    return f"{100 * max(abs(e['prune']['macs_reduction'] - target) for _, e in _full_rows(results, level)):.1f}"


@renderer("full-drop")
def full_drop(results: Results, level: str, methods: str) -> str:
    """Top-1 points lost right after pruning at a level: one method, or the range over several."""
    return span([top1_drop(_full_entry(results, level, key)) for key in methods.split(",")], ".2f")


@renderer("full-final")
def full_final(results: Results, level: str, methods: str) -> str:
    """Top-1 after fine-tuning at a level: one method, or the range over several."""
    return span([_full_entry(results, level, key)["finetune"]["top1"] for key in methods.split(",")], ".2f")


@renderer("full-final-pruned")
def full_final_pruned(results: Results, level: str, methods: str) -> str:
    """Top-1 right after pruning at a level: one method, or the range over several."""
    return span([_full_entry(results, level, key)["prune"]["top1"] for key in methods.split(",")], ".2f")


@renderer("full-noise")
def full_noise(results: Results, level: str) -> str:
    """Which fine-tuned differences to polarization exceed two standard errors of a difference."""
    ref = _full_entry(results, level, "polarization")["finetune"]
    beyond, within = [], []
    for label, e in _full_rows(results, level):
        if e["method"] == "polarization":
            continue
        exceeds, p = judge(ref, e["finetune"])
        (beyond if exceeds else within).append(f"{label} {e['finetune']['top1'] - ref['top1']:+.2f}{paired_note(p)}")
    parts = []
    if beyond:
        parts.append("beyond noise: " + "; ".join(beyond))
    if within:
        parts.append("within noise: " + "; ".join(within))
    return " — ".join(parts)


@renderer("full-diff")
def full_diff(results: Results, level: str, method: str, reference: str) -> str:
    """One method's fine-tuned top-1 against another's at a level: the difference and whether it exceeds the noise."""
    ref = _full_entry(results, level, reference)["finetune"]
    other = _full_entry(results, level, method)["finetune"]
    exceeds, p = judge(ref, other)
    return f"{other['top1'] - ref['top1']:+.2f} points, {'beyond' if exceeds else 'within'} noise{paired_note(p)}"


@renderer("full-noise-line")
def full_noise_line(results: Results, level: str, method: str, reference: str) -> str:
    """The unpaired rule's line (two standard errors of the difference, points) for two fine-tuned methods at a level."""
    ref = _full_entry(results, level, reference)["finetune"]["top1"]
    return f"{noise_line(ref, _full_entry(results, level, method)['finetune']['top1']):.2f}"


def paired_note(p: float | None) -> str:
    """`` (McNemar p ...)`` after a verdict made by the paired test; nothing after the unpaired rule."""
    return "" if p is None else f" (McNemar p {p:.2g})"


@renderer("noise-test")
def noise_test(results: Results, stem: str) -> str:
    """Which test judged the differences of a methods result file: McNemar's when every fine-tuned model
    stored its per-image correctness, else the unpaired rule."""
    methods = results.load(stem)["methods"]
    if all(e["finetune"].get("per_image") for e in methods):
        return "McNemar's exact test on the per-image results the file stores (p < 0.05)"
    return "the unpaired rule (two standard errors of a difference): the file stores no per-image results"


@renderer("full-se")
def full_se(results: Results, what: str, spec: str = ".2f") -> str:
    """One figure of the sampling noise of the fine-tuned top-1s (``stats.noise_figures``: mean, se, difference, line)."""
    figures = noise_figures([e["finetune"]["top1"] for e in results.load(FULL_STEM)["methods"]])
    if what not in figures:
        raise RenderError(f"unknown noise figure {what!r} (known: {', '.join(figures)})")
    return fmt(figures[what], spec)


@renderer("full-gammas")
def full_gammas(results: Results) -> str:
    """Share of the regularized BN gammas below 0.01 after each sparsity stage."""
    seen: dict[str, float] = {}
    for e in results.load(FULL_STEM)["methods"]:
        if e["method"] == "polarization-distill":
            continue
        name = f"{e['method']} ({e['level']})" if e["method"] in ("polarization", "masksparsity") else e["method"]
        seen.setdefault(name, share_below(e["gammas"]))
    return "; ".join(f"{name} {share:.0%}" for name, share in seen.items())


@renderer("full-gap")
def full_gap(results: Results) -> str:
    """Points between the baseline and the fine-tuned models (range)."""
    data = results.load(FULL_STEM)
    return span([data["baseline"]["top1"] - e["finetune"]["top1"] for e in data["methods"]], ".1f")


@renderer("full-gammas-of")
def full_gammas_of(results: Results, method: str) -> str:
    """Share of a method's regularized gammas below 0.01 after its sparsity stage (per level where it differs)."""
    shares = {e["level"]: share_below(e["gammas"]) for e in results.load(FULL_STEM)["methods"] if e["method"] == method}
    if not shares:
        raise RenderError(f"{FULL_STEM}: no method {method!r}")
    if len({round(v, 2) for v in shares.values()}) == 1:
        return f"{next(iter(shares.values())):.0%}"
    return " and ".join(f"{v:.0%} (level {lv})" for lv, v in sorted(shares.items()))


@renderer("full-run")
def full_run(results: Results, stem: str = FULL_STEM) -> str:
    """Training throughput and the machine time of all stages of a run (the main one, or a repeat's ``stem``)."""
    data = results.load(stem)
    stages = [data["baseline"]]
    seen: set[str] = set()
    for e in data["methods"]:
        key = e["method"] if e["method"] not in ("polarization", "masksparsity", "polarization-distill") else f"{e['method']}-{e['level']}"
        if key not in seen and e["method"] != "polarization-distill":
            stages.append(e["sparsity"])
        seen.add(key)
        stages.append(e["finetune"])
    rates = [s["images_per_s"] for s in stages if s.get("images_per_s")]
    hours = sum(s["wall_s"] for s in stages) / 3600
    text = f"{span(rates, '.0f')} training images/s, {hours:.1f} hours of training in all (the stages' `wall_s`)"
    machines = collections.Counter(machine_cell(s["machine"]) if s.get("machine") else "machine not recorded" for s in stages)
    if set(machines) != {"machine not recorded"}:  # stage records name their machine since the runs of 2026-12-06
        text += "; stages per machine: " + "; ".join(f"{name} ({n})" for name, n in machines.items())
    return text


def _seed_pairs(results: Results, level: str, seed: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """The main run, the repeat with ``seed``, and (label, main entry, repeat entry) of the methods both ran at ``level``."""
    stem = f"{FULL_STEM}_seed{seed}"
    main, repeat = results.load(FULL_STEM), results.load(stem)
    again = {e["method"]: e for _, e in _full_rows(results, level, stem)}
    pairs = [(label, e, again[e["method"]]) for label, e in _full_rows(results, level) if e["method"] in again]
    if not pairs:
        raise RenderError(f"{stem}: no method of the main run at level {level!r}")
    return main, repeat, pairs


@renderer("full-seeds")
def full_seeds(results: Results, level: str, seed: str) -> str:
    """The main run (seed 0) beside its repeat with another seed: baseline, level, the rows both ran and their
    differences to L1, each seed-to-seed change marked when it exceeds the sampling noise."""
    main, repeat, pairs = _seed_pairs(results, level, seed)

    def row(name: str, a: dict[str, Any], b: dict[str, Any], noisy: bool = True) -> list[str]:
        mark = ""
        if noisy:
            exceeds, p = judge(a, b)
            mark = (" (beyond noise" if exceeds else " (within noise") + paired_note(p).replace(" (", "; ") + ")"
        return [name, f"{a['top1']:.2f}", f"{b['top1']:.2f}", f"{b['top1'] - a['top1']:+.2f}{mark}"]

    rows = [row("unpruned baseline", main["baseline"], repeat["baseline"]),
            [f"level {level}: MACs reduction", f"{main['level_targets'][level]:.1%}", f"{repeat['level_targets'][level]:.1%}",
             f"{100 * (repeat['level_targets'][level] - main['level_targets'][level]):+.1f} points"]]
    rows += [row(f"{label}, after fine-tuning", a["finetune"], b["finetune"]) for label, a, b in pairs]
    l1 = next(((a, b) for _, a, b in pairs if a["method"] == "l1"), None)
    if l1 is not None:
        rows += [row(f"{label} minus L1", {"top1": a["finetune"]["top1"] - l1[0]["finetune"]["top1"]},
                     {"top1": b["finetune"]["top1"] - l1[1]["finetune"]["top1"]}, noisy=False)
                 for label, a, b in pairs if a["method"] != "l1"]
    return table(["top-1 (%)", "seed 0", f"seed {seed}", f"seed {seed} minus seed 0"], rows)


@renderer("full-seed-change")
def full_seed_change(results: Results, level: str, seed: str) -> str:
    """How far the fine-tuned top-1 of the same rows moved between the seeds (range of the absolute changes)."""
    _, _, pairs = _seed_pairs(results, level, seed)
    return span([abs(b["finetune"]["top1"] - a["finetune"]["top1"]) for _, a, b in pairs], ".2f")

