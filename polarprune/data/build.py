"""``build_data``: a data set's loaders for one process, and what a model needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .augment import IMAGENET_MEAN, IMAGENET_STD, imagenet_transforms
from .loaders import FolderLoader, InMemoryLoader
from .sampling import check_rank, stratified_subset
from .sources import get_source
from .splits import FolderSplits


@dataclass
class DataBundle:
    """Both loaders of a data set and what a model needs to know about it."""

    train_loader: InMemoryLoader | FolderLoader
    eval_loader: InMemoryLoader | FolderLoader
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    class_names: list[str]
    train_size: int
    eval_size: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _subset(images: torch.Tensor, labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(labels):
        return images, labels
    keep = torch.from_numpy(stratified_subset(labels.numpy(), n))
    return images[keep].contiguous(), labels[keep]


def _subset_samples(samples: list[tuple[str, int]], n: int | None) -> list[tuple[str, int]]:
    if n is None or n >= len(samples):
        return samples
    return [samples[i] for i in stratified_subset(np.array([label for _, label in samples]), n).tolist()]


def build_data(cfg: DataConfig, *, seed: int = 0, rank: int = 0, world_size: int = 1,
               eval_only: bool = False) -> DataBundle:
    """The train and evaluation loaders of ``cfg`` for process ``rank`` of ``world_size``. ``seed`` drives
    the shuffle and augmentations only (splits and subsets use constants: every stage sees the same images).
    ``eval_only``: the caller only evaluates, so a data set whose training split is missing is accepted
    where the source can read its evaluation split alone (an ImageFolder tree with only ``val/``)."""
    check_rank(rank, world_size)
    kind = get_source(cfg.name)
    source = (kind.load_eval if eval_only and kind.load_eval else kind.load)(cfg)
    pin_memory = torch.cuda.is_available()
    if isinstance(source, FolderSplits):
        train_samples = _subset_samples(source.train_samples, cfg.train_subset)
        eval_samples = _subset_samples(source.eval_samples, cfg.eval_subset)
        size = source.image_size
        mean, std = cfg.mean or IMAGENET_MEAN, cfg.std or IMAGENET_STD
        common = dict(seed=seed, rank=rank, world_size=world_size, workers=cfg.workers, pin_memory=pin_memory)
        train_loader: InMemoryLoader | FolderLoader = FolderLoader(
            train_samples, imagenet_transforms(size, cfg.augment, mean, std), batch_size=cfg.batch_size, train=True, **common
        )
        eval_loader: InMemoryLoader | FolderLoader = FolderLoader(
            eval_samples, imagenet_transforms(size, False, mean, std), batch_size=cfg.eval_batch_size, train=False, **common
        )
        return DataBundle(train_loader=train_loader, eval_loader=eval_loader, num_classes=len(source.class_names),
                          in_channels=3, input_size=(size, size), class_names=source.class_names,
                          train_size=len(train_samples), eval_size=len(eval_samples), name=cfg.name, mean=tuple(mean),
                          std=tuple(std))
    if kind.sized_by_subsets:
        train_images, train_labels = source.train_images, source.train_labels
        eval_images, eval_labels = source.eval_images, source.eval_labels
    else:
        train_images, train_labels = _subset(source.train_images, source.train_labels, cfg.train_subset)
        eval_images, eval_labels = _subset(source.eval_images, source.eval_labels, cfg.eval_subset)
    mean, std = tuple(cfg.mean or source.mean), tuple(cfg.std or source.std)
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, pin_memory=pin_memory)
    train_loader = InMemoryLoader(train_images, train_labels, batch_size=cfg.batch_size, train=True,
                                  padding=source.padding if cfg.augment else 0, flip=source.flip and cfg.augment, **common)
    eval_loader = InMemoryLoader(eval_images, eval_labels, batch_size=cfg.eval_batch_size, train=False, **common)
    return DataBundle(train_loader=train_loader, eval_loader=eval_loader, num_classes=len(source.class_names),
                      in_channels=int(eval_images.shape[1]),
                      input_size=(int(eval_images.shape[2]), int(eval_images.shape[3])),
                      class_names=list(source.class_names), train_size=len(train_labels), eval_size=len(eval_labels),
                      name=cfg.name, mean=mean, std=std)


def probe_batch(bundle: DataBundle, n: int) -> torch.Tensor:
    """A fixed batch of ``min(n, eval_size)`` evaluation images (no augmentation), the same on
    every rank and every call: for pruning's output check and for FLOPs counting."""
    return bundle.eval_loader.probe(n)
