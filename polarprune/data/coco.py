"""COCO-format detection data: read a set (images and targets for torchvision's detectors) and score
predictions with pycocotools (mAP over IoU 0.50:0.95 and at IoU 0.50). pycocotools is the ``detection``
extra, imported only when a score is computed."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PolarpruneError, require_extra

Prediction = Mapping[str, Any]  # {"image_id", "category_id", "bbox": [x, y, w, h], "score"}


def read_coco(path: str | Path) -> dict:
    """A COCO annotation file as a dictionary; one line when it is missing or lacks images/annotations."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolarpruneError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolarpruneError(f"{path}: not a JSON file ({exc})") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise PolarpruneError(f"{path}: not a COCO annotation file (no {', '.join(missing)})")
    return data


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> COCO's ``[x, y, width, height]``."""
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def predictions_from_outputs(outputs: Iterable[Mapping[str, Any]], image_ids: Iterable[int]) -> list[dict]:
    """COCO result rows from torchvision detector outputs (``boxes`` xyxy, ``labels`` = category ids, ``scores``)."""
    rows = []
    for output, image_id in zip(outputs, image_ids):
        for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(label), "bbox": xyxy_to_xywh(box), "score": float(score)})
    return rows


def coco_map(predictions: Sequence[Prediction], ground_truth: str | Path | Mapping[str, Any]) -> dict[str, float]:
    """``{"map50_95", "map50"}`` of ``predictions`` against a COCO annotation file or dictionary (pycocotools'
    COCOeval, all areas, 100 detections per image); no predictions score 0."""
    if not predictions:
        return {"map50_95": 0.0, "map50": 0.0}
    require_extra("pycocotools", "detection", "COCO mAP")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = read_coco(ground_truth) if not isinstance(ground_truth, Mapping) else copy.deepcopy(dict(ground_truth))
    data.setdefault("info", {})
    unknown = {int(p["image_id"]) for p in predictions} - {int(i["id"]) for i in data["images"]}
    if unknown:
        raise PolarpruneError(f"predictions for image ids not in the ground truth: {sorted(unknown)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        result = gt.loadRes([dict(p) for p in predictions])
        evaluation = COCOeval(gt, result, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [max(float(v), 0.0) for v in evaluation.stats[:2]]  # -1: no ground truth of that kind
    return {"map50_95": stats[0], "map50": stats[1]}


class CocoImages:
    """``(image float tensor C x H x W in [0, 1], target)`` pairs of a COCO set for torchvision's detectors:
    ``target = {"boxes": N x 4 xyxy, "labels": category ids, "image_id"}``. ``root`` holds the ``file_name``s."""

    def __init__(self, root: str | Path, annotations: str | Path, limit: int | None = None) -> None:
        self.root = Path(root)
        self.data = read_coco(annotations)
        self.images = self.data["images"][:limit] if limit is not None else self.data["images"]
        self.by_image: dict[int, list[dict]] = {}
        for ann in self.data["annotations"]:
            self.by_image.setdefault(ann["image_id"], []).append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        import torch

        from .loaders import open_rgb

        info = self.images[index]
        path = self.root / info["file_name"]
        pixels = np.asarray(open_rgb(str(path)), dtype=np.float32) / 255.0
        anns = self.by_image.get(info["id"], [])
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), {"boxes": boxes, "labels": labels, "image_id": info["id"]}

    def subset_ground_truth(self) -> dict:
        """The annotation dictionary restricted to this view's images (score a ``limit``-ed view against it)."""
        ids = {info["id"] for info in self.images}
        return {**self.data, "images": list(self.images), "annotations": [a for a in self.data["annotations"] if a["image_id"] in ids]}


__all__ = ["read_coco", "coco_map", "predictions_from_outputs", "xyxy_to_xywh", "CocoImages"]
