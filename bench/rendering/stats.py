"""Sampling noise of a top-1 and of the difference of two top-1s (pure functions, no I/O)."""

from __future__ import annotations

import math


def standard_error(top1: float, n: int = 10_000) -> float:
    """Binomial standard error (points) of a top-1 on ``n`` test images."""
    return 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / n)


def beyond_noise(ref: float, top1: float) -> bool:
    """Whether two top-1s (10,000 test images each) differ by more than two standard errors of their difference."""
    return abs(top1 - ref) > 2 * math.sqrt(standard_error(ref) ** 2 + standard_error(top1) ** 2)


def share_below(gammas: list[float], limit: float = 0.01) -> float:
    return sum(abs(g) < limit for g in gammas) / len(gammas)

