"""A detection data set made from an ImageFolder of small images (the shared CIFAR-10 archive).

Every canvas gets a background (one of ``BACKGROUNDS``: a solid colour, a linear gradient, smoothed
noise, or a blurred, enlarged source image) and 1 to ``max_objects`` source images, each scaled to a
side between ``min_object`` and ``max_object`` pixels (aspect 3:4 to 4:3) and pasted where it overlaps
no other object. The class of an object is the class folder of its source image. Train canvases take
their objects from ``train/``, validation canvases from ``test/`` (or ``val/``).

Each canvas is drawn from its own generator, seeded by ``(seed, split, index)``: the same arguments give
the same bytes. The set is written in two forms (docs/detection.md):

- YOLO: ``images/{train,val}/NNNNNN.jpg``, ``labels/{train,val}/NNNNNN.txt`` (``class cx cy w h``,
  normalised) and ``data.yaml`` (no ``path`` key: ultralytics then reads the folder the YAML is in);
- COCO: ``annotations/instances_{train,val}.json``; ``category_id`` is the YOLO class + 1 (torchvision's
  detectors keep label 0 for the background); each annotation also names its ``source`` image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..errors import PolarpruneError
from ..fileio import current_umask
from .cache import ensure_extracted, is_archive
from .loaders import open_rgb

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, width, height in pixels; covers [x, x+w) x [y, y+h)
SPLITS = {"train": ("train",), "val": ("test", "val")}  # output split -> source folders, first found
SPLIT_CODES = {"train": 0, "val": 1}
PLACEMENT_TRIES = 50
IMAGE_FORMATS = {"jpg": {"format": "JPEG", "quality": 95, "subsampling": 0}, "png": {"format": "PNG"}}


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: canvas counts and size, object sizes, the seed and the image file format."""

    train_images: int
    val_images: int
    image_size: int
    seed: int = 0
    min_object: int = 24
    max_object: int = 96
    max_objects: int = 6
    image_format: str = "jpg"

    def check(self) -> None:
        """One line naming the first bad value."""
        if self.train_images < 1 or self.val_images < 1:
            raise PolarpruneError(f"images: need at least 1 train and 1 val image, got {self.train_images} and {self.val_images}")
        if self.min_object < 4:
            raise PolarpruneError(f"min object size {self.min_object} is below 4 pixels")
        if self.max_object < self.min_object:
            raise PolarpruneError(f"max object size {self.max_object} is below the min object size {self.min_object}")
        if self.image_size < self.min_object:
            raise PolarpruneError(f"image size {self.image_size} is below the min object size {self.min_object}")
        if not 1 <= self.max_objects <= 64:
            raise PolarpruneError(f"max objects per image {self.max_objects} is not in 1..64")
        if self.image_format not in IMAGE_FORMATS:
            raise PolarpruneError(f"image format {self.image_format!r}; known: {', '.join(IMAGE_FORMATS)}")


@dataclass
class SourcePool:
    """The source images of one split: ``samples[i] = (path, class index)``, and the class names."""

    root: Path
    samples: list[tuple[Path, int]]
    classes: list[str]

    def image(self, index: int) -> Image.Image:
        """Source image ``index`` as RGB."""
        return open_rgb(str(self.samples[index][0]))

    def relative(self, index: int) -> str:
        """Source image ``index``'s path relative to the tree's root."""
        return self.samples[index][0].relative_to(self.root).as_posix()


def source_root(source: str | Path) -> Path:
    """The folder holding ``train/`` and ``test/`` (or ``val/``); a tar archive is extracted into the cache once."""
    path = Path(source).expanduser()
    if path.is_file() and is_archive(path):
        path = ensure_extracted(path)
    if not (path / "train").is_dir():
        raise PolarpruneError(f"{source}: no train/<class>/ folders (an ImageFolder tree or its tar archive)")
    return path


