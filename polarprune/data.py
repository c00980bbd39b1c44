"""Data sets and batch loaders: digits, CIFAR-10/100, ImageFolder trees, fake data.

Everything small enough is held in memory as uint8 and batched by ``InMemoryLoader``, which
crops, flips and normalises a whole batch at once (a few gathers, no per-sample Python).
Large ImageFolder trees (ImageNet) go through a torch ``DataLoader`` with worker processes.

Both loaders share one contract, so training is reproducible and distributed runs are
equivalent to single-process ones:

- ``set_epoch(epoch)``: the shuffle and every augmentation draw of an epoch come from a
  generator seeded by ``(seed, epoch)`` only (never the global RNG), so resuming at the start
  of an epoch replays it exactly;
- training step ``k`` of a run with per-process batch ``B`` on ``W`` processes uses the
  *global* batch ``perm[k*B*W:(k+1)*B*W]``; rank ``r`` takes the chunk ``[r*B:(r+1)*B]``; the
  augmentation parameters belong to positions of the epoch's order, so 2 processes with batch
  B see exactly the samples and augmentations that 1 process with batch 2B sees; incomplete
  global batches are dropped (every rank has the same number of steps);
- evaluation: no shuffle, no augmentation, rank ``r`` takes samples ``r::W``.

See docs/data.md for the data sets, the digits split, the caches and the environment variables.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .errors import PolarpruneError

# Seeds that must NOT depend on the run seed: every stage of a pipeline sees the same data.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360
SUBSET_SEED = 1234
FAKE_SEED = 0
FAKE_TRAIN_SIZE = 512
FAKE_EVAL_SIZE = 256
FAKE_IMAGE_SIZE = 32
DEFAULT_IMAGE_SIZE = 224  # imagefolder crop size for ImageNet-sized images
SIZE_PROBE_COUNT = 8  # images looked at to decide whether an ImageFolder fits in memory

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CACHE_ENV = "POLARPRUNE_CACHE"
ARCHIVE_ENV = "POLARPRUNE_CIFAR10_ARCHIVE"
CIFAR10_ARCHIVE_NAME = "cifar10-jpg.tar.gz"
DECODED_CACHE_VERSION = 1


# ============================================================================ caches and archives


def default_cache_root() -> Path:
    """``$POLARPRUNE_CACHE`` or ``~/.cache/polarprune``: extracted archives, decoded images."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polarprune"


