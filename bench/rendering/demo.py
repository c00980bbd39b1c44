"""README: the stages of ``polarprune demo``."""

from __future__ import annotations

from .engine import Results, renderer, table


DEMO_STAGE_LABELS = {"sparsity": "sparsity (polarization, {epochs} epochs)", "prune": "prune (`grad`)",
                     "finetune": "fine-tune ({epochs} epochs)"}


@renderer("demo-table")
def demo_table(results: Results, method: str = "polarization") -> str:
    """The stages of ``polarprune demo``."""
    data = results.load(f"demo_{method}")
    rows = []
    for s in data["stages"]:
        label = DEMO_STAGE_LABELS.get(s["name"], s["name"]).format(epochs=data["stage_epochs"].get(s["name"], "?"))
        macs, params = f"{s['macs'] / 1e6:.2f} M", f"{s['params'] / 1e3:.1f} K"
        if s["name"] == "prune":
            macs += f" (-{s['macs_reduction']:.1%})"
            params += f" (-{s['params_reduction']:.1%})"
        rows.append([label, f"{s['top1']:.2f}%", macs, params])
    return table(["stage", "top-1 (digits test split)", "MACs", "params"], rows, align="lrrr")


@renderer("demo-seconds")
def demo_seconds(results: Results, method: str = "polarization") -> str:
    """Wall-clock seconds of the whole demo command."""
    return f"{results.load(f'demo_{method}')['wall_seconds']:.0f}"

