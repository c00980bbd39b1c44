"""Threshold strategies: which channels of each layer to keep, from per-channel scores.

Pure functions on tensors: ``scores`` maps a layer name to nonnegative per-channel importances
(``|gamma|``, or filter L1 norms for ``l1-norm``); the result is a keep mask per layer (True = keep).

Strategies (REFERENCE section 3):

- ``grad``: per layer, the first valley of the histogram of its scores (polarization, Fig. 2);
  when the histogram has no valley the layer falls back to the fixed threshold
  (``GRAD_FALLBACK_THRESHOLD`` = 0.01), which keeps it nearly whole.
- ``fixed``: keep ``score > threshold`` (one global threshold, 0.01 by default).
- ``percent``: remove the ``percent`` fraction of smallest scores over all layers together
  (Network Slimming's global quantile).
- ``uniform`` / ``l1-norm``: remove the ``ratio`` fraction of smallest scores of every layer.
- ``random``: remove the ``ratio`` fraction of every layer at random (seeded).

Every layer keeps at least ``min_channels`` channels (its largest scores).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..errors import PolarpruneError
from .registry import SCORE_STRATEGIES, STRATEGIES, LiveView, strategy as strategy_record

log = logging.getLogger(__name__)

GRAD_FALLBACK_THRESHOLD = 0.01
GRAD_WARN_THRESHOLD = 0.2
VALLEY = "valley"
FALLBACK_FIXED = "fallback-fixed"


@dataclass
class SelectionResult:
    """Keep masks per layer, the threshold each layer was cut at, and notes (fallbacks...)."""

    keep: dict[str, Tensor]
    thresholds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def kept_counts(self) -> dict[str, int]:
        """Number of kept channels per layer."""
        return {name: int(mask.sum()) for name, mask in self.keep.items()}


def histogram_valley(counts: Tensor) -> int | None:
    """Index ``i+1`` of the first ``i`` with ``d[i] <= 0 <= d[i+1]`` (``d = diff(counts)``), None if none."""
    d = torch.diff(counts.to(torch.float64))
    for i in range(d.numel() - 1):
        if d[i] <= 0 <= d[i + 1]:
            return i + 1
    return None


def grad_threshold(values: Tensor, bins: int = 100, value_range: tuple[float, float] = (0.0, 1.0),
                   warn: bool = True) -> tuple[float, str]:
    """``(left edge of the first valley bin, "valley")`` of the histogram of ``values`` on ``value_range``,
    or ``(GRAD_FALLBACK_THRESHOLD, "fallback-fixed")`` without a valley; a valley above 0.2 (layer not
    polarized?) is logged when ``warn``."""
    if bins < 3:
        raise PolarpruneError(f"grad strategy: bins must be >= 3, got {bins}")
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise PolarpruneError(f"grad strategy: value_range must be increasing, got {value_range}")
    flat = values.detach().reshape(-1).to(torch.float64).cpu()
    counts = torch.histc(flat, bins=bins, min=low, max=high)
    valley = histogram_valley(counts)
    if valley is None:
        return GRAD_FALLBACK_THRESHOLD, FALLBACK_FIXED
    threshold = low + valley * (high - low) / bins
    if warn and threshold > GRAD_WARN_THRESHOLD:
        log.warning("grad strategy: valley threshold %.3f exceeds %.1f (layer not polarized?)", threshold, GRAD_WARN_THRESHOLD)
    return threshold, VALLEY


def count_to_remove(ratio: float, num_channels: int) -> int:
    """Channels removed from a layer of ``num_channels`` at ``ratio``: ``ratio*C`` rounded half up."""
    return min(num_channels, int(math.floor(ratio * num_channels + 0.5)))


def smallest_mask(scores: Tensor, num_remove: int) -> Tensor:
    """Keep mask removing the ``num_remove`` smallest scores (ties: the earlier index goes)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if num_remove > 0:
        order = torch.sort(scores.detach().cpu(), stable=True).indices
        keep[order[:num_remove]] = False
    return keep


def keep_at_least(keep: Tensor, scores: Tensor, count: int) -> Tensor:
    """``keep`` plus the best-scored removed channels so that ``min(count, size)`` stay (kept ones first)."""
    need = min(count, keep.numel())
    if int(keep.sum()) >= need:
        return keep
    keep = keep.clone()
    scores = scores.detach().cpu()
    order = torch.sort(torch.where(keep, torch.full_like(scores, math.inf), scores), descending=True, stable=True).indices
    keep[order[:need]] = True
    return keep