def default_cifar10_archive() -> Path | None:
    """The shared CIFAR-10 JPEG archive: ``$POLARPRUNE_CIFAR10_ARCHIVE``, else
    ``../shared/data/cifar10-jpg.tar.gz`` next to the repository; None when it is not there."""
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_file() else None
    repo = Path(__file__).resolve().parent.parent
    path = repo.parent / "shared" / "data" / CIFAR10_ARCHIVE_NAME
    return path if path.is_file() else None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _archive_stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a tar archive that ``ensure_extracted`` can open."""
    name = Path(path).name
    return name.endswith((".tar.gz", ".tgz", ".tar"))


def _split_root(folder: Path, archive: Path) -> Path:
    """The folder holding ``train/``: ``folder`` itself or its only sub-folder that has one."""
    if (folder / "train").is_dir():
        return folder
    candidates = [child for child in sorted(folder.iterdir()) if (child / "train").is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    raise PolarpruneError(f"{archive}: no train/ folder inside the archive")


def ensure_extracted(archive: str | Path, cache_root: str | Path | None = None) -> Path:
    """Extract a tar archive once into ``<cache_root>/extracted/`` and return the folder that
    holds ``train/`` (and ``test/`` or ``val/``).

    The archive is unpacked into a temporary folder that is renamed into place only when
    complete, so an interrupted extraction is never mistaken for a finished one. The folder
    name carries the archive's size and mtime: a changed archive is extracted again.
    """
    archive = Path(archive).expanduser().resolve()
    if not archive.is_file():
        raise PolarpruneError(f"archive not found: {archive}")
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    stat = archive.stat()
    key = hashlib.sha1(f"{archive}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = _archive_stem(archive.name)
    target = root / "extracted" / f"{stem}-{key}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-", dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the cache may be shared
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race with another process
                    raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PolarpruneError(f"{archive}: cannot extract: {exc}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _split_root(target, archive)


# ============================================================================ pure helpers


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from ``(run seed, epoch)``; nearby pairs give unrelated streams."""
    state = np.random.SeedSequence([int(seed) % 2**64, int(epoch) % 2**64]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose every prefix is (nearly) stratified.

    Samples are shuffled, then ordered by their rank within their class divided by the class
    size, so the first ``n`` hold each class in proportion (within one image).
    """
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


def crop_flip(
    images: torch.Tensor, padding: int, offsets: torch.Tensor | None, flips: torch.Tensor | None
) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a whole NCHW batch, by gathers.

    ``offsets`` (N, 2) are the crop's top-left corner (dy, dx) in the padded image, each in
    ``[0, 2*padding]``; ``flips`` (N,) bool mirrors the crop left-right (the flip follows the
    crop, as in torchvision's RandomCrop then RandomHorizontalFlip).
    """
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


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise PolarpruneError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")


# ============================================================================ in-memory loader


class EpochSharded:
    """Epoch selection and step count shared by the loaders: the same layout for every data path.

    Subclasses set ``train``, ``dataset_size``, ``batch_size``, ``rank``, ``world_size`` and
    ``epoch``.
    """

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


class InMemoryLoader(EpochSharded):
    """Batches of uint8 NCHW images held in memory: shuffle, crop/flip, normalise, shard.

    ``train=True``: per epoch a permutation plus one crop offset and flip bit per position,
    all from a generator seeded by ``(seed, epoch)``; incomplete global batches are dropped.
    ``train=False``: sequential, no augmentation, rank ``r`` takes ``r::world_size``.
    Yields ``(float32 normalised NCHW images, int64 labels)`` CPU tensors.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be 1-d with {len(images)} entries, got {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need {images.shape[1]} values")
        _check_rank(rank, world_size)
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

    def batch(
        self, indices: torch.Tensor, offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
            yield self.batch(
                order[where],
                None if offsets is None else offsets[where],
                None if flips is None else flips[where],
            )

    def probe(self, n: int) -> torch.Tensor:
        """``min(n, dataset_size)`` fixed images spread over the whole set (all ranks alike)."""
        indices = evenly_spaced(self.dataset_size, n)
        return normalise(self.images[indices], self.mean, self.std)


# ============================================================================ file-backed loader


class _FileDataset(torch.utils.data.Dataset):
    """Image files decoded on demand; an item is requested as ``(index, sample_seed)``.

    With ``seeded`` the transform runs under ``torch.manual_seed(sample_seed)`` inside a forked
    RNG (the caller's RNG state is untouched), so an augmentation depends only on the seed the
    sampler drew for that position of the epoch, not on the worker that happens to run it.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], torch.Tensor], seeded: bool) -> None:
        self.samples = samples
        self.transform = transform
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Any:
        from PIL import Image

        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as exc:
            raise _image_error(path, exc) from None

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


def _image_error(path: str, exc: BaseException) -> PolarpruneError:
    """One line naming an unreadable image file (PIL repeats the path in its message)."""
    reason = str(exc).replace(f" '{path}'", "").strip() or type(exc).__name__
    return PolarpruneError(f"{path}: cannot read the image ({reason})")


def _one_line(exc: BaseException) -> str:
    """The original message of an error re-raised by a DataLoader worker (its last line)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    prefix = "polarprune.errors.PolarpruneError: "
    return last[len(prefix) :] if last.startswith(prefix) else last


class FolderLoader:
    """Image files through a torch DataLoader (worker processes), with the shared contract."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Any], torch.Tensor],
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        _check_rank(rank, world_size)
        self.dataset = _FileDataset(samples, transform, seeded=train)
        self.sampler = _EpochBatchSampler(
            len(samples), batch_size, train=train, seed=seed, rank=rank, world_size=world_size
        )
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin_memory,
        )
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


