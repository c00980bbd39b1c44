"""``polarprune make-detection-data``: a detection data set (YOLO and COCO) from the CIFAR-10 archive."""

from __future__ import annotations

import argparse
import json

from ..errors import PolarpruneError
from .common import check_at_least, command_parser

DESCRIPTION = """Build a detection data set from an ImageFolder of small images (default: the shared CIFAR-10
archive): 1 to 6 scaled source images pasted without overlap on each canvas, over a solid, gradient, noise or
blurred-image background. Train canvases use train/ images, val canvases test/ images. The same arguments give
the same files. Written in YOLO form (images/, labels/, data.yaml) and as COCO JSON (annotations/).
docs/detection.md describes it."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "make-detection-data", "build a detection data set from CIFAR-10 images", DESCRIPTION, run,
                       trust_code=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--images", type=int, default=1000, metavar="N", help="train images (default 1000)")
    p.add_argument("--val-images", type=int, default=None, metavar="N", help="val images (default: a fifth of --images, at least 1)")
    p.add_argument("--image-size", type=int, default=320, metavar="S", help="canvas side in pixels (default 320)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="seed; the same seed gives the same files (default 0)")
    p.add_argument("--min-object", type=int, default=24, metavar="PX", help="smallest object side (default 24)")
    p.add_argument("--max-object", type=int, default=96, metavar="PX", help="largest object side (default 96)")
    p.add_argument("--max-objects", type=int, default=6, metavar="K", help="most objects per image (default 6; at least 1)")
    p.add_argument("--format", dest="image_format", choices=["jpg", "png"], default="jpg", help="image files (default jpg)")
    p.add_argument("--archive", default=None, metavar="PATH",
                   help="an ImageFolder tree (train/, test/ or val/) or its tar archive (default: the shared CIFAR-10 archive)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def default_source(given: str | None) -> str:
    """``--archive``, else the shared CIFAR-10 archive; a one-line error when neither is there."""
    from ..data import default_cifar10_archive

    if given:
        return given
    found = default_cifar10_archive()
    if found is None:
        raise PolarpruneError("no CIFAR-10 archive found: pass --archive PATH (or set POLARPRUNE_CIFAR10_ARCHIVE)")
    return str(found)


def run(args: argparse.Namespace) -> int:
    from ..data.detection_synth import SynthSpec, make_detection_set

    check_at_least({"--images": (args.images, 1), "--val-images": (args.val_images, 1), "--image-size": (args.image_size, 8)})
    val = args.val_images if args.val_images is not None else max(args.images // 5, 1)
    spec = SynthSpec(args.images, val, args.image_size, args.seed, args.min_object, args.max_object, args.max_objects,
                     args.image_format)
    summary = make_detection_set(default_source(args.archive), args.out, spec)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['out']}: {len(summary['classes'])} classes, {summary['image_size']} px, seed {summary['seed']}")
        for split in ("train", "val"):
            print(f"  {split}: {summary[split]['images']} images, {summary[split]['objects']} objects")
        print(f"  YOLO: {summary['out']}/data.yaml; COCO: {summary['out']}/annotations/instances_{{train,val}}.json")
    return 0
