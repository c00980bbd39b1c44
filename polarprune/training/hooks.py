"""The training engine's extension points: the moments where sparsity regularizers act.

The engine passes the *unwrapped* model (never the DDP wrapper); ``on_epoch_end`` runs on every
rank, only rank 0 writes. Hooks must not assume anything about the loop beyond this protocol.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainHook:
    """Base class with no-op defaults; subclasses override what they need."""

    def on_train_start(self, model: nn.Module, total_epochs: int) -> None:
        """Called once before the first epoch (also after a resume)."""

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        """A differentiable term added to the loss of every step, or None."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are final (all-reduced, unscaled); modify ``.grad`` in place (L1, mask-L1)."""

    def after_step(self, model: nn.Module) -> None:
        """Parameters were updated by the optimizer (clamp gammas here)."""

    def on_epoch_end(self, model: nn.Module, epoch: int, writer: Any | None = None) -> dict[str, float]:
        """Metrics of this epoch (scalars). ``writer`` is a TensorBoard SummaryWriter on rank 0."""
        return {}
