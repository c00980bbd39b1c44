"""Training checkpoints: atomic writes, exact resume, and models rebuilt without pickled classes.

A checkpoint is a ``torch.save`` of plain data (tensors, numbers, strings, dicts, lists) read
back with ``weights_only=True``: the model is rebuilt from its spec (``model.polarprune_spec``)
and its state dict, never unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_output
# Reading model files (checkpoints and pruned files) lives in ``polarprune.serialization``;
# these names stay importable from here for the training code.
from ..serialization import (  # noqa: F401
    CHECKPOINT_FORMAT,
    build_model_from_spec,
    load_any_model,
    load_model_from_checkpoint,
    load_state_strict,
    model_spec,
    read_checkpoint,
)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that a kill at any moment leaves either the old or the new file."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
