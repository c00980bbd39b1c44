"""``polarprune inspect CHECKPOINT [--json] [--plot-dir DIR]``: how polarized are the BN gammas?

Per BN layer: |gamma| quantiles, channels below 0.01, the ``grad`` threshold (first histogram valley)
and its removals; a summary over the regularized layers and the MACs a trial prune would leave.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import PolarpruneError
from .common import add_checkpoint_arguments, check_at_least, command_parser

SMALL_GAMMA = 0.01
QUANTILES = (("min", 0.0), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("max", 1.0))
GRID_COLUMNS = 6
DESCRIPTION = """Show how polarized the BN scaling factors of a checkpoint are: per-layer |gamma| quantiles,
channels below 0.01 and below the layer's grad threshold, and what a trial prune would leave."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "inspect", "per-layer statistics of the BN gammas", DESCRIPTION, run)
    add_checkpoint_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot-dir", metavar="DIR", help="write gamma_histogram.png and gamma_layers.png into DIR")
    p.add_argument("--regularized-only", action="store_true", help="list only the BNs sparsity training regularizes by default")


# ----------------------------------------------------------------------------- statistics (pure)


def quantiles(values: Any) -> dict[str, float]:
    """min / 25% / median / 75% / max of a 1-D tensor (linear interpolation)."""
    import torch

    flat = values.detach().flatten().double().cpu()
    points = torch.quantile(flat, torch.tensor([q for _, q in QUANTILES], dtype=torch.float64))
    return {key: float(v) for (key, _), v in zip(QUANTILES, points)}


def layer_stats(name: str, magnitudes: Any, regularized: bool) -> dict[str, Any]:
    """One table row: |gamma| quantiles, channels below 0.01, grad threshold and its removals."""
    from ..pruning.strategies import grad_threshold

    threshold, how = grad_threshold(magnitudes)
    return {"name": name, "channels": int(magnitudes.numel()), "regularized": regularized, **quantiles(magnitudes),
            "below_0.01": int((magnitudes < SMALL_GAMMA).sum()), "grad_threshold": float(threshold),
            "grad_threshold_how": how, "grad_removed": int((magnitudes <= threshold).sum())}


def summary_stats(rows: Sequence[dict[str, Any]], magnitudes: Sequence[Any]) -> dict[str, Any]:
    """Totals over the given layers: channels, below 0.01, grad removals, overall quantiles."""
    import torch

    if not rows:
        return {"layers": 0, "channels": 0}
    flat = torch.cat([m.flatten() for m in magnitudes])
    return {"layers": len(rows), "channels": int(flat.numel()), "below_0.01": sum(r["below_0.01"] for r in rows),
            "grad_removed": sum(r["grad_removed"] for r in rows), **quantiles(flat)}


