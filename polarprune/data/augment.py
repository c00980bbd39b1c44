"""Per-batch image transforms: normalisation statistics, crop + flip by gathers, ImageNet transforms."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 NCHW images, exact, from value histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = max(counts.sum().item(), 1.0)
        mean = (counts * values).sum().item() / total
        var = (counts * (values - mean).square()).sum().item() / total
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5 if var > 1e-6 else 1e-3)
    return tuple(means), tuple(stds)


def crop_flip(images: torch.Tensor, padding: int, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a whole NCHW batch, by gathers: ``offsets``
    (N, 2) are the crop's corner (dy, dx) in ``[0, 2*padding]``, ``flips`` (N,) mirror after the crop."""
    n, channels, height, width = images.shape
    if (padding == 0 or offsets is None) and flips is None:
        return images
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    if offsets is None:
        offsets = torch.full((n, 2), padding, dtype=torch.long)
    rows = offsets[:, 0:1] + torch.arange(height)
    col = torch.arange(width)
    cols = col.expand(n, width) if flips is None else torch.where(flips[:, None], width - 1 - col, col)
    cols = cols + offsets[:, 1:2]
    out = padded.gather(2, rows[:, None, :, None].expand(n, channels, height, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, channels, height, width))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW -> float32 ``(x/255 - mean) / std`` per channel."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, -1, 1, 1)
    return images.to(torch.float32).mul_(scale).sub_(shift)


def imagenet_transforms(size: int, train: bool, mean: tuple[float, ...] = IMAGENET_MEAN,
                        std: tuple[float, ...] = IMAGENET_STD) -> Callable[[Any], torch.Tensor]:
    """Training: RandomResizedCrop + flip; evaluation: resize to 256/224*size, centre crop."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), *tail])