def _check_scores(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    checked: dict[str, Tensor] = {}
    for name, value in scores.items():
        if not isinstance(value, Tensor):
            raise PolarpruneError(f"scores of layer {name!r} must be a tensor, got {type(value).__name__}")
        flat = value.detach().cpu()
        if flat.dim() != 1 or flat.numel() == 0:
            raise PolarpruneError(f"scores of layer {name!r} must be a non-empty 1-D tensor, got shape {tuple(value.shape)}")
        if not torch.isfinite(flat).all():
            raise PolarpruneError(f"scores of layer {name!r} contain NaN or inf")
        if (flat < 0).any():
            raise PolarpruneError(f"scores of layer {name!r} must be nonnegative (pass |gamma|)")
        checked[name] = flat.float()
    return checked


def _layer_ratio(ratio: float | Mapping[str, float] | None, name: str, strategy: str) -> float:
    if ratio is None:
        raise PolarpruneError(f"strategy {strategy!r} needs a ratio (fraction of channels removed per layer)")
    value = ratio.get(name, 0.0) if isinstance(ratio, Mapping) else ratio
    if not 0.0 <= float(value) <= 1.0:
        raise PolarpruneError(f"strategy {strategy!r}: ratio of layer {name!r} must be in [0, 1], got {value}")
    return float(value)


def global_percent_threshold(scores: Mapping[str, Tensor], percent: float) -> tuple[float, dict[str, Tensor]]:
    """The global threshold (largest removed score, -inf if none) and keep masks removing the
    ``round(percent * total)`` smallest scores of all layers (ties by layer order then index: exact count)."""
    names = list(scores)
    flat = torch.cat([scores[n] for n in names]) if names else torch.zeros(0)
    num_remove = min(flat.numel(), int(math.floor(percent * flat.numel() + 0.5)))
    keep_flat = smallest_mask(flat, num_remove)
    threshold = float(flat[~keep_flat].max()) if num_remove > 0 else float("-inf")
    keep: dict[str, Tensor] = {}
    start = 0
    for name in names:
        size = scores[name].numel()
        keep[name] = keep_flat[start : start + size].clone()
        start += size
    return threshold, keep


Selection = tuple[dict[str, Tensor], dict[str, float], list[str]]


def select_grad(values: Mapping[str, Tensor], args: dict[str, Any]) -> Selection:
    keep, thresholds, notes = {}, {}, []
    for name, layer in values.items():
        cut, how = grad_threshold(layer, warn=args["warn"])
        if how != VALLEY:
            notes.append(f"{name}: no histogram valley, fixed threshold {cut} used ({how})")
        elif cut > GRAD_WARN_THRESHOLD:
            notes.append(f"{name}: valley threshold {cut:.3f} exceeds {GRAD_WARN_THRESHOLD}")
        keep[name] = layer > cut
        thresholds[name] = cut
    return keep, thresholds, notes


def select_fixed(values: Mapping[str, Tensor], args: dict[str, Any]) -> Selection:
    threshold = float(args["threshold"])
    return {n: layer > threshold for n, layer in values.items()}, {n: threshold for n in values}, []


def select_percent(values: Mapping[str, Tensor], args: dict[str, Any]) -> Selection:
    percent = args["percent"]
    if percent is None or not 0.0 <= float(percent) <= 1.0:
        raise PolarpruneError(f"strategy 'percent' needs percent in [0, 1] (a fraction), got {percent}")
    cut, keep = global_percent_threshold(values, float(percent))
    return keep, {name: cut for name in values}, []


def select_smallest(values: Mapping[str, Tensor], args: dict[str, Any]) -> Selection:
    keep, thresholds = {}, {}
    for name, layer in values.items():
        keep[name] = smallest_mask(layer, count_to_remove(_layer_ratio(args["ratio"], name, args["strategy"]), layer.numel()))
        removed = layer[~keep[name]]
        thresholds[name] = float(removed.max()) if removed.numel() else float("-inf")
    return keep, thresholds, []


def select_random(values: Mapping[str, Tensor], args: dict[str, Any]) -> Selection:
    generator = torch.Generator().manual_seed(int(args["seed"]))
    keep, thresholds = {}, {}
    for name, layer in values.items():
        num_remove = count_to_remove(_layer_ratio(args["ratio"], name, "random"), layer.numel())
        order = torch.randperm(layer.numel(), generator=generator)
        keep[name] = torch.ones(layer.numel(), dtype=torch.bool)
        keep[name][order[:num_remove]] = False
        thresholds[name] = float("nan")
    return keep, thresholds, []


# score strategy name -> its selection function (a live view of the registry's records)
SELECTORS: Mapping[str, Callable[[Mapping[str, Tensor], dict[str, Any]], Selection]] = LiveView(
    lambda: {name: record.function() for name, record in SCORE_STRATEGIES.items()})


def select_channels(scores: Mapping[str, Tensor], strategy: str, *, threshold: float = 0.01, percent: float | None = None,
                    ratio: float | Mapping[str, float] | None = None, min_channels: int = 1, seed: int = 0,
                    warn: bool = True) -> SelectionResult:
    """Keep masks per layer for ``strategy``; ``ratio``: one fraction or layer -> fraction (missing: 0),
    ``seed``: one generator over the layers in order (``random``), ``warn``: log ``grad``'s high valleys."""
    record = strategy_record(strategy)
    if not record.from_scores:
        raise PolarpruneError(f"strategy {strategy!r} does not pick channels from scores; choose one of {', '.join(SCORE_STRATEGIES)}")
    if min_channels < 0:
        raise PolarpruneError(f"min_channels must be >= 0, got {min_channels}")
    values = _check_scores(scores)
    args = {"strategy": strategy, "threshold": threshold, "percent": percent, "ratio": ratio, "seed": seed, "warn": warn}
    keep, thresholds, notes = record.function()(values, args)
    for name, layer in values.items():
        before = int(keep[name].sum())
        keep[name] = keep_at_least(keep[name].to(torch.bool), layer, min_channels)
        if int(keep[name].sum()) != before:
            notes.append(f"{name}: kept {int(keep[name].sum())} channels (min_channels={min_channels}) instead of {before}")
    return SelectionResult(keep=keep, thresholds=thresholds, notes=notes)


__all__ = ["STRATEGIES", "SCORE_STRATEGIES", "select_grad", "select_fixed", "select_percent", "select_smallest", "select_random", "GRAD_FALLBACK_THRESHOLD", "SELECTORS", "SelectionResult", "grad_threshold",
           "histogram_valley", "select_channels", "count_to_remove", "smallest_mask", "keep_at_least",
           "global_percent_threshold"]
