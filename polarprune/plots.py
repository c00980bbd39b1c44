"""PNG plots of a run: gamma histograms, channels kept per layer, accuracy curves, accuracy vs MACs.
Every function takes plain data (lists, dicts, tensors) and a path; the pipeline gathers the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from polarprune.fileio import atomic_output  # noqa: E402
from polarprune.models.layers import gamma_magnitude  # noqa: E402


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def bn_gammas(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """|gamma| per BN layer (all BNs, or the named ones)."""
    wanted = set(names) if names is not None else None
    return {name: gamma_magnitude(module) for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None
            and (wanted is None or name in wanted)}


def gamma_histograms(before: dict[str, torch.Tensor] | None, after: dict[str, torch.Tensor], path: Path, *,
                     thresholds: Sequence[float] = (), title: str = "BN scaling factors") -> Path:
    """Histograms of |gamma| before and after sparsity training; pruning threshold(s) marked."""
    panels = [("before sparsity training", before), ("after sparsity training", after)]
    panels = [(label, values) for label, values in panels if values]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels):
        flat = torch.cat(list(values.values())).numpy()
        upper = max(1.0, float(flat.max()) if flat.size else 1.0)
        ax.hist(flat, bins=100, range=(0.0, upper), color="#4C72B0")
        ax.set_yscale("log")
        ax.set_xlabel("|gamma|")
        ax.set_ylabel("channels")
        ax.set_title(f"{label} ({flat.size} channels)")
        for i, t in enumerate(sorted(set(round(float(x), 6) for x in thresholds))):
            ax.axvline(t, color="#C44E52", linestyle="--", linewidth=1, label="threshold" if i == 0 else None)
        if thresholds:
            ax.legend(loc="upper right")
    fig.suptitle(title)
    return save_figure(fig, path)


def channels_per_layer(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "Channels kept per layer") -> Path:
    """Bars of channels before (light) and kept (dark) for each pruned layer/group."""
    names = [str(r["name"]) for r in rows]
    before = [int(r["before"]) for r in rows]
    after = [int(r["after"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 4))
    xs = range(len(rows))
    ax.bar(xs, before, color="#C9D3E6", label="before")
    ax.bar(xs, after, color="#4C72B0", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def accuracy_curves(curves: dict[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """Eval top-1 per epoch of each training stage, stages laid one after another."""
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for stage, points in curves.items():
        if not points:
            continue
        xs = [offset + e for e, _ in points]
        ax.plot(xs, [acc for _, acc in points], marker=".", label=stage)
        ax.axvline(offset, color="#999999", linewidth=0.5)
        offset = xs[-1]
    ax.set_xlabel("epoch (stages in order)")
    ax.set_ylabel("eval top-1 (%)")
    ax.set_title("Accuracy per stage")
    ax.legend()
    return save_figure(fig, path)


def accuracy_vs_macs(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Top-1 against MACs for each stage that produced a model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row.get("top1") is None:
            continue
        ax.scatter(row["macs"] / 1e6, row["top1"], s=40)
        ax.annotate(row["name"], (row["macs"] / 1e6, row["top1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs MACs")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
