"""The data sets polarprune reads, by name (``SOURCES``): the one place their names are spelled. A source
turns a ``DataConfig`` into splits (``ArraySplits`` or ``FolderSplits``); a new data set is one entry here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from ..errors import PolarpruneError
from .cache import default_cache_root
from .imagefolder import load_imagefolder
from .sampling import stratified_split
from .splits import ArraySplits, FolderSplits, nhwc_to_nchw

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Seeds that must NOT depend on the run seed: every stage of a pipeline sees the same data.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360
FAKE_SEED = 0
FAKE_TRAIN_SIZE = 512
FAKE_EVAL_SIZE = 256
FAKE_IMAGE_SIZE = 32


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 N x 8 x 8, labels, train_idx, test_idx)`` of scikit-learn's digits; the split is
    fixed: 360 stratified test images from ``DIGITS_SPLIT_SEED`` (never the run seed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return images, labels, train_idx, test_idx


def load_digits_splits(cfg: DataConfig | None = None) -> ArraySplits:
    """scikit-learn's 8x8 digits (bundled, no download) with the fixed split of ``digits_split``."""
    images, labels, train_idx, test_idx = digits_split()
    tensor = torch.from_numpy(images[:, None])  # N x 1 x 8 x 8
    return ArraySplits.normalised_by_train(
        train_images=tensor[train_idx].contiguous(), train_labels=torch.from_numpy(labels[train_idx]),
        eval_images=tensor[test_idx].contiguous(), eval_labels=torch.from_numpy(labels[test_idx]),
        class_names=[str(d) for d in range(10)], padding=1, flip=False,  # digits are not mirror-symmetric
    )


@dataclass(frozen=True)
class CifarRelease:
    """One CIFAR python-pickle release: its folder, files, torchvision reader and statistics."""

    folder: str
    files: tuple[str, ...]
    reader: str  # the torchvision.datasets class
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR_RELEASES = {
    "cifar10": CifarRelease("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
                            "CIFAR10", CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": CifarRelease("cifar-100-python", ("train", "test", "meta"), "CIFAR100", CIFAR100_MEAN, CIFAR100_STD),
}


def _cifar_reader(name: str, *, checked: bool) -> type:
    """torchvision's reader of a CIFAR release; unchecked: md5 checks replaced by presence checks."""
    import torchvision.datasets

    base = getattr(torchvision.datasets, CIFAR_RELEASES[name].reader)
    if checked:
        return base
    return type(f"Unchecked{base.__name__}", (base,), {
        "train_list": [[file, None] for file, _ in base.train_list],
        "test_list": [[file, None] for file, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def _download_cifar(name: str, root: Path, folder: Path) -> None:
    """torchvision's download (with its md5 checks); any failure is one PolarpruneError line."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        _cifar_reader(name, checked=True)(str(root), train=True, download=True)
    except Exception as exc:  # no network, HTTP error, bad checksum, disk full...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolarpruneError(f"{folder} is missing and the download failed ({reason})") from None


def _read_cifar_split(name: str, root: Path, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    cls = _cifar_reader(name, checked=False)
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
    """CIFAR-10/100 from the python-pickle release under ``root`` (downloaded on request); md5 sums are
    not checked, so that re-packed copies and the test fixtures load (see docs/data.md)."""
    release = CIFAR_RELEASES[name]
    folder_name, files = release.folder, release.files
    folder = root / folder_name
    if not all((folder / f).is_file() for f in files):
        if download:
            _download_cifar(name, root, folder)
        else:
            hint = " (it holds train/: use data.name=imagefolder)" if (root / "train").is_dir() else ""
            raise PolarpruneError(f"{name}: {folder} not found or incomplete (needs {', '.join(files)}){hint}; "
                                  f"set data.root to the folder that contains {folder_name} or data.download=true")
    train_images, train_labels, classes = _read_cifar_split(name, root, folder, train=True)
    eval_images, eval_labels, _ = _read_cifar_split(name, root, folder, train=False)
    return ArraySplits(
        train_images=nhwc_to_nchw(train_images), train_labels=torch.from_numpy(train_labels),
        eval_images=nhwc_to_nchw(eval_images), eval_labels=torch.from_numpy(eval_labels),
        class_names=classes, mean=release.mean, std=release.std, padding=4, flip=True,
    )


def _load_cifar(name: str, cfg: DataConfig) -> ArraySplits:
    root = Path(cfg.root).expanduser() if cfg.root else default_cache_root() / "datasets"
    return load_cifar_splits(name, root, cfg.download)


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
        train_images=train_images, train_labels=train_labels, eval_images=eval_images, eval_labels=eval_labels,
        class_names=[f"class{i}" for i in range(cfg.num_classes)], padding=max(size // 8, 1), flip=True,
    )


@dataclass(frozen=True)
class Source:
    """A data set: ``load(cfg)`` reads its splits. ``sized_by_subsets``: ``train_subset`` and
    ``eval_subset`` are the sizes it generates, not subsets to take afterwards."""

    load: Callable[[DataConfig], ArraySplits | FolderSplits]
    sized_by_subsets: bool = False
    # reads the evaluation split where the training split may be missing (None: ``load``, which needs both)
    load_eval: Callable[[DataConfig], ArraySplits | FolderSplits] | None = None


SOURCES: dict[str, Source] = {
    "digits": Source(load_digits_splits),
    **{name: Source(partial(_load_cifar, name)) for name in CIFAR_RELEASES},
    "imagefolder": Source(load_imagefolder, load_eval=partial(load_imagefolder, require_train=False)),
    "fake": Source(load_fake_splits, sized_by_subsets=True),
}


def get_source(name: str) -> Source:
    """The source called ``name``; a one-line error listing the known names otherwise."""
    if name not in SOURCES:
        raise PolarpruneError(f"data.name: unknown data set {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name]