def imagenet_transforms(size: int, train: bool) -> Callable[[Any], torch.Tensor]:
    """Training: RandomResizedCrop + flip; evaluation: resize to 256/224*size, centre crop."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), *tail])


# ============================================================================ data sources


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


def _nhwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 N x 8 x 8, labels, train_idx, test_idx)`` of scikit-learn's digits.

    The split is fixed: 360 test images, stratified, from ``DIGITS_SPLIT_SEED`` (never the run seed).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return images, labels, train_idx, test_idx


def load_digits_splits() -> ArraySplits:
    images, labels, train_idx, test_idx = digits_split()
    tensor = torch.from_numpy(images[:, None])  # N x 1 x 8 x 8
    train_images = tensor[train_idx].contiguous()
    return ArraySplits.normalised_by_train(
        train_images=train_images,
        train_labels=torch.from_numpy(labels[train_idx]),
        eval_images=tensor[test_idx].contiguous(),
        eval_labels=torch.from_numpy(labels[test_idx]),
        class_names=[str(d) for d in range(10)],
        padding=1,
        flip=False,  # digits are not mirror-symmetric
    )


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def _unchecked_cifar_class(name: str) -> type:
    """torchvision's CIFAR reader with md5 checks replaced by presence checks (md5 None)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100
    return type(
        f"Unchecked{base.__name__}",
        (base,),
        {
            "train_list": [[file, None] for file, _ in base.train_list],
            "test_list": [[file, None] for file, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _download_cifar(name: str, root: Path, folder: Path) -> None:
    """torchvision's download (with its md5 checks); any failure is one PolarpruneError line."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as exc:  # no network, HTTP error, bad checksum, disk full...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolarpruneError(f"{folder} is missing and the download failed ({reason})") from None


def _read_cifar_split(name: str, root: Path, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    cls = _unchecked_cifar_class(name)
    try:
        data = cls(str(root), train=train, download=False)
    except Exception as exc:  # truncated or foreign pickles
        raise PolarpruneError(f"{folder}: cannot read the CIFAR pickles ({type(exc).__name__}: {exc})") from None
    images = np.asarray(data.data)
    labels = np.asarray(data.targets, dtype=np.int64)
    classes = [str(c) for c in data.classes]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise PolarpruneError(f"{folder}: expected 32x32x3 uint8 images, got {images.dtype} {images.shape}")
    if len(labels) != len(images) or (len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
        raise PolarpruneError(f"{folder}: labels do not match the {len(images)} images and {len(classes)} classes")
    return images, labels, classes


def load_cifar_splits(name: str, root: Path, download: bool) -> ArraySplits:
    """CIFAR-10/100 from the python-pickle release under ``root`` (downloaded on request).

    The files must be present and well-formed (shape, label range); their md5 sums are not
    checked, so that re-packed copies and the test fixtures load (see docs/data.md).
    """
    folder_name, files = _CIFAR_FILES[name]
    folder = root / folder_name
    if not all((folder / f).is_file() for f in files):
        if download:
            _download_cifar(name, root, folder)
        else:
            hint = " (it holds train/: use data.name=imagefolder)" if (root / "train").is_dir() else ""
            raise PolarpruneError(
                f"{name}: {folder} not found or incomplete (needs {', '.join(files)}){hint}; "
                f"set data.root to the folder that contains {folder_name} or data.download=true"
            )
    train_images, train_labels, classes = _read_cifar_split(name, root, folder, train=True)
    eval_images, eval_labels, _ = _read_cifar_split(name, root, folder, train=False)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return ArraySplits(
        train_images=_nhwc_to_nchw(train_images),
        train_labels=torch.from_numpy(train_labels),
        eval_images=_nhwc_to_nchw(eval_images),
        eval_labels=torch.from_numpy(eval_labels),
        class_names=classes,
        mean=mean,
        std=std,
        padding=4,
        flip=True,
    )


def load_fake_splits(cfg: DataConfig) -> ArraySplits:
    """Deterministic random images: each class has a fixed random template plus per-image noise
    (so a model can learn them); sizes from ``train_subset``/``eval_subset``."""
    size = cfg.image_size or FAKE_IMAGE_SIZE
    shape = (cfg.channels, size, size)
    templates = torch.randint(
        0, 256, (cfg.num_classes, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(FAKE_SEED)
    )

    def draw(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(FAKE_SEED + stream)
        labels = torch.randint(0, cfg.num_classes, (n,), generator=generator)
        noise = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
        images = (templates[labels].to(torch.int16) + noise.to(torch.int16)) // 2
        return images.to(torch.uint8), labels

    train_images, train_labels = draw(cfg.train_subset or FAKE_TRAIN_SIZE, 1)
    eval_images, eval_labels = draw(cfg.eval_subset or FAKE_EVAL_SIZE, 2)
    return ArraySplits.normalised_by_train(
        train_images=train_images,
        train_labels=train_labels,
        eval_images=eval_images,
        eval_labels=eval_labels,
        class_names=[f"class{i}" for i in range(cfg.num_classes)],
        padding=max(size // 8, 1),
        flip=True,
    )


# ---------------------------------------------------------------------------- imagefolder


def resolve_imagefolder_root(root: str | None) -> tuple[Path, Path, Path]:
    """``(root, train_dir, eval_dir)``; ``root`` may be a tar archive (extracted into the cache)."""
    if not root:
        raise PolarpruneError("data.root: required for imagefolder (a folder with train/ and val/ or test/)")
    path = Path(root).expanduser()
    if path.is_file() and is_archive(path):
        path = ensure_extracted(path)
    if not path.is_dir():
        raise PolarpruneError(f"imagefolder: {path} not found")
    train_dir = path / "train"
    if not train_dir.is_dir():
        raise PolarpruneError(f"imagefolder: {train_dir} not found (expected {path}/train/<class>/*)")
    for name in ("val", "test"):
        if (path / name).is_dir():
            return path, train_dir, path / name
    raise PolarpruneError(f"imagefolder: neither {path / 'val'} nor {path / 'test'} found")


def list_samples(split_dir: Path, class_to_idx: dict[str, int], allow_empty: bool) -> list[tuple[str, int]]:
    """ImageFolder's listing of ``split_dir/<class>/*`` with the given class indices."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    unknown = sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and entry.name not in class_to_idx
    )
    if unknown:
        raise PolarpruneError(f"imagefolder: {split_dir / unknown[0]} is a class not present in train/")
    try:
        return make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise PolarpruneError(f"imagefolder: {split_dir}: {str(exc).splitlines()[0]}") from None


def find_classes(train_dir: Path) -> list[str]:
    """Class names: the sub-folders of ``train/``, sorted (ImageFolder's indices)."""
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    if not classes:
        raise PolarpruneError(f"imagefolder: {train_dir} has no class folders")
    return classes


def image_size_of(path: str) -> tuple[int, int]:
    """``(width, height)`` from the image header (no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise _image_error(path, exc) from None


def small_image_size(samples: list[tuple[str, int]], max_side: int) -> tuple[int, int] | None:
    """``(height, width)`` when the first few images (spread over the listing) all have that
    size and it is at most ``max_side``: such a split is decoded into memory. Else None."""
    if not samples:
        return None
    sizes = {image_size_of(samples[i][0]) for i in evenly_spaced(len(samples), SIZE_PROBE_COUNT).tolist()}
    if len(sizes) != 1:
        return None
    width, height = sizes.pop()
    return (height, width) if max(width, height) <= max_side else None


def _decode_one(path: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise _image_error(path, exc) from None


def decode_images(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """Decode (threads) into an N x H x W x 3 uint8 array; other sizes are resized bilinearly."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    workers = max(1, min(8, os.cpu_count() or 1))

    def work(i: int) -> None:
        out[i] = _decode_one(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths))):
            pass
    return out


