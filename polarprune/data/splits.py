"""What a data source hands to ``build_data``: images in memory, or file lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .augment import channel_stats


@dataclass
class ArraySplits:
    """A data set held in memory: uint8 NCHW images and labels for both splits."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int  # random-crop padding for training (0: no crop)
    flip: bool

    @classmethod
    def normalised_by_train(cls, **fields: Any) -> "ArraySplits":
        """Splits whose normalisation (mean/std) is measured on the training images."""
        mean, std = channel_stats(fields["train_images"])
        return cls(mean=mean, std=std, **fields)


def nhwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C (NumPy, PIL) -> a contiguous NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


@dataclass
class FolderSplits:
    """An ImageFolder tree too large for memory: file lists and the crop size."""

    train_samples: list[tuple[str, int]]
    eval_samples: list[tuple[str, int]]
    class_names: list[str]
    image_size: int
