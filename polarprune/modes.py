"""Probing a model without changing it: each module's training flag is restored afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's own ``training`` flag on exit (a model may mix train and eval parts)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients for a probing forward pass; the modes are restored on exit."""
    with restored_modes(model):
        model.eval()
        with torch.no_grad():
            yield model