def decoded_cache_path(split_dir: Path, samples: list[tuple[str, int]], size: tuple[int, int]) -> Path:
    """The cache file of one decoded split: keyed by the folder's absolute path, its file count,
    the newest file mtime, and the decode size (a changed tree gets a new file)."""
    newest = max((os.stat(path).st_mtime_ns for path, _ in samples), default=0)
    absolute = split_dir.expanduser().resolve()
    key = f"v{DECODED_CACHE_VERSION}|{absolute}|{len(samples)}|{newest}|{size[0]}x{size[1]}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return default_cache_root() / "decoded" / f"{absolute.parent.name}-{absolute.name}-{digest}.npz"


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_decoded_split(split_dir: Path, samples: list[tuple[str, int]], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and labels of a split, decoded once and cached as ``.npz``."""
    labels = np.array([label for _, label in samples], dtype=np.int64)
    path = decoded_cache_path(split_dir, samples, size)
    if path.is_file():
        try:
            with np.load(path) as cached:
                images = cached["images"]
                if len(images) == len(labels) and np.array_equal(cached["labels"], labels):
                    return _nhwc_to_nchw(images), torch.from_numpy(labels)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: decode again and overwrite it
    images = decode_images([p for p, _ in samples], size)
    try:
        _write_npz_atomic(path, images=images, labels=labels)
    except OSError:
        pass  # a read-only cache only costs the decode next time
    return _nhwc_to_nchw(images), torch.from_numpy(labels)


@dataclass
class FolderSplits:
    """An ImageFolder tree too large for memory: file lists and the crop size."""

    train_samples: list[tuple[str, int]]
    eval_samples: list[tuple[str, int]]
    class_names: list[str]
    image_size: int


def load_imagefolder(cfg: DataConfig) -> ArraySplits | FolderSplits:
    """Small images (e.g. 32x32 CIFAR JPEGs): decoded into memory (cached) and treated like
    CIFAR; larger ones: file lists for the DataLoader path with ImageNet transforms."""
    _, train_dir, eval_dir = resolve_imagefolder_root(cfg.root)
    classes = find_classes(train_dir)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    train_samples = list_samples(train_dir, class_to_idx, allow_empty=False)
    eval_samples = list_samples(eval_dir, class_to_idx, allow_empty=True)
    if not eval_samples:
        raise PolarpruneError(f"imagefolder: {eval_dir} holds no images")
    size = small_image_size(train_samples, cfg.in_memory_max_size)
    if size is None:
        return FolderSplits(train_samples, eval_samples, classes, cfg.image_size or DEFAULT_IMAGE_SIZE)
    train_images, train_labels = load_decoded_split(train_dir, train_samples, size)
    eval_images, eval_labels = load_decoded_split(eval_dir, eval_samples, size)
    return ArraySplits.normalised_by_train(
        train_images=train_images,
        train_labels=train_labels,
        eval_images=eval_images,
        eval_labels=eval_labels,
        class_names=classes,
        padding=max(round(min(size) / 8), 1),  # 4 for 32-px images, as for CIFAR
        flip=True,
    )


# ============================================================================ build_data


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
    keep = stratified_subset(np.array([label for _, label in samples]), n)
    return [samples[i] for i in keep.tolist()]


def _load_source(cfg: DataConfig) -> ArraySplits | FolderSplits:
    if cfg.name == "digits":
        return load_digits_splits()
    if cfg.name in ("cifar10", "cifar100"):
        root = Path(cfg.root).expanduser() if cfg.root else default_cache_root() / "datasets"
        return load_cifar_splits(cfg.name, root, cfg.download)
    if cfg.name == "imagefolder":
        return load_imagefolder(cfg)
    if cfg.name == "fake":
        return load_fake_splits(cfg)
    raise PolarpruneError(f"data.name: unknown data set {cfg.name!r}")


def build_data(cfg: DataConfig, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> DataBundle:
    """The train and evaluation loaders of ``cfg`` for process ``rank`` of ``world_size``.

    ``seed`` (the run seed) drives the shuffle and augmentations only; splits and subsets
    use constants, so every stage of a pipeline sees the same images.
    """
    _check_rank(rank, world_size)
    source = _load_source(cfg)
    pin_memory = torch.cuda.is_available()
    if isinstance(source, FolderSplits):
        train_samples = _subset_samples(source.train_samples, cfg.train_subset)
        eval_samples = _subset_samples(source.eval_samples, cfg.eval_subset)
        size = source.image_size
        common = dict(seed=seed, rank=rank, world_size=world_size, workers=cfg.workers, pin_memory=pin_memory)
        train_loader: InMemoryLoader | FolderLoader = FolderLoader(
            train_samples, imagenet_transforms(size, train=cfg.augment), batch_size=cfg.batch_size, train=True, **common
        )
        eval_loader: InMemoryLoader | FolderLoader = FolderLoader(
            eval_samples, imagenet_transforms(size, train=False), batch_size=cfg.eval_batch_size, train=False, **common
        )
        return DataBundle(
            train_loader=train_loader,
            eval_loader=eval_loader,
            num_classes=len(source.class_names),
            in_channels=3,
            input_size=(size, size),
            class_names=source.class_names,
            train_size=len(train_samples),
            eval_size=len(eval_samples),
            name=cfg.name,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
    if cfg.name == "fake":  # the subset keys are the sizes of the fake sets
        train_images, train_labels = source.train_images, source.train_labels
        eval_images, eval_labels = source.eval_images, source.eval_labels
    else:
        train_images, train_labels = _subset(source.train_images, source.train_labels, cfg.train_subset)
        eval_images, eval_labels = _subset(source.eval_images, source.eval_labels, cfg.eval_subset)
    common = dict(mean=source.mean, std=source.std, seed=seed, rank=rank, world_size=world_size, pin_memory=pin_memory)
    train_loader = InMemoryLoader(
        train_images,
        train_labels,
        batch_size=cfg.batch_size,
        train=True,
        padding=source.padding if cfg.augment else 0,
        flip=source.flip and cfg.augment,
        **common,
    )
    eval_loader = InMemoryLoader(eval_images, eval_labels, batch_size=cfg.eval_batch_size, train=False, **common)
    return DataBundle(
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_classes=len(source.class_names),
        in_channels=int(train_images.shape[1]),
        input_size=(int(train_images.shape[2]), int(train_images.shape[3])),
        class_names=list(source.class_names),
        train_size=len(train_labels),
        eval_size=len(eval_labels),
        name=cfg.name,
        mean=tuple(source.mean),
        std=tuple(source.std),
    )


def probe_batch(bundle: DataBundle, n: int) -> torch.Tensor:
    """A fixed batch of ``min(n, eval_size)`` evaluation images (no augmentation), the same on
    every rank and every call: for pruning's output check and for FLOPs counting."""
    return bundle.eval_loader.probe(n)
