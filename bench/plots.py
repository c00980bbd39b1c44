"""The plots of the methods benchmarks: accuracy against MACs, and the |gamma| histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polarprune.fileio import atomic_output


def plot_acc_macs(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, path: Path, title: str) -> None:
    """Top-1 right after pruning (x) and after fine-tuning (dot) against MACs, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        macs = row["prune"]["macs_after"] / 1e6
        ax.plot([macs, macs], [row["prune"]["top1"], row["finetune"]["top1"]], color="#bbbbbb", lw=1)
        ax.scatter([macs], [row["finetune"]["top1"]], label=row["label"], s=40, zorder=3)
        ax.scatter([macs], [row["prune"]["top1"]], marker="x", color="#888888", s=20, zorder=3)
    if baseline:
        ax.scatter([baseline["macs"] / 1e6], [baseline["top1"]], marker="*", s=120, color="black",
                   label="unpruned (no regularizer)", zorder=3)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("top-1 (%)  (dot: fine-tuned, x: right after pruning)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save_fig(fig, path)


def plot_gammas(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """One |gamma| histogram per method (log counts), after its sparsity stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    lines = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(4.2 * cols, 2.9 * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        values = row["gammas"]
        upper = max(1.0, max(values)) if values else 1.0
        ax.hist(values, bins=100, range=(0.0, upper), color="#4C72B0")
        ax.set_yscale("log")
        ax.set_title(f"{row['method']} ({len(values)} channels)", fontsize=9)
        ax.set_xlabel("|gamma| after sparsity training", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)


def save_fig(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
