"""Training checkpoints: a ``torch.save`` of plain data written atomically; reading them
(``weights_only=True``, the model rebuilt from its spec) lives in ``polarprune.serialization``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_output
from ..serialization import CHECKPOINT_FORMAT, load_model_from_checkpoint, read_checkpoint  # noqa: F401 - re-exported


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that a kill at any moment leaves either the old or the new file."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