# ----------------------------------------------------------------------------- output


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table of the per-layer rows."""
    width = max([len("layer")] + [len(r["name"]) for r in rows])
    head = (f"{'layer':<{width}} {'reg':>3} {'ch':>5} {'min':>7} {'q25':>7} {'median':>7} {'q75':>7} {'max':>7} "
            f"{'<0.01':>6} {'grad thr':>8} {'<=thr':>6}")
    lines = [head]
    for r in rows:
        thr = f"{r['grad_threshold']:.3f}" + ("*" if r["grad_threshold_how"] != "valley" else " ")
        lines.append(
            f"{r['name']:<{width}} {'yes' if r['regularized'] else 'no':>3} {r['channels']:>5} "
            f"{r['min']:>7.4f} {r['q25']:>7.4f} {r['median']:>7.4f} {r['q75']:>7.4f} {r['max']:>7.4f} "
            f"{r['below_0.01']:>6} {thr:>8} {r['grad_removed']:>6}"
        )
    return "\n".join(lines)


def write_plots(folder: Path, layers: dict[str, Any], overall_names: Sequence[str], thresholds: dict[str, float]) -> list[Path]:
    """``gamma_histogram.png`` (all ``overall_names`` layers together) and ``gamma_layers.png``
    (one histogram per layer, its grad threshold dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ..plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    flat = torch.cat([layers[n].flatten() for n in overall_names]).numpy()
    top = max(1.0, float(flat.max()) if flat.size else 1.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(flat, bins=100, range=(0.0, top), color="#3a6ea5")
    ax.axvline(SMALL_GAMMA, color="#c0392b", linestyle="--", linewidth=1, label="0.01")
    ax.set_xlabel("|gamma|")
    ax.set_ylabel("channels")
    ax.set_title(f"BN scaling factors ({len(overall_names)} layers, {flat.size} channels)")
    ax.legend()
    overall = folder / "gamma_histogram.png"
    save_figure(fig, overall, dpi=100)

    names = list(layers)
    cols = min(GRID_COLUMNS, len(names))
    grid_rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(2.6 * cols, 1.9 * grid_rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = layers[name].flatten().numpy()
        ax.hist(values, bins=50, range=(0.0, max(1.0, float(values.max()))), color="#3a6ea5")
        ax.axvline(thresholds[name], color="#c0392b", linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    grid = folder / "gamma_layers.png"
    save_figure(fig, grid, dpi=100)
    return [overall, grid]


# ----------------------------------------------------------------------------- command


def inspect_model(model: Any, example_inputs: Any, regularized_only: bool = False) -> dict[str, Any]:
    """The report as plain data: per-layer rows, summary, trial-prune MACs ratios."""
    from ..pruning import TrialAnalysis
    from ..models.layers import gamma_magnitude
    from ..sparsity.monitor import bn_modules
    from ..sparsity.selection import regularized_bn_names

    bns = bn_modules(model)
    if not bns:
        raise PolarpruneError(f"model {type(model).__name__} has no BatchNorm layer with a gamma")
    regularized = regularized_bn_names(model, example_inputs)
    chosen = set(regularized)
    names = [n for n in bns if n in chosen] if regularized_only else list(bns)
    magnitudes = {n: gamma_magnitude(bns[n]) for n in names}
    rows = [layer_stats(n, magnitudes[n], n in chosen) for n in names]
    reg_rows = [r for r in rows if r["regularized"]]
    summary = summary_stats(reg_rows, [magnitudes[r["name"]] for r in reg_rows])
    trial = TrialAnalysis(model, example_inputs, bn_names=regularized)
    summary["trial_macs_ratio_grad"], summary["trial_params_ratio_grad"] = trial.ratios(model, "grad")
    summary["trial_macs_ratio_fixed"], summary["trial_params_ratio_fixed"] = trial.ratios(model, "fixed")
    return {"layers": rows, "summary": summary, "_magnitudes": magnitudes}


def run(args: argparse.Namespace) -> int:
    from ..serialization import read_model
    from ..flops import example_input

    check_at_least({"--input-size": (args.input_size, 1)})
    model = read_model(args.checkpoint)
    x = example_input(model, input_size=args.input_size)
    report = inspect_model(model, x, args.regularized_only)
    magnitudes = report.pop("_magnitudes")
    spec = getattr(model, "polarprune_spec", {}) or {}
    report = {"checkpoint": str(args.checkpoint), "model": spec.get("name"), **report}
    if args.plot_dir:
        overall = [r["name"] for r in report["layers"] if r["regularized"]] or list(magnitudes)
        thresholds = {r["name"]: r["grad_threshold"] for r in report["layers"]}
        report["plots"] = [str(p) for p in write_plots(Path(args.plot_dir), magnitudes, overall, thresholds)]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    s = report["summary"]
    print(f"{args.checkpoint}: {report['model'] or 'model'}, |gamma| per BN layer (reg: regularized by default)")
    print(format_table(report["layers"]))
    if s.get("layers"):
        print(
            f"regularized layers: {s['layers']}, channels {s['channels']}, |gamma| < 0.01: {s['below_0.01']} "
            f"({100 * s['below_0.01'] / s['channels']:.1f}%), at or below the grad threshold: {s['grad_removed']}"
        )
    print(
        f"trial prune leaves {100 * s['trial_macs_ratio_grad']:.1f}% of the MACs with grad, "
        f"{100 * s['trial_macs_ratio_fixed']:.1f}% with fixed 0.01  (* = no histogram valley, fixed 0.01 used)"
    )
    for path in report.get("plots", []):
        print(f"wrote {path}")
    return 0
