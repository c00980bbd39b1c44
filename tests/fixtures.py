"""Builders of tiny data sets in the OFFICIAL on-disk formats, for the tests of every module.

- ``make_cifar10(root)`` / ``make_cifar100(root)``: the python-pickle releases
  (``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``;
  ``cifar-100-python/train, test, meta``), written the way the official (Python 2) files are:
  dict keys are Python-2 ``str`` objects, so ``pickle.load(f, encoding="bytes")`` gives the
  keys ``b"data"``, ``b"labels"`` (the recipe on the CIFAR web page) and
  ``encoding="latin1"`` gives ``"data"``, ``"labels"`` (what torchvision uses).
- ``make_imagefolder(root)``: ``<root>/<split>/<class>/<n>.png`` (or .jpg).

Import it in tests as ``from fixtures import make_cifar10`` (pytest puts ``tests/`` on the
path, there is no ``tests/__init__.py``).

The images are *learnable*: each class has its own colour and stripe direction plus noise, so
an end-to-end test reaches better-than-chance accuracy within a few steps. Everything is
deterministic (fixed seeds). Nothing here is meant for users; the md5 sums of these files
differ from the official ones (``polarprune.data`` does not check md5s, see docs/data.md).
"""

from __future__ import annotations

import colorsys
import io
import pickle
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


# ----------------------------------------------------------------------------- images


def class_colour(label: int, num_classes: int) -> np.ndarray:
    """An RGB colour (float 0..255) per class: hues spread around the colour wheel."""
    hue = (label % max(num_classes, 1)) / max(num_classes, 1)
    value = 0.9 if (label // 12) % 2 == 0 else 0.55  # more than 12 classes: two brightness bands
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, value)) * 255.0


def learnable_image(label: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image whose class shows in its colour and in its stripe orientation."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = max(size // 4, 2)
    stripes = ((yy if label % 2 == 0 else xx) // (period // 2)) % 2  # 0/1 bands
    base = class_colour(label, num_classes)[None, None, :]
    image = base * (0.65 + 0.35 * stripes[..., None])
    image = image + rng.normal(0.0, 18.0, size=(size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def learnable_images(labels: Iterable[int], num_classes: int, size: int, seed: int) -> np.ndarray:
    """N x size x size x 3 uint8 images for the given labels (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    images = [learnable_image(int(y), num_classes, size, rng) for y in labels]
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(images)


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """``n`` labels cycling over the classes, shuffled (every class appears when n >= classes)."""
    labels = np.arange(n) % num_classes
    np.random.default_rng(seed).shuffle(labels)
    return labels


# ----------------------------------------------------------------------------- python-2 style pickles


class Py2Str(bytes):
    """Bytes that pickle as a Python 2 ``str`` (opcode BINSTRING), like the official CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us add one type
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(data)) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def py2_keys(value: Any) -> Any:
    """Turn every ``str`` (dict keys, names) into a ``Py2Str``, recursively."""
    if isinstance(value, str):
        return Py2Str(value.encode("latin1"))
    if isinstance(value, dict):
        return {py2_keys(k): py2_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [py2_keys(v) for v in value]
    return value


def write_py2_pickle(path: Path, obj: dict[str, Any]) -> None:
    """Pickle ``obj`` (protocol 2) with Python-2 strings, as the official CIFAR batches are."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(py2_keys(obj))
    path.write_bytes(buffer.getvalue())


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> N x 3072 rows (R plane, G plane, B plane), the official layout."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _split_evenly(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------- writers


def make_cifar10(root: str | Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 in ``<root>/cifar-10-batches-py``; returns ``root``.

    Training images are spread over ``data_batch_1..5`` like the real release; labels are
    balanced over the 10 classes.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = balanced_labels(n_train, 10, seed)
    test_labels = balanced_labels(n_test, 10, seed + 1)
    train_images = learnable_images(train_labels, 10, 32, seed + 2)
    test_images = learnable_images(test_labels, 10, 32, seed + 3)
    for number, part in enumerate(_split_evenly(n_train, 5), start=1):
        write_py2_pickle(folder / f"data_batch_{number}", {
            "batch_label": f"training batch {number} of 5",
            "labels": [int(y) for y in train_labels[part]],
            "data": _cifar_rows(train_images[part]),
            "filenames": [f"train_{i:05d}.png" for i in range(part.start, part.stop)],
        })
    write_py2_pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(y) for y in test_labels],
        "data": _cifar_rows(test_images),
        "filenames": [f"test_{i:05d}.png" for i in range(n_test)],
    })
    write_py2_pickle(folder / "batches.meta", {
        "num_cases_per_batch": max(n_train // 5, 1),
        "label_names": list(CIFAR10_CLASSES),
        "num_vis": 3072,
    })
    return root


def make_cifar100(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a tiny CIFAR-100 in ``<root>/cifar-100-python`` (fine and coarse labels); returns ``root``."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 10)):
        fine = balanced_labels(n, 100, seed + offset)
        images = learnable_images(fine, 100, 32, seed + offset + 1)
        write_py2_pickle(folder / name, {
            "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": [int(y) for y in fine],
            "coarse_labels": [int(y) // 5 for y in fine],
            "data": _cifar_rows(images),
        })
    write_py2_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    return root


def make_imagefolder(
    root: str | Path,
    n_per_class: int = 8,
    size: int = 32,
    classes: int = 3,
    split_names: tuple[str, ...] = ("train", "val"),
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """Write ``<root>/<split>/class<k>/<n>.<fmt>`` (size x size RGB); returns ``root``.

    Every split gets ``n_per_class`` images of each of ``classes`` classes; ``fmt`` is "png"
    (lossless) or "jpg".
    """
    root = Path(root)
    for split_number, split in enumerate(split_names):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            images = learnable_images([label] * n_per_class, classes, size, seed + 1000 * split_number + label)
            for number, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{number:04d}.{fmt}")
    return root


def tiny_digits_recipe(name: str, stages: str, width: int = 4) -> str:
    """A recipe YAML that trains a small CNN on 64 digits for two steps, then runs ``stages`` (YAML lines
    under ``stages:``, e.g. ``"  baseline: {}\\n  copy: {}\\n"``): records added in tests run end to end."""
    return (f"name: {name}\ndevice: cpu\nmodel: {{name: small_cnn, options: {{width: {width}}}}}\n"
            "data: {name: digits, batch_size: 32, train_subset: 64, eval_subset: 32}\n"
            "train: {epochs: 1, max_steps_per_epoch: 2, progress: false}\n"
            f"stages:\n{stages}")
