"""The input-size options of the commands (torch-free, so ``--help`` stays fast).

Every command that runs a model defaults to ``models.inputs.input_shape_of``: the size the model
file or checkpoint records (it was trained or pruned at), else its family's, else an error.
"""

from __future__ import annotations

import argparse
from typing import Any

INPUT_SIZE_HELP = ("input height and width (default: what the model file records it was trained or pruned at, "
                   "else its family's: 8 small_cnn, 32 CIFAR models, 224 torchvision/timm)")
IN_CHANNELS_HELP = "input channels (default: what the model file records, else the model's own)"


def add_input_size_argument(parser: argparse.ArgumentParser, *, channels: bool = False) -> None:
    """``--input-size S`` (and ``--in-channels C``), both defaulting to the model's own input."""
    parser.add_argument("--input-size", type=int, default=None, metavar="S", help=INPUT_SIZE_HELP)
    if channels:
        parser.add_argument("--in-channels", type=int, default=None, metavar="C", help=IN_CHANNELS_HELP)


def data_image_size(model: Any, given: int | None) -> int | None:
    """The image size to load evaluation data at (``data.image_size``: imagefolder's crop, fake's side):
    ``given``, else the square side the model records; None leaves the data set's own default (also for
    a recorded side below what ``data.image_size`` accepts)."""
    from ..config import DataConfig
    from ..models import recorded_input_shape

    recorded = recorded_input_shape(model)
    if given is not None or recorded is None or recorded[1] != recorded[2]:
        return given
    least = min((m.ge for m in DataConfig.model_fields["image_size"].metadata if getattr(m, "ge", None) is not None), default=1)
    return recorded[1] if recorded[1] >= least else None
