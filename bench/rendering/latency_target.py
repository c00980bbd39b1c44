"""Issue 26's acceptance benchmark (``bench/results/latency_target.json``): latency-target at R = 0.5 against
flops-target and Torch-Pruning at equal MACs, the cost model's profiling time and its prediction."""

from __future__ import annotations

from typing import Any, Mapping

from .engine import RenderError, Results, fmt, lookup, renderer, span, table

STEM = "latency_target"
LABELS = {"resnet56": "ResNet-56 (32 px)", "mobilenet_v2": "MobileNetV2 (224 px)", "resnet50": "ResNet-50 (224 px)"}
ARMS = ("latency-target", "flops-target", "tp-r16")


def _cells(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cells in protocol order (model, batch, runtime)."""
    proto = result["protocol"]
    order = [f"{m}/{r}/{b}" for m in proto["models"] for b in proto["batches"] for r in proto["runtimes"]]
    cells = result["cells"]
    return [cells[k] for k in order if k in cells] + [c for k, c in cells.items() if k not in order]


def _label(cell: Mapping[str, Any]) -> str:
    return LABELS.get(cell["model"], cell["model"])


def _mark(flag: bool | None, text: str) -> str:
    """``text`` in bold when ``flag`` is true, as it is otherwise."""
    return f"**{text}**" if flag else text


def cut_table(result: Mapping[str, Any]) -> str:
    """Per cell: measured latency cut of latency-target (bold within the tolerance), its MACs cut, latency cut /
    MACs cut of every arm, and latency-target's time over Torch-Pruning's."""
    rows = []
    for c in _cells(result):
        if "arms" not in c:
            rows.append([_label(c), c["runtime"], c["batch"], "failed", "-", "-", "-", "-", "-", "-", "-"])
            continue
        a, v = c["arms"], c["verdicts"]
        ours = a["latency-target"]
        missed = " (missed)" if "error" in c else ""
        ratios = [f"{a[k]['cut_over_macs_cut']:.2f}" if a[k]["cut_over_macs_cut"] is not None else "-" for k in ARMS]
        ratios[0] = _mark(v["goal"], ratios[0])
        tp = f"{c['ratio_to_tp']:.2f}" + ("" if v["tp_equal_macs"] else f" (tp MACs cut {a['tp-r16']['macs_cut']:.1%})")
        rows.append([_label(c), c["runtime"], c["batch"], _mark(v["within_tolerance"], f"{ours['latency_cut']:.1%}") + missed,
                     f"{ours['macs_cut']:.1%}", *ratios, f"{a['flops-target']['latency_cut']:.1%}", f"{a['tp-r16']['latency_cut']:.1%}", tp])
    return table(["model", "runtime", "batch", "latency cut (target 50%)", "MACs cut", "cut / MACs cut: latency-target",
                  "flops-target", "tp-r16", "latency cut: flops-target", "tp-r16", "time latency-target / tp-r16"],
                 rows, align="llrrrrrrrrr")


def prediction_table(result: Mapping[str, Any]) -> str:
    """Per cell: profiling time, tables, predicted vs measured (unpruned ms, and the latency ratio of every arm)."""
    rows = []
    for c in _cells(result):
        if "arms" not in c:
            continue
        u, a, p = c["unpruned"], c["arms"], c["prune_to_latency"]
        ratios = " / ".join(f"{a[k]['predicted_ratio']:.2f} vs {a[k]['latency_ratio']:.2f}" for k in ARMS)
        rows.append([_label(c), c["runtime"], c["batch"], f"{c['profile_seconds']:.0f}", c["layers"], c["cache_files"],
                     f"{u['predicted_ms']:.2f} vs {u['measured_ms']:.2f}", ratios,
                     _refinements(p) + (", missed" if "error" in c else ""), f"{c['wall_seconds'] / 60:.1f}", f"{c['load_average_1min']:.1f}",
                     c.get("provenance", {}).get("git", "-")])
    return table(["model", "runtime", "batch", "profiling (s)", "layers", "cache files (tables + 1)", "unpruned ms: predicted vs measured",
                  "latency ratio predicted vs measured: latency-target / flops-target / tp-r16", "re-aims", "cell (min)", "load", "git"],
                 rows, align="llrrrrllrrrl")


def _refinements(record: Mapping[str, Any]) -> str:
    """How often prune_to_latency re-aimed: a count where the cell records one (revisions that allow several re-aims),
    else yes / no (the earlier revision re-aimed at most once)."""
    if "refinements" in record:
        return str(record["refinements"])
    return "1" if record["refined"] else "0"


def missing_text(result: Mapping[str, Any]) -> str:
    """The protocol's cells the file lacks, as one sentence."""
    missing = result.get("missing") or []
    return ("Every cell of the protocol was measured." if not missing
            else "Not measured (the protocol is unchanged; these cells are simply absent): " + ", ".join(missing) + ".")


def errors_text(result: Mapping[str, Any]) -> str:
    """The one-line error of every cell where latency-target missed its target, as a list."""
    lines = [f"- {c['model']}/{c['runtime']}/{c['batch']}: {c['error']}" for c in _cells(result) if "error" in c]
    return "\n".join(lines) if lines else "No cell missed its target."


def goal_text(result: Mapping[str, Any]) -> str:
    """Counts of the goals met over the measured cells (never a summary beyond them)."""
    cells = [c for c in _cells(result) if "arms" in c]
    within = [c for c in cells if c["verdicts"]["within_tolerance"]]
    big = [c for c in cells if c["verdicts"]["goal"] is not None]
    met = [c for c in big if c["verdicts"]["goal"]]
    equal = [c for c in cells if c["verdicts"]["tp_equal_macs"]]
    slower = [f"{c['model']}/{c['runtime']}/{c['batch']}" for c in equal if not c["verdicts"]["not_slower_than_tp"]]
    failed = [f"{c['model']}/{c['runtime']}/{c['batch']}" for c in _cells(result) if "error" in c]
    beats_flops = [c for c in cells if c["arms"]["latency-target"]["latency_cut"] > c["arms"]["flops-target"]["latency_cut"]]
    return (f"Latency cut measured side by side within {result['protocol']['tolerance']} of the target: {len(within)} of {len(_cells(result))} cells"
            + (f" (prune_to_latency failed in {len(failed)}: {', '.join(failed)})" if failed else "") + ". "
            f"Latency cut / MACs cut >= {result['protocol']['goal_cut_over_macs_cut']} at batch {result['protocol']['goal_batch']}: "
            f"{len(met)} of {len(big)} cells. Larger latency cut than flops-target at the same MACs: {len(beats_flops)} of {len(cells)} cells. "
            f"Torch-Pruning at equal MACs (within {result['protocol']['equal_macs']:.0%}): "
            f"{len(equal)} cells; latency-target slower in {len(slower)}" + (f" ({', '.join(slower)})" if slower else "") + ".")


def cells_markdown(result: Mapping[str, Any]) -> str:
    """The whole result as Markdown (the script's ``.md``)."""
    return "\n\n".join([cut_table(result), goal_text(result), missing_text(result), errors_text(result), prediction_table(result)])


@renderer("latency-target-cuts")
def latency_target_cuts(results: Results) -> str:
    """The cut table of BENCHMARKS.md's latency-target section."""
    return cut_table(results.load(STEM))


@renderer("latency-target-prediction")
def latency_target_prediction(results: Results) -> str:
    """Profiling time and prediction vs measurement."""
    return prediction_table(results.load(STEM))


@renderer("latency-target-errors")
def latency_target_errors(results: Results) -> str:
    """The cells where latency-target missed, with the library's one-line error."""
    return errors_text(results.load(STEM))


@renderer("latency-target-goals")
def latency_target_goals(results: Results) -> str:
    """How many cells meet each goal, and which cells are missing."""
    result = results.load(STEM)
    return goal_text(result) + " " + missing_text(result)


@renderer("latency-target-cell")
def latency_target_cell(results: Results, cell: str, path: str, spec: str = "g") -> str:
    """One value of one cell (``MODEL/RUNTIME/BATCH``; the key holds slashes, so the generic ``value`` cannot reach it)."""
    cells = results.load(STEM)["cells"]
    if cell not in cells:
        raise RenderError(f"{STEM}: no cell {cell!r}")
    found = lookup(cells[cell], path)
    if len(found) != 1:
        raise RenderError(f"{STEM}:{cell}:{path} selects {len(found)} values, expected one")
    return fmt(found[0], spec)


def _spans(result: Mapping[str, Any]) -> dict[str, list[float]]:
    """Figures over the measured cells: how far the prediction for latency-target's own model falls below the
    measurement (measured - predicted latency ratio), and the load."""
    cells = [c for c in _cells(result) if "arms" in c]
    return {"prediction-gap": [c["arms"]["latency-target"]["latency_ratio"] - c["arms"]["latency-target"]["predicted_ratio"] for c in cells],
            "load": [c["load_average_1min"] for c in cells]}


@renderer("latency-target-span")
def latency_target_span(results: Results, what: str, spec: str = "g") -> str:
    """``min-max`` of one figure over the measured cells (``prediction-gap`` or ``load``)."""
    spans = _spans(results.load(STEM))
    if what not in spans:
        raise RenderError(f"latency-target-span: unknown figure {what!r}; expected one of {', '.join(spans)}")
    return span(spans[what], spec, sep=" to ")


@renderer("latency-target-own-cut")
def latency_target_own_cut(results: Results, cell: str, spec: str = ".1%") -> str:
    """The latency cut ``prune_to_latency``'s own end-to-end check measured for a cell's last model."""
    ratio = lookup(results.load(STEM)["cells"].get(cell) or {"missing": None}, "prune_to_latency/measured_latency_ratio")
    return fmt(1.0 - ratio[0], spec)
