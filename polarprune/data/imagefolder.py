"""ImageFolder trees (``train/<class>/*`` and ``val/`` or ``test/``), also given as a tar archive. Small
images (e.g. 32x32 CIFAR JPEGs) are decoded once into memory and cached; larger ones stay files."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import DataConfig
from ..errors import PolarpruneError
from .augment import channel_stats
from .cache import decoded_cache_path, ensure_extracted, is_archive, write_npz_atomic
from .loaders import open_rgb, read_image
from .sampling import evenly_spaced
from .splits import ArraySplits, FolderSplits, nhwc_to_nchw

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224  # imagefolder crop size for ImageNet-sized images
SIZE_PROBE_COUNT = 8  # images looked at to decide whether an ImageFolder fits in memory


def resolve_imagefolder_root(root: str | None, require_train: bool = True) -> tuple[Path, Path | None, Path]:
    """``(root, train_dir, eval_dir)``; ``root`` may be a tar archive (extracted into the cache). Without
    ``require_train`` a tree holding only ``val/`` or ``test/`` is accepted (``train_dir`` None)."""
    if not root:
        raise PolarpruneError("data.root: required for imagefolder (a folder with train/ and val/ or test/)")
    path = Path(root).expanduser()
    if path.is_file() and is_archive(path):
        path = ensure_extracted(path)
    if not path.is_dir():
        raise PolarpruneError(f"imagefolder: {path} not found")
    train_dir: Path | None = path / "train"
    if not train_dir.is_dir():
        if require_train:
            raise PolarpruneError(f"imagefolder: {train_dir} not found (expected {path}/train/<class>/*)")
        train_dir = None
    for name in ("val", "test"):
        if (path / name).is_dir():
            return path, train_dir, path / name
    raise PolarpruneError(f"imagefolder: neither {path / 'val'} nor {path / 'test'} found")


def list_samples(split_dir: Path, class_to_idx: dict[str, int], allow_empty: bool) -> list[tuple[str, int]]:
    """ImageFolder's listing of ``split_dir/<class>/*`` with the given class indices."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    unknown = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and entry.name not in class_to_idx)
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
    return read_image(path, lambda image: image.size)


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

    rgb = open_rgb(path)
    if rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """Decode (threads) into an N x H x W x 3 uint8 array; other sizes are resized bilinearly."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    workers = max(1, min(8, os.cpu_count() or 1))

    def work(i: int) -> None:
        out[i] = _decode_one(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(paths))))  # consumed so that a worker's error is raised here
    return out


def load_decoded_split(split_dir: Path, samples: list[tuple[str, int]], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and labels of a split, decoded once and cached as ``.npz``."""
    labels = np.array([label for _, label in samples], dtype=np.int64)
    path = decoded_cache_path(split_dir, samples, size)
    if path.is_file():
        try:
            with np.load(path) as cached:
                images = cached["images"]
                if len(images) == len(labels) and np.array_equal(cached["labels"], labels):
                    return nhwc_to_nchw(images), torch.from_numpy(labels)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: decode again and overwrite it
    images = decode_images([p for p, _ in samples], size)
    try:
        write_npz_atomic(path, images=images, labels=labels)
    except OSError:
        pass  # a read-only cache only costs the decode next time
    return nhwc_to_nchw(images), torch.from_numpy(labels)


def load_imagefolder(cfg: DataConfig, require_train: bool = True) -> ArraySplits | FolderSplits:
    """Small images (e.g. 32x32 CIFAR JPEGs): decoded into memory (cached) and treated like
    CIFAR; larger ones: file lists for the DataLoader path with ImageNet transforms. Without
    ``require_train`` (evaluation only) a tree without ``train/`` gives an empty training split."""
    _, train_dir, eval_dir = resolve_imagefolder_root(cfg.root, require_train)
    classes = find_classes(train_dir or eval_dir)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    train_samples = list_samples(train_dir, class_to_idx, allow_empty=False) if train_dir else []
    eval_samples = list_samples(eval_dir, class_to_idx, allow_empty=True)
    if not eval_samples:
        raise PolarpruneError(f"imagefolder: {eval_dir} holds no images")
    size = small_image_size(train_samples or eval_samples, cfg.in_memory_max_size)
    if size is None:
        return FolderSplits(train_samples, eval_samples, classes, cfg.image_size or DEFAULT_IMAGE_SIZE)
    eval_images, eval_labels = load_decoded_split(eval_dir, eval_samples, size)
    if train_dir is None:
        return _eval_only_splits(eval_images, eval_labels, classes, cfg)
    train_images, train_labels = load_decoded_split(train_dir, train_samples, size)
    return ArraySplits.normalised_by_train(
        train_images=train_images, train_labels=train_labels, eval_images=eval_images, eval_labels=eval_labels,
        class_names=classes, padding=max(round(min(size) / 8), 1), flip=True,  # padding 4 for 32-px images, as CIFAR
    )


def _eval_only_splits(eval_images: torch.Tensor, eval_labels: torch.Tensor, classes: list[str],
                      cfg: DataConfig) -> ArraySplits:
    """In-memory splits of a tree without ``train/``: an empty training split, and the normalisation the
    config gives (``data.mean``/``data.std``), else measured on the evaluation images themselves (a trained
    model's own statistics come from its training images, so give them when they are known)."""
    if not (cfg.mean and cfg.std):
        logger.warning("imagefolder: no train/ folder; normalising by the evaluation images' own mean/std "
                       "(set data.mean and data.std to the training statistics)")
    mean, std = channel_stats(eval_images)
    return ArraySplits(train_images=eval_images[:0], train_labels=eval_labels[:0], eval_images=eval_images,
                       eval_labels=eval_labels, class_names=classes, mean=mean, std=std, padding=0, flip=False)
