"""A fake runtime whose costs are known exactly, and a tiny model, for the latency cost model's tests
(tests/pruning/test_latency_target.py, tests/deploy/test_latency_prune.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from polarprune.pruning.base import CONV_TYPES


def fake_cost(module: nn.Module) -> float:
    """The fake runtime: every conv costs in * out/groups * kernel area, every linear in * out."""
    total = 0.0
    for m in module.modules():
        if isinstance(m, CONV_TYPES):
            total += m.in_channels // m.groups * m.out_channels * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def fake_ms(items) -> list[float]:
    """``Measure`` of the fake runtime."""
    return [fake_cost(module) for module, _ in items]


def blocked_ms(block: int):
    """``Measure`` of a fake runtime that computes ``block`` channels at a time: a conv or linear layer costs
    ceil(in/block) * ceil(out/block) (convs times their kernel area), so its latency is flat between
    multiples of ``block`` (tests/deploy/test_round_auto.py)."""

    def blocks(channels: int) -> int:
        return math.ceil(channels / block)

    def cost(module: nn.Module) -> float:
        total = 0.0
        for m in module.modules():
            if isinstance(m, CONV_TYPES):
                total += blocks(m.in_channels // m.groups) * blocks(m.out_channels) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                total += blocks(m.in_features) * blocks(m.out_features)
        return total

    return lambda items: [cost(module) for module, _ in items]


class Counting:
    """``fake_ms`` that counts the modules it times (a cache hit times nothing)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items) -> list[float]:
        self.calls += len(items)
        return fake_ms(items)


def tiny() -> nn.Module:
    """conv1 (1->4, 1x1), bn1, conv2 (4->4, 1x1), bn2, pool, linear (4->2); gammas set by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, 0.5, 0.9, 0.3]))
        model[4].weight.copy_(torch.tensor([0.2, 0.05, 0.8, 0.6]))
    return model.eval()


X = torch.randn(1, 1, 4, 4)


def fixed_rounds(monkeypatch, seconds: list[float]) -> None:
    """Every timed call of ``deploy.latency`` lasts the next of ``seconds`` (cycled), so a measurement's
    rounds are known numbers (tests/test_report.py, tests/commands/test_eval_command.py)."""
    from itertools import cycle

    from polarprune.deploy import latency

    durations = cycle(seconds)

    def fake_timed(fn) -> float:
        fn()
        return next(durations)

    monkeypatch.setattr(latency, "timed", fake_timed)
