"""The two batch loaders (``InMemoryLoader``, ``FolderLoader``); both follow the epoch and sharding
contract of the package docstring."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import PolarpruneError
from .augment import crop_flip, normalise
from .sampling import EpochSharded, check_rank, epoch_seed, eval_shard, evenly_spaced, global_batch_slice


class InMemoryLoader(EpochSharded):
    """Batches of uint8 NCHW images held in memory: shuffle, crop/flip, normalise, shard; yields
    ``(float32 normalised NCHW images, int64 labels)`` CPU tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], train: bool, padding: int = 0, flip: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be 1-d with {len(images)} entries, got {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need {images.shape[1]} values")
        check_rank(rank, world_size)
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.batch_size = int(batch_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.padding = int(padding) if train else 0
        self.flip = bool(flip) and train
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.dataset_size = len(self.labels)
        self.epoch = 0

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The epoch's order and, per position of that order, crop offsets and flip bits."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.dataset_size, generator=generator)
        offsets = flips = None
        if self.padding:
            offsets = torch.randint(0, 2 * self.padding + 1, (self.dataset_size, 2), generator=generator)
        if self.flip:
            flips = torch.randint(0, 2, (self.dataset_size,), generator=generator).bool()
        return order, offsets, flips

    def batch(self, indices: torch.Tensor, offsets: torch.Tensor | None = None,
              flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``indices`` (augmented with the given parameters), normalised."""
        raw = crop_flip(self.images[indices], self.padding, offsets, flips)
        images = normalise(raw, self.mean, self.std)
        labels = self.labels[indices]
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            shard = eval_shard(self.dataset_size, self.rank, self.world_size)
            for start in range(0, len(shard), self.batch_size):
                yield self.batch(shard[start : start + self.batch_size])
            return
        order, offsets, flips = self.epoch_plan(self.epoch)
        for step in range(len(self)):
            where = global_batch_slice(step, self.batch_size, self.world_size, self.rank)
            yield self.batch(order[where], None if offsets is None else offsets[where],
                             None if flips is None else flips[where])

    def probe(self, n: int) -> torch.Tensor:
        """``min(n, dataset_size)`` fixed images spread over the whole set (all ranks alike)."""
        indices = evenly_spaced(self.dataset_size, n)
        return normalise(self.images[indices], self.mean, self.std)


class _FileDataset(torch.utils.data.Dataset):
    """Image files decoded on demand; an item is ``(index, sample_seed)``. With ``seeded`` the transform
    runs under that seed in a forked RNG, so it does not depend on the worker that runs it."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], torch.Tensor], seeded: bool) -> None:
        self.samples = samples
        self.transform = transform
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Any:
        return open_rgb(self.samples[index][0])

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = item
        image = self.load(index)
        if self.seeded:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                tensor = self.transform(image)
        else:
            tensor = self.transform(image)
        return tensor, self.samples[index][1]


class _EpochBatchSampler(EpochSharded, torch.utils.data.Sampler):
    """Batches of ``(index, sample_seed)`` with the same layout as ``InMemoryLoader``."""

    def __init__(self, dataset_size: int, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if not self.train:
            shard = eval_shard(self.dataset_size, self.rank, self.world_size).tolist()
            for start in range(0, len(shard), self.batch_size):
                yield [(i, 0) for i in shard[start : start + self.batch_size]]
            return
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.dataset_size, generator=generator)
        seeds = torch.randint(0, 2**62, (self.dataset_size,), generator=generator)
        for step in range(len(self)):
            where = global_batch_slice(step, self.batch_size, self.world_size, self.rank)
            yield list(zip(order[where].tolist(), seeds[where].tolist()))


def read_image(path: str, read: Callable[[Any], Any]) -> Any:
    """``read(image)`` of the image file at ``path`` opened with PIL; an unreadable file is one line naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return read(image)
    except (OSError, ValueError) as exc:
        raise image_error(path, exc) from None
    except ImportError:  # ultralytics, once imported, retries an unidentified file with a plugin it may lack
        raise image_error(path, Image.UnidentifiedImageError("not an image format PIL can identify")) from None


def open_rgb(path: str) -> Any:
    """The image file at ``path`` as an RGB PIL image (one line when it cannot be read)."""
    return read_image(path, lambda image: image.convert("RGB"))


def image_error(path: str, exc: BaseException) -> PolarpruneError:
    """One line naming an unreadable image file (PIL repeats the path in its message)."""
    reason = str(exc).replace(f" '{path}'", "").strip() or type(exc).__name__
    return PolarpruneError(f"{path}: cannot read the image ({reason})")


def _one_line(exc: BaseException) -> str:
    """The original message of an error re-raised by a DataLoader worker (its last line)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    prefix = "polarprune.errors.PolarpruneError: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def usable_workers(asked: int) -> int:
    """Loader processes: as many as asked, but no more than the machine has cores (more only contend;
    the data each step sees does not depend on the count)."""
    return max(0, min(asked, os.cpu_count() or 1))


class FolderLoader:
    """Image files through a torch DataLoader (worker processes), with the shared contract."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], torch.Tensor], *, batch_size: int,
                 train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> None:
        check_rank(rank, world_size)
        self.dataset = _FileDataset(samples, transform, seeded=train)
        self.sampler = _EpochBatchSampler(len(samples), batch_size, train=train, seed=seed, rank=rank, world_size=world_size)
        workers = usable_workers(workers)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=workers,
                                                  persistent_workers=workers > 0, pin_memory=pin_memory)
        self.dataset_size = len(samples)
        self.train = train

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for images, labels in self.loader:
                yield images, labels.to(torch.int64)
        except PolarpruneError as exc:  # re-raised from a worker with its traceback in the text
            raise PolarpruneError(_one_line(exc)) from None

    def probe(self, n: int) -> torch.Tensor:
        """``min(n, dataset_size)`` fixed evaluation-transformed images spread over the set."""
        indices = evenly_spaced(self.dataset_size, n).tolist()
        return torch.stack([self.dataset[(i, 0)][0] for i in indices]) if indices else torch.zeros(0)
