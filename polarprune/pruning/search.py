"""One bisection for every search of a knob: ``flops-target``'s threshold and the progressive
stage's aim. Pure: it knows nothing of models, only a function of one number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Probe(Generic[T]):
    """One evaluated knob: its value (a cost ratio) and whatever the evaluation produced."""

    knob: float
    value: float
    result: T


def bisect_knob(evaluate: Callable[[float], tuple[float, T]], target: float, low: float, high: float, *,
                rounds: int, tolerance: float = 0.0) -> Probe[T]:
    """The probe closest to ``target`` (first one on ties) of a bisection on ``[low, high]`` where
    ``evaluate(knob) -> (value, result)`` is non-increasing in the knob.

    ``low`` is probed first; each round probes the middle and keeps the half that holds the target.
    The search stops at a probe within ``tolerance`` of the target, after ``rounds`` rounds, or at once
    when the target lies beyond ``high``'s value (nothing larger can reach it).
    """
    best: Probe[T] | None = None

    def probe(knob: float) -> Probe[T]:
        nonlocal best
        value, result = evaluate(knob)
        found = Probe(knob, value, result)
        if best is None or abs(value - target) < abs(best.value - target):
            best = found
        return found

    if abs(probe(low).value - target) <= tolerance or probe(high).value > target:
        return best  # type: ignore[return-value]
    for _ in range(rounds):
        middle = probe(0.5 * (low + high))
        if abs(middle.value - target) <= tolerance:
            break
        if middle.value > target:
            low = middle.knob
        else:
            high = middle.knob
    return best  # type: ignore[return-value]


__all__ = ["Probe", "bisect_knob"]