def load_pools(root: Path) -> dict[str, SourcePool]:
    """Output split -> its source pool; classes are ``train/``'s sub-folders in sorted order."""
    classes = sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())
    if not classes:
        raise PolarpruneError(f"{root / 'train'}: no class folders")
    pools = {}
    for split, candidates in SPLITS.items():
        folder = next((root / name for name in candidates if (root / name).is_dir()), None)
        if folder is None:
            raise PolarpruneError(f"{root}: no {' or '.join(candidates)} folder for the {split} split")
        samples = [(path, index) for index, name in enumerate(classes) for path in sorted((folder / name).glob("*"))
                   if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
        if not samples:
            raise PolarpruneError(f"{folder}: no images in its class folders ({', '.join(classes[:3])}, ...)")
        pools[split] = SourcePool(root, samples, classes)
    return pools


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share at least one pixel (touching edges do not)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def object_shape(rng: np.random.Generator, spec: SynthSpec) -> tuple[int, int]:
    """An object's ``(width, height)``: a side in ``[min_object, max_object]`` and an aspect of 3:4 to 4:3,
    both within the canvas."""
    side = int(rng.integers(spec.min_object, spec.max_object + 1))
    aspect = float(np.sqrt(rng.uniform(0.75, 4.0 / 3.0)))
    width = min(max(round(side * aspect), 1), spec.image_size)
    height = min(max(round(side / aspect), 1), spec.image_size)
    return width, height


def place_boxes(rng: np.random.Generator, spec: SynthSpec, count: int) -> list[Box]:
    """Up to ``count`` boxes inside the canvas, none overlapping another; each gets ``PLACEMENT_TRIES``
    random positions (the first always fits, so at least one box)."""
    boxes: list[Box] = []
    for _ in range(count):
        width, height = object_shape(rng, spec)
        for _ in range(PLACEMENT_TRIES):
            box = (int(rng.integers(0, spec.image_size - width + 1)), int(rng.integers(0, spec.image_size - height + 1)), width, height)
            if not any(boxes_overlap(box, other) for other in boxes):
                boxes.append(box)
                break
    return boxes


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def solid_background(rng: np.random.Generator, size: int, pool: SourcePool) -> Image.Image:
    """One colour."""
    return Image.fromarray(np.broadcast_to(_colour(rng).astype(np.uint8), (size, size, 3)).copy())


def gradient_background(rng: np.random.Generator, size: int, pool: SourcePool) -> Image.Image:
    """A linear blend between two colours along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    start, end = _colour(rng), _colour(rng)
    return Image.fromarray((start + ramp[..., None] * (end - start)).round().astype(np.uint8))


def noise_background(rng: np.random.Generator, size: int, pool: SourcePool) -> Image.Image:
    """Uniform noise, smoothed by a Gaussian blur of a random radius."""
    noise = Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
    return noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))


def blurred_source_background(rng: np.random.Generator, size: int, pool: SourcePool) -> Image.Image:
    """A random source image of the split, enlarged to the canvas and strongly blurred (clutter, no sharp object)."""
    image = pool.image(int(rng.integers(len(pool.samples)))).resize((size, size), Image.BILINEAR)
    return image.filter(ImageFilter.GaussianBlur(max(size / 16.0, 1.0)))


Background = Callable[[np.random.Generator, int, SourcePool], Image.Image]
BACKGROUNDS: dict[str, Background] = {"solid": solid_background, "gradient": gradient_background,
                                      "noise": noise_background, "blurred-source": blurred_source_background}


@dataclass
class Canvas:
    """One generated image and its objects: ``(class index, box, source index)`` each."""

    image: Image.Image
    objects: list[tuple[int, Box, int]]


def compose(spec: SynthSpec, pool: SourcePool, split: str, index: int) -> Canvas:
    """Canvas ``index`` of ``split``, determined by ``(spec.seed, split, index)`` alone."""
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], index])
    kinds = list(BACKGROUNDS)
    canvas = BACKGROUNDS[kinds[int(rng.integers(len(kinds)))]](rng, spec.image_size, pool)
    objects = []
    for box in place_boxes(rng, spec, int(rng.integers(1, spec.max_objects + 1))):
        source = int(rng.integers(len(pool.samples)))
        canvas.paste(pool.image(source).resize(box[2:], Image.BILINEAR), box[:2])
        objects.append((pool.samples[source][1], box, source))
    return Canvas(canvas, objects)


def yolo_line(class_index: int, box: Box, size: int) -> str:
    """A YOLO label line: class, then centre x, centre y, width, height as fractions of the canvas."""
    x, y, w, h = box
    return f"{class_index} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}"


def coco_categories(classes: Sequence[str]) -> list[dict]:
    """COCO categories: id = class index + 1."""
    return [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(classes)]


def data_yaml(classes: Sequence[str]) -> str:
    """ultralytics' data set file; without ``path`` it resolves the folders next to the YAML file."""
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    return f"train: images/train\nval: images/val\nnc: {len(classes)}\nnames:\n{names}"


def write_split(out: Path, spec: SynthSpec, pool: SourcePool, split: str, count: int) -> dict:
    """Write ``count`` canvases of ``split`` (images and YOLO labels) and return its COCO dictionary."""
    suffix = spec.image_format
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        canvas = compose(spec, pool, split, index)
        name = f"{index:06d}.{suffix}"
        canvas.image.save(out / "images" / split / name, **IMAGE_FORMATS[suffix])
        lines = [yolo_line(cls, box, spec.image_size) for cls, box, _ in canvas.objects]
        (out / "labels" / split / f"{index:06d}.txt").write_text("\n".join(lines) + "\n")
        images.append({"id": index + 1, "file_name": f"{split}/{name}", "width": spec.image_size, "height": spec.image_size})
        for cls, box, source in canvas.objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": cls + 1, "bbox": list(box),
                                "area": box[2] * box[3], "iscrowd": 0, "source": pool.relative(source)})
        if (index + 1) % max(count // 10, 1) == 0 or index + 1 == count:
            log.info("%s: %d/%d images", split, index + 1, count)
    return {"images": images, "annotations": annotations, "categories": coco_categories(pool.classes)}


def check_out(out: Path) -> None:
    """``out`` must be new or an empty folder (the set is built next to it and renamed into place)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PolarpruneError(f"{out} exists and is not an empty folder")


def make_detection_set(source: str | Path, out: str | Path, spec: SynthSpec) -> dict:
    """Generate the set from ``source`` (an ImageFolder tree or its tar archive) into ``out``, built in a
    temporary folder beside it and renamed into place (a failure leaves nothing). Returns a summary."""
    spec.check()
    out = Path(out).expanduser()
    check_out(out)
    pools = load_pools(source_root(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        counts = {"train": spec.train_images, "val": spec.val_images}
        summary = {"out": str(out), "classes": pools["train"].classes, "image_size": spec.image_size, "seed": spec.seed}
        for split, count in counts.items():
            coco = write_split(tmp, spec, pools[split], split, count)
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco) + "\n")
            summary[split] = {"images": count, "objects": len(coco["annotations"])}
        (tmp / "data.yaml").write_text(data_yaml(pools["train"].classes))
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def read_yolo_labels(path: str | Path) -> Iterator[tuple[int, float, float, float, float]]:
    """The ``(class, cx, cy, w, h)`` rows of a YOLO label file."""
    for line in Path(path).read_text().splitlines():
        if line.strip():
            cls, *rest = line.split()
            yield (int(cls), *map(float, rest))  # type: ignore[misc]


__all__ = ["SynthSpec", "SourcePool", "BACKGROUNDS", "Canvas", "compose", "place_boxes", "boxes_overlap", "object_shape",
           "yolo_line", "data_yaml", "coco_categories", "source_root", "load_pools", "make_detection_set",
           "read_yolo_labels", "write_split"]
