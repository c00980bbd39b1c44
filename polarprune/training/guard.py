"""The divergence guard: a step whose loss (or unscaled gradient) is not finite is skipped, and
training stops with one line after more than ``max_bad_steps`` of them, before a NaN checkpoint is written.

The loss check is agreed over ranks so DDP's collectives stay in step; fp16 overflow steps are the
grad scaler's business and not counted; a skipped step's BN running-statistics updates are undone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .. import distributed as dist
from ..errors import PolarpruneError


class DivergenceError(PolarpruneError):
    """Training produced a non-finite loss or gradient more often than allowed."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one fused reduction, one host sync)."""
    items = [t for t in tensors if t is not None]
    if not items:
        return True
    total = torch.nn.utils.get_total_norm(items, norm_type=2.0, error_if_nonfinite=False, foreach=None)
    return bool(torch.isfinite(total))


def finite_on_every_rank(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on this rank and on every other one (one tiny all-reduce under DDP)."""
    bad = torch.logical_not(torch.isfinite(value.detach()).all()).to(torch.float32).reshape(1)
    if dist.is_initialized():
        dist.all_reduce_sum(bad)
    return bool(bad.item() == 0)


@dataclass
class DivergenceGuard:
    """Counts bad steps of one run and raises ``DivergenceError`` past ``max_bad_steps``; ``where`` names
    the run in the error, the caller sets ``epoch`` and ``step`` (1-based) before each step."""

    where: str
    max_bad_steps: int = 0
    bad_steps: int = 0
    epoch: int = 0
    step: int = 0
    _saved_buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    def before_forward(self, model: nn.Module) -> None:
        """Snapshot the buffers (BN running statistics and batch counters: a cumulative-average BN weighs
        its next update by the counter) when skipping is allowed."""
        if self.max_bad_steps <= 0:
            return
        self._saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def loss_ok(self, loss: torch.Tensor) -> bool:
        """Check the loss of this step on every rank; a bad one is recorded (and may raise)."""
        if finite_on_every_rank(loss):
            return True
        self._bad(f"the loss is {_describe(loss)}")
        return False

    def gradients_ok(self, model: nn.Module, scaler_enabled: bool) -> bool:
        """Check the (unscaled, all-reduced) gradients; an enabled fp16 scaler skips overflow steps itself."""
        if scaler_enabled or all_finite(p.grad for p in model.parameters()):
            return True
        self._bad("a gradient is not finite")
        return False

    def restore(self) -> None:
        """Undo the buffer updates of a skipped step's forward pass."""
        with torch.no_grad():
            for buffer, saved in self._saved_buffers:
                buffer.copy_(saved)
        self._saved_buffers = []

    def _bad(self, what: str) -> None:
        self.bad_steps += 1
        if self.bad_steps > self.max_bad_steps:
            allowed = f"{self.max_bad_steps} bad step(s) allowed" if self.max_bad_steps else "no bad steps allowed"
            raise DivergenceError(
                f"{self.where}: training diverged at epoch {self.epoch}, step {self.step}: {what} "
                f"({allowed}; the last complete checkpoint is kept; lower train.lr or raise train.max_bad_steps)"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"bad_steps": self.bad_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bad_steps = int(state.get("bad_steps", 0))


def _describe(value: torch.Tensor) -> str:
    flat = value.detach().float().reshape(-1)
    bad = flat[~torch.isfinite(flat)]
    return str(bad[0].item()) if bad.numel() else "not finite"
