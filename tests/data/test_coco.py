"""COCO mAP by pycocotools on cases whose answer is known, and the COCO reader for torchvision detectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polarprune.data.coco import CocoImages, coco_map, predictions_from_outputs, xyxy_to_xywh
from polarprune.errors import PolarpruneError


def ground_truth(boxes_per_image: list[list[tuple[int, list[float]]]]) -> dict:
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(len(boxes_per_image))]
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (i, (cat, box)) in enumerate((i, b) for i, boxes in enumerate(boxes_per_image) for b in boxes)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


GT = ground_truth([[(1, [10, 10, 20, 20]), (2, [50, 50, 30, 20])], [(1, [0, 0, 40, 40])]])


def perfect(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]


def test_perfect_predictions_score_one():
    assert coco_map(perfect(GT), GT) == {"map50_95": pytest.approx(1.0), "map50": pytest.approx(1.0)}


@pytest.mark.parametrize("shift, iou", [(2, 8 / 12), (1, 9 / 11), (4, 6 / 14)])
def test_a_shifted_box_scores_the_share_of_iou_thresholds_it_passes(shift: int, iou: float):
    gt = ground_truth([[(1, [0, 0, 10, 10])]])
    pred = [{"image_id": 1, "category_id": 1, "bbox": [shift, 0, 10, 10], "score": 1.0}]
    thresholds = np.linspace(0.5, 0.95, 10)
    expected = float((iou >= thresholds - 1e-9).mean())  # one box, one detection: AP is 1 or 0 per threshold
    result = coco_map(pred, gt)
    assert result["map50_95"] == pytest.approx(expected)
    assert result["map50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0)


def test_wrong_class_and_no_predictions_score_zero():
    gt = ground_truth([[(1, [0, 0, 10, 10])]])
    assert coco_map([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 1.0}], gt)["map50"] == 0.0
    assert coco_map([], gt) == {"map50_95": 0.0, "map50": 0.0}


def test_half_the_objects_found_scores_half(tmp_path: Path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    found = [p for p in perfect(GT) if p["category_id"] == 1 and p["image_id"] == 1]  # 1 of class 1's 2, none of class 2
    result = coco_map(found, path)
    assert result["map50"] == pytest.approx((0.5 + 0.0) / 2, abs=0.01)  # class 1: recall 1/2 at precision 1 -> AP ~0.5


def test_torchvision_outputs_become_coco_rows():
    outputs = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}]
    assert predictions_from_outputs(outputs, [7]) == [{"image_id": 7, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.5}]
    assert xyxy_to_xywh([1, 2, 4, 8]) == [1.0, 2.0, 3.0, 6.0]


def test_coco_images_give_torchvision_targets(tmp_path: Path):
    for i in range(2):
        Image.fromarray(np.full((100, 100, 3), 255 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    data = CocoImages(tmp_path, tmp_path / "gt.json")
    image, target = data[0]
    assert image.shape == (3, 100, 100) and float(image.max()) == 0.0 and float(data[1][0].min()) == 1.0
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [50, 50, 80, 70]] and target["labels"].tolist() == [1, 2]
    first = CocoImages(tmp_path, tmp_path / "gt.json", limit=1).subset_ground_truth()
    assert coco_map([p for p in perfect(GT) if p["image_id"] == 1], first)["map50"] == pytest.approx(1.0)
    with pytest.raises(PolarpruneError, match=r"image ids not in the ground truth: \[2\]"):
        coco_map(perfect(GT), first)


def test_a_file_that_is_not_coco_gets_one_line(tmp_path: Path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(PolarpruneError, match="not a COCO annotation file"):
        coco_map(perfect(GT), tmp_path / "x.json")
    with pytest.raises(PolarpruneError, match="annotation file not found"):
        CocoImages(tmp_path, tmp_path / "missing.json")
