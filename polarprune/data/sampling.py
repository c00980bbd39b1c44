"""Which samples a rank sees: epoch seeds, stratified subsets and splits, and the sharded
layout of the package docstring, shared by both loaders through ``EpochSharded``."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import PolarpruneError

SUBSET_SEED = 1234


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from ``(run seed, epoch)``; nearby pairs give unrelated streams."""
    state = np.random.SeedSequence([int(seed) % 2**64, int(epoch) % 2**64]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose every prefix is stratified within one image:
    shuffled, then ordered by rank within the class divided by the class size."""
    labels = np.asarray(labels)
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    shuffled_labels = labels[shuffled]
    by_class = np.argsort(shuffled_labels, kind="stable")
    sorted_labels = shuffled_labels[by_class]
    classes, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    class_of = np.searchsorted(classes, sorted_labels)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[by_class] = np.arange(len(labels)) - starts[class_of]
    size_of = np.empty(len(labels), dtype=np.int64)
    size_of[by_class] = counts[class_of]
    key = (rank_in_class + 0.5) / size_of
    return shuffled[np.argsort(key, kind="stable")]


def stratified_split(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, holdout)`` sorted index arrays; ``holdout`` has ``n_holdout`` stratified samples."""
    order = stratified_order(labels, seed)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def stratified_subset(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of a fixed stratified subset of ``n`` samples (all when n >= len)."""
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, seed)[:n])


def global_batch_slice(step: int, batch_size: int, world_size: int, rank: int) -> slice:
    """Positions in the epoch order that rank ``rank`` trains on at step ``step``."""
    start = step * batch_size * world_size + rank * batch_size
    return slice(start, start + batch_size)


def train_steps(dataset_size: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch when incomplete global batches are dropped."""
    return dataset_size // (batch_size * world_size)


def eval_shard(dataset_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Evaluation indices of one rank: ``rank::world_size`` (every sample exactly once overall)."""
    return torch.arange(rank, dataset_size, world_size)


def evenly_spaced(count: int, n: int) -> torch.Tensor:
    """``min(n, count)`` distinct indices spread over ``range(count)`` (first and last included)."""
    n = min(n, count)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.linspace(0, count - 1, n).round().long()


def check_rank(rank: int, world_size: int) -> None:
    """A one-line error when ``rank`` is not a rank of ``world_size`` processes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise PolarpruneError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")


class EpochSharded:
    """Epoch selection and step count shared by the loaders (subclasses set the attributes below)."""

    train: bool
    dataset_size: int
    batch_size: int
    rank: int
    world_size: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentations the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.train:
            return train_steps(self.dataset_size, self.batch_size, self.world_size)
        return math.ceil(len(eval_shard(self.dataset_size, self.rank, self.world_size)) / self.batch_size)
