"""Physical channel pruning: strategies (which channels), dependency groups, surgery, compensation."""

from __future__ import annotations

from .strategies import STRATEGIES, SelectionResult, grad_threshold, select_channels

__all__ = ["STRATEGIES", "SelectionResult", "grad_threshold", "select_channels"]
