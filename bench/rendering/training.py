"""Sections 3b-6 of BENCHMARKS.md: the CIFAR recipe, engine and regularizer overhead, loader, bimodality."""

from __future__ import annotations

from typing import Any

from .engine import RenderError, Results, renderer, span, table


@renderer("cifar-recipe-table")
def cifar_recipe_table(results: Results) -> str:
    """The stages of the CIFAR-10 recipe run."""
    rows = []
    for s in results.load("cifar_recipe_resnet20")["summary"]["stages"]:
        label = "prune (`grad`)" if s["name"] == "prune" else s["name"]
        reduce = ["-", "-"] if s["name"] == "sparsity" else [f"{s['macs_reduction']:.1%}", f"{s['params_reduction']:.1%}"]
        rows.append([label, f"{s['top1']:.2f}", f"{s['macs']:,}", f"{s['params']:,}", *reduce])
    return table(["stage", "top-1 (%)", "MACs", "params", "MACs reduction", "params reduction"], rows, align="lrrrrr")


def _engine_images_per_s(settings: dict[str, Any], name: str) -> float:
    """The engine's median throughput (CPU time) in one CPU setting."""
    return settings[name]["cpu_time"]["engine_images_per_s"]["median"]


@renderer("engine-table")
def engine_table(results: Results, stem: str = "engine_throughput") -> str:
    """Engine vs bare-loop throughput in every CPU setting, and each setting's speed against fp32 NCHW."""
    settings = results.load(stem)["cpu_settings"]
    reference = _engine_images_per_s(settings, "fp32-nchw") if "fp32-nchw" in settings else None
    rows = []
    for name, m in settings.items():
        engine = _engine_images_per_s(settings, name)
        rows.append([f"`{name}`", f"{engine:.1f}", f"{m['cpu_time']['bare_images_per_s']['median']:.1f}",
                     f"{100 * m['wall_clock']['ratio_of_medians']:.1f} %", f"{100 * m['cpu_time']['ratio_of_medians']:.1f} %",
                     f"{engine / reference:.2f}x" if reference else "-"])
    return table(["setting", "engine img/s", "bare img/s", "engine / bare (wall clock)", "engine / bare (CPU time)",
                  "engine speed vs `fp32-nchw`"], rows)


@renderer("engine-speed")
def engine_speed(results: Results, stem: str, setting: str) -> str:
    """One setting's engine throughput against ``fp32-nchw`` in the same run (CPU time)."""
    settings = results.load(stem)["cpu_settings"]
    if setting not in settings or "fp32-nchw" not in settings:
        raise RenderError(f"{stem}: no setting {setting!r} beside fp32-nchw")
    return f"{_engine_images_per_s(settings, setting) / _engine_images_per_s(settings, 'fp32-nchw'):.2f}x"


@renderer("engine-verdict")
def engine_verdict(results: Results, stem: str = "engine_throughput") -> str:
    """``keeps`` or ``does NOT keep``: whether the engine kept the acceptance share of a bare loop's throughput."""
    return "keeps" if results.load(stem)["acceptance"]["passed"] else "does NOT keep"


@renderer("engine-ratios")
def engine_ratios(results: Results, stem: str = "engine_throughput") -> str:
    """The range (in %) of engine / bare throughput over every setting, wall clock and CPU time."""
    settings = results.load(stem)["cpu_settings"].values()
    return span([100 * m[k]["ratio_of_medians"] for m in settings for k in ("wall_clock", "cpu_time")], ".1f")


@renderer("engine-rounds")
def engine_rounds(results: Results, stem: str, end: str) -> str:
    """The lowest (``min``) or highest (``max``) per-round wall-clock ratio of engine to bare loop."""
    rounds = [r for m in results.load(stem)["cpu_settings"].values() for r in m["wall_clock"]["per_round_ratios"]["all"]]
    if end not in ("min", "max"):
        raise RenderError(f"end must be min or max, got {end!r}")
    return f"{(min if end == 'min' else max)(rounds):.0%}"


REGULARIZER_LABELS = {"none": "none", "l1": "L1", "polarization": "polarization", "mask-l1": "mask-L1"}


@renderer("regularizer-table")
def regularizer_table(results: Results) -> str:
    """Median step, paired ratio and isolated hook time per regularizer."""
    variants = results.load("regularizer_overhead")["variants"]
    rows = []
    for key, label in REGULARIZER_LABELS.items():
        v = variants[key]
        if key == "none":
            rows.append([label, f"{v['step_seconds']['median']:.3f}", "1", "-", "-"])
        else:
            rows.append([label, f"{v['step_seconds']['median']:.3f}", f"{v['paired_ratio_median']:.4f}",
                         f"{v['hook_ms']:.3f}", f"{v['hook_overhead_fraction']:.3%}"])
    return table(["regularizer", "median step (s)", "paired ratio to `none`", "hook work alone (ms)", "hook / step"], rows)


def _regularized(results: Results) -> list[dict[str, Any]]:
    """The regularizer variants (all but ``none``) of the overhead benchmark."""
    return [v for k, v in results.load("regularizer_overhead")["variants"].items() if k != "none"]


@renderer("regularizer-verdict")
def regularizer_verdict(results: Results) -> str:
    """``All within`` or ``NOT all within``: whether every regularizer kept within the acceptance line."""
    return "All within" if all(v["pass"] for v in _regularized(results)) else "NOT all within"


@renderer("regularizer-limit")
def regularizer_limit(results: Results) -> str:
    """The acceptance line as the step-time increase allowed (``limit_ratio`` 1.03 -> 3%)."""
    return f"{results.load('regularizer_overhead')['limit_ratio'] - 1:.0%}"


@renderer("regularizer-hook-ms")
def regularizer_hook_ms(results: Results) -> str:
    """The range of the isolated hook times (ms) of the regularizers."""
    return span([v["hook_ms"] for v in _regularized(results)], ".2f")


@renderer("bimodality-table")
def bimodality_table(results: Results) -> str:
    """|gamma| shares after sparsity training on the digits, per regularizer."""
    data = results.load("bimodality_digits")
    labels = {"polarization": "polarization, lambda {lbd:g}, t {t:g}, clamp {clamp:g}", "l1": "L1, lambda {lbd:g}",
              "none": "no regularizer"}
    rows = []
    for name, r in data["runs"].items():
        rows.append([labels.get(name, name).format(**r["sparsity"]), f"{r['near_zero']:.0%}", f"{r['in_gap']:.0%}",
                     f"{r['median_others']:.2f}", f"{r['min_gamma']:.3f}", f"{r['top1']:.1f}%"])
    low, (gap_low, gap_high) = data["near_zero"], data["gap"]
    return table(["run", f"\\|gamma\\| < {low:g}", f"\\|gamma\\| in [{gap_low:g}, {gap_high:g})", "median of the others",
                  "smallest \\|gamma\\|", "top-1"], rows, align="lrrrrr")

