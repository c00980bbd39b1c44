"""``PruneReport``: what a pruning did, as a dataclass that turns into JSON and a short table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _ratio(before: int, after: int) -> float:
    return 0.0 if before <= 0 else 1.0 - after / before


def _json_number(value: float | None) -> float | None:
    """NaN/inf are not JSON: they become None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class GroupRow:
    """One channel group: its name (first BN), its BNs, channels before/after, threshold(s)."""

    group: str
    bn_names: list[str]
    residual: bool
    channels_before: int
    channels_after: int
    threshold: float | dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        threshold = self.threshold
        return {**asdict(self), "threshold": {k: _json_number(v) for k, v in threshold.items()}
                if isinstance(threshold, dict) else _json_number(threshold)}


@dataclass
class PruneReport:
    """Result of ``prune_model``: per-group rows, cost before/after, output differences (pruned vs original
    on the example inputs, with and without shift compensation), notes."""

    strategy: str
    options: dict[str, Any]
    rows: list[GroupRow]
    macs_before: int
    macs_after: int
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    max_abs_output_diff: float
    max_abs_output_diff_uncompensated: float | None = None
    compensated: bool = True
    removed_blocks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    # MACs after under the original polarization code's accounting (residual streams kept at full
    # width, block outputs scattered back) for the same per-BN choice; None: not computable
    macs_original_accounting: int | None = None

    @property
    def macs_reduction(self) -> float:
        return _ratio(self.macs_before, self.macs_after)

    @property
    def flops_reduction(self) -> float:
        return _ratio(self.flops_before, self.flops_after)

    @property
    def params_reduction(self) -> float:
        return _ratio(self.params_before, self.params_after)

    @property
    def channels_before(self) -> int:
        return sum(r.channels_before for r in self.rows)

    @property
    def channels_after(self) -> int:
        return sum(r.channels_after for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (reductions included)."""
        return {
            "strategy": self.strategy,
            "options": dict(self.options),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": self.macs_reduction,
            "macs_original_accounting": self.macs_original_accounting,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "flops_reduction": self.flops_reduction,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_reduction": self.params_reduction,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "max_abs_output_diff": _json_number(self.max_abs_output_diff),
            "max_abs_output_diff_uncompensated": _json_number(self.max_abs_output_diff_uncompensated),
            "compensated": self.compensated,
            "removed_blocks": list(self.removed_blocks),
            "layers": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }

    def summary(self) -> dict[str, Any]:
        """The headline numbers (for file metadata and logs)."""
        full = self.to_dict()
        return {k: full[k] for k in ("strategy", "macs_before", "macs_after", "macs_reduction", "params_before",
                                     "params_after", "params_reduction", "max_abs_output_diff", "removed_blocks")}

    def table(self, max_rows: int = 200) -> str:
        """A plain-text table: one line per group, then the totals."""
        width = max([len(r.group) for r in self.rows] + [5])
        lines = [f"{'group':<{width}}  {'res':>3}  {'before':>6}  {'after':>6}  threshold"]
        for row in self.rows[:max_rows]:
            thr = row.threshold
            if isinstance(thr, dict):
                values = [v for v in thr.values() if v is not None and math.isfinite(v)]
                text = f"{min(values):.4g}..{max(values):.4g}" if values else "-"
            else:
                text = "-" if thr is None or not math.isfinite(thr) else f"{thr:.4g}"
            lines.append(f"{row.group:<{width}}  {'yes' if row.residual else '':>3}  {row.channels_before:>6}  {row.channels_after:>6}  {text}")
        if len(self.rows) > max_rows:
            lines.append(f"... {len(self.rows) - max_rows} more groups")
        lines.append(f"channels {self.channels_before} -> {self.channels_after}; MACs {self.macs_before:,} -> {self.macs_after:,} "
                     f"(-{self.macs_reduction:.1%}); params {self.params_before:,} -> {self.params_after:,} (-{self.params_reduction:.1%})")
        if self.macs_original_accounting is not None:
            lines.append(f"MACs under the original code's accounting (scatter, same per-BN choice): {self.macs_original_accounting:,} "
                         f"(-{_ratio(self.macs_before, self.macs_original_accounting):.1%})")
        diff = f"max |output diff| {self.max_abs_output_diff:.3g}"
        if self.max_abs_output_diff_uncompensated is not None:
            diff += f" (without compensation {self.max_abs_output_diff_uncompensated:.3g})"
        lines.append(diff)
        if self.removed_blocks:
            lines.append(f"removed branches: {', '.join(self.removed_blocks)}")
        return "\n".join(lines)


def recorded_options(options: Any, threshold: float | None = None) -> dict[str, Any]:
    """A ``PruneOptions`` as the report records it: plain data, mask names only, the threshold a search found."""
    recorded = options.model_dump(exclude={"masks", "bn_include", "bn_exclude"})
    recorded["masks"] = sorted(options.masks) if options.masks else None
    if threshold is not None:
        recorded["threshold"] = threshold
    return recorded


def build_report(options: Any, rows: list[GroupRow], before: Any, after: Any, diff: float, **extra: Any) -> PruneReport:
    """The one report of both residual modes: ``before``/``after`` are ``flops.CostProfile``s of the same
    counter (the unpruned and the pruned model); ``extra``: the other ``PruneReport`` fields."""
    return PruneReport(strategy=options.strategy, options=recorded_options(options, extra.pop("threshold", None)), rows=rows,
                       macs_before=before.cost.macs, macs_after=after.cost.macs, flops_before=before.cost.flops,
                       flops_after=after.cost.flops, params_before=before.cost.params, params_after=after.cost.params,
                       max_abs_output_diff=diff, **extra)


__all__ = ["PruneReport", "GroupRow", "build_report", "recorded_options"]
