"""BENCHMARKS.md section 8: YOLOv8n on the CIFAR-10 detection set (``bench/bench_yolo.py``).

The result file is written after every stage of the run, so any part may be missing: a stage not yet run
renders as ``pending`` (the whole section, while the file is not there). Every block takes an optional result
file stem (default ``yolo_cifar``): ``<!-- render: yolo-cifar-table yolo_cifar_t18 -->`` renders a run made with
``--stem yolo_cifar_t18``."""

from __future__ import annotations

from typing import Any, Mapping

from .engine import RenderError, Results, renderer, table

STEM = "yolo_cifar"
PENDING = "pending"
MODELS = ("baseline", "polarization/sparsity", "polarization/pruned", "polarization/finetuned",
          "l1/sparsity", "l1/pruned", "l1/finetuned", "tp/pruned", "tp/finetuned")
LABELS = {"baseline": "baseline", "sparsity": "after sparsity", "pruned": "pruned", "finetuned": "pruned + fine-tuned"}
ARM_LABELS = {"polarization": "polarization", "l1": "L1", "tp": "Torch-Pruning GroupNorm"}
GOAL_POINTS = 1.0  # the goal: within 1 point of the baseline's mAP50-95 after fine-tuning
LATENCY_TOLERANCE = 0.05  # as latency-target's (polarprune.deploy.latency_cost.TOLERANCE; rendering imports no torch)


def _load(results: Results, stem: str = STEM) -> dict[str, Any] | None:
    """The result file ``stem`` (a run with its own settings has its own, ``bench_yolo.py --stem``), or None while
    it is not there (the run has not written its first stage)."""
    try:
        return results.load(stem)
    except RenderError as exc:
        if "is missing" in str(exc):
            return None
        raise


def _label(name: str) -> str:
    arm, _, kind = name.partition("/")
    return "baseline" if name == "baseline" else f"{ARM_LABELS[arm]}, {LABELS[kind]}"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _vs_baseline(data: Mapping[str, Any], name: str) -> str:
    """The paired bootstrap difference to the baseline in mAP50-95 points, with its 95% interval."""
    pair = (data.get("evaluate") or {}).get("bootstrap", {}).get("pairs", {}).get(f"{name} - baseline")
    if pair is None:
        return "-" if name == "baseline" else PENDING
    low, high = pair["ci95"]
    return f"{_points(pair['mean'])} [{_points(low)}, {_points(high)}]"


def _latency(data: Mapping[str, Any], name: str, runtime: str) -> str:
    figures = (data.get("latency") or {}).get(runtime, {})
    if name not in figures:
        return PENDING if name == "baseline" or name.endswith("/finetuned") else ""
    figure = figures[name]
    return f"{figure['median_ms']:.1f} ({figure['ratio_to_baseline']:.2f}x)"


def _failure(data: Mapping[str, Any], name: str) -> str | None:
    """The one-line error of the stage that should have made ``name`` (Torch-Pruning's anchor may fail)."""
    arm, _, kind = name.partition("/")
    stage = {"pruned": "prune", "finetuned": "finetune"}.get(kind)
    record = data.get("prune", {}).get(arm) if stage == "prune" else None
    if record and record.get("error"):
        return record["error"]
    if data["status"].get(f"{arm}/{stage}") == "failed":
        return "failed (its stage recorded an error)"
    return None


def _row(data: Mapping[str, Any], name: str) -> list[str]:
    scored = (data.get("evaluate") or {}).get("models", {}).get(name)
    failure = _failure(data, name)
    if failure:
        return [_label(name), f"failed: {failure}", "", "", "", "", "", ""]
    if scored is None:
        return [_label(name), PENDING, PENDING, PENDING, PENDING, PENDING, _latency(data, name, "onnxruntime"),
                _latency(data, name, "eager")]
    return [_label(name), f"{100 * scored['map50_95']:.1f}", _vs_baseline(data, name), f"{100 * scored['map50']:.1f}",
            f"{scored['macs'] / 1e6:.0f}", f"{scored['params'] / 1e6:.2f}", _latency(data, name, "onnxruntime"),
            _latency(data, name, "eager")]


@renderer("yolo-cifar-table")
def yolo_cifar_table(results: Results, stem: str = STEM) -> str:
    """One row per model: mAP50-95 and its paired difference to the baseline, mAP50, MACs, params, latency."""
    data = _load(results, stem)
    if data is None:
        return "Pending: the run has not written its result file yet (no stage finished).\n"
    rows = [_row(data, name) for name in MODELS]
    return table(["model", "mAP50-95", "vs baseline (points, 95% CI)", "mAP50", "MACs (M)", "params (M)",
                  "onnxruntime ms (x baseline)", "eager ms (x baseline)"], rows, align="lrrrrrrr")


SCALE_WHEN_PENDING = ("the run's scale is not recorded yet (no stage finished); the script's full scale is 3,000 train and "
                      "1,000 val canvases of 160 pixels, a 30-epoch baseline, 10 sparsity and 10 fine-tuning epochs")


