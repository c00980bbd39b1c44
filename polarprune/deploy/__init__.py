"""Deployment: export a model (ONNX, TorchScript, torch.export) and verify the artifact
(``export``), measure latency side by side per runtime (``latency``), and widths that suit
the runtime (``widths``), the runtime records (``runtimes``) and the latency cost model with
``prune_to_latency`` (``latency_cost``). docs/deploy.md describes the workflow."""

from __future__ import annotations

from .export import DEFAULT_TOLERANCE, EXPORT_FORMATS, ExportReport, export_model, load_artifact
from .latency import (RUNTIMES, STEADY_MALLOC_ENV, LatencyFigure, LatencyResult, is_noisy, latency_figure, latency_ms,
                      measure_latency, steady_malloc)
from .latency_cost import LatencyCheck, LatencyPrune, latency_cost_model, prune_for_runtime, prune_to_latency, prune_with_cost_model
from .runtimes import RUNTIME_RECORDS, Runtime, register_runtime, runtime
from .widths import round_widths

__all__ = [
    "DEFAULT_TOLERANCE", "EXPORT_FORMATS", "ExportReport", "export_model", "load_artifact",
    "RUNTIMES", "STEADY_MALLOC_ENV", "LatencyFigure", "LatencyResult", "is_noisy", "latency_figure", "latency_ms", "measure_latency",
    "steady_malloc",
    "round_widths", "LatencyCheck", "LatencyPrune", "latency_cost_model", "prune_for_runtime", "prune_to_latency",
    "prune_with_cost_model", "RUNTIME_RECORDS", "Runtime", "register_runtime",
    "runtime",
]