@renderer("yolo-cifar-scale")
def yolo_cifar_scale(results: Results, stem: str = STEM) -> str:
    """The scale the run used (images, image size, epochs per stage), from its result file."""
    data = _load(results, stem)
    if data is None:
        return SCALE_WHEN_PENDING
    s = data["scale"]
    return (f"{s['train_images']:,} train and {s['val_images']:,} val canvases of {s['imgsz']} x {s['imgsz']} pixels, "
            f"{s['min_object']} to {s['max_object']} pixels an object; a {s['epochs']}-epoch baseline, "
            f"{s['sparsity_epochs']} sparsity epochs per arm and {s['finetune_epochs']} fine-tuning epochs per pruned model, "
            f"batch {s['batch']}; {s['bootstrap']} bootstrap resamples (scale `{data['scale_name']}`)")


@renderer("yolo-cifar-status")
def yolo_cifar_status(results: Results, stem: str = STEM) -> str:
    """Which stages of the run are done, and which are still pending or failed."""
    data = _load(results, stem)
    if data is None:
        return "every stage is pending"
    groups: dict[str, list[str]] = {}
    for stage, status in data["status"].items():
        groups.setdefault(status, []).append(stage)
    return "; ".join(f"{status}: {', '.join(stages)}" for status, stages in groups.items())


def _pair(data: Mapping[str, Any], a: str, b: str) -> Mapping[str, Any] | None:
    return (data.get("evaluate") or {}).get("bootstrap", {}).get("pairs", {}).get(f"{a} - {b}")


def _latency_ratio(data: Mapping[str, Any], arm: str) -> float | None:
    """The fine-tuned model's onnxruntime latency over the baseline's: from the side-by-side latency stage, else
    as the prune step measured it; None where neither measured it (the smoke cuts MACs)."""
    figure = (data.get("latency") or {}).get("onnxruntime", {}).get(f"{arm}/finetuned")
    if figure is not None:
        return figure["ratio_to_baseline"]
    record = data.get("prune", {}).get(arm) or {}
    return (record.get("latency") or {}).get("measured_latency_ratio", record.get("measured_latency_ratio"))


def _goal(data: Mapping[str, Any], arm: str) -> str:
    """Whether an arm's fine-tuned model is within 1 point of the baseline's mAP50-95 (its paired difference) at
    the target latency (within the latency target's tolerance of 0.05)."""
    pair = _pair(data, f"{arm}/finetuned", "baseline")
    if pair is None:
        return f"{ARM_LABELS[arm]}: pending"
    ratio = _latency_ratio(data, arm)
    fast = ratio is None or ratio <= 1 - float(data.get("target_reduction", 0.5)) + LATENCY_TOLERANCE
    verdict = "meets" if 100 * pair["mean"] >= -GOAL_POINTS and fast else "misses"
    at = f" at {ratio:.2f}x the baseline's onnxruntime latency" if ratio is not None else ""
    return f"{ARM_LABELS[arm]} {verdict} it ({_points(pair['mean'])} points{at})"


WHEN = {"pruned": "at the prune step", "finetuned": "after fine-tuning"}


def _ahead(data: Mapping[str, Any], kind: str, other: str) -> str:
    """Polarization against ``other`` at one step: ahead, behind or within noise, by the paired bootstrap."""
    pair = _pair(data, f"polarization/{kind}", f"{other}/{kind}")
    if pair is None:
        failed = _failure(data, f"{other}/{kind}")
        return f"Polarization against {ARM_LABELS[other]} {WHEN[kind]}: " + ("no model (its stage failed)" if failed else PENDING)
    low, high = pair["ci95"]
    word = ("ahead of" if pair["mean"] > 0 else "behind") if pair["beyond_noise"] else "within noise of"
    return (f"{WHEN[kind].capitalize()}, polarization is {word} {ARM_LABELS[other]} ({_points(pair['mean'])} points, "
            f"95% CI [{_points(low)}, {_points(high)}])")


@renderer("yolo-cifar-reading")
def yolo_cifar_reading(results: Results, stem: str = STEM) -> str:
    """The verdicts the numbers give: the 1-point goal per arm, polarization against L1 and Torch-Pruning."""
    data = _load(results, stem)
    if data is None:
        return "- Pending: no result yet.\n"
    items = ["The goal (within 1 point of the baseline's mAP50-95 after fine-tuning, at half its latency): "
             + "; ".join(_goal(data, arm) for arm in ("polarization", "l1", "tp")) + "."]
    items += [_ahead(data, kind, other) + "." for kind in ("pruned", "finetuned") for other in ("l1", "tp")]
    return "".join(f"- {item}\n" for item in items)


def _fraction(row: Mapping[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


@renderer("yolo-cifar-sparsity")
def yolo_cifar_sparsity(results: Results, stem: str = STEM) -> str:
    """Each arm's sparsity stage epoch by epoch: lambda, the share of gammas below 0.01, their mean, and the trial
    prune's MACs and predicted onnxruntime latency ratios (runs before this record have none: "not recorded")."""
    data = _load(results, stem)
    traces = (data or {}).get("sparsity")
    if not traces:
        return "Not recorded by this run's result file.\n"
    rows = [[ARM_LABELS[arm], f"{row['epoch']:.0f}", f"{row['lambda']:g}" if "lambda" in row else "-",
             _fraction(row, "gamma_frac_below_0.01"), _fraction(row, "gamma_mean"), _fraction(row, "trial_macs_ratio_grad"),
             _fraction(row, "trial_latency_ratio_grad")]
            for arm, trace in traces.items() if trace for row in trace["epochs"]]
    return table(["arm", "epoch", "lambda", "gammas below 0.01", "gamma mean", "trial MACs ratio (grad)",
                  "trial predicted latency ratio"], rows, align="lrrrrrr")
