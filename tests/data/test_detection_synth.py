"""The generated detection set: deterministic, no overlaps, boxes where the objects are, YOLO and COCO agree."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection_fakes import CLASSES, fake_tree
from polarprune.cli import main
from polarprune.data.detection_synth import (SynthSpec, boxes_overlap, make_detection_set, place_boxes,
                                             read_yolo_labels)
from polarprune.errors import PolarpruneError


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_tree(tmp_path_factory.mktemp("src") / "tree")


SPEC = SynthSpec(train_images=6, val_images=3, image_size=64, seed=3, min_object=8, max_object=24, image_format="png")


@pytest.fixture(scope="module")
def built(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("set") / "det"
    make_detection_set(tree, out, SPEC)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_set(tree: Path, built: Path, tmp_path: Path):
    again = tmp_path / "again"
    make_detection_set(tree, again, SPEC)
    assert files(again) == files(built)
    other = tmp_path / "other"
    make_detection_set(tree, other, dataclasses.replace(SPEC, seed=4))
    assert files(other)["labels/train/000000.txt"] != files(built)["labels/train/000000.txt"] or \
        files(other)["images/train/000000.png"] != files(built)["images/train/000000.png"]


def coco(built: Path, split: str) -> dict:
    return json.loads((built / "annotations" / f"instances_{split}.json").read_text())


@pytest.mark.parametrize("split", ["train", "val"])
def test_objects_do_not_overlap_and_count_one_to_six(built: Path, split: str):
    data = coco(built, split)
    assert len(data["images"]) == {"train": 6, "val": 3}[split]
    for image in data["images"]:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]]
        assert 1 <= len(boxes) <= 6
        for i, a in enumerate(boxes):
            assert 0 <= a[0] and a[0] + a[2] <= 64 and 0 <= a[1] and a[1] + a[3] <= 64
            assert all(not boxes_overlap(tuple(a), tuple(b)) for b in boxes[i + 1:])


@pytest.mark.parametrize("split, source_dir", [("train", "train"), ("val", "test")])
def test_each_box_holds_exactly_its_pasted_source_image(built: Path, tree: Path, split: str, source_dir: str):
    data = coco(built, split)
    names = {c["id"]: c["name"] for c in data["categories"]}
    for ann in data["annotations"]:
        assert ann["source"].startswith(f"{source_dir}/{names[ann['category_id']]}/")  # class = the source's folder
        image = next(i for i in data["images"] if i["id"] == ann["image_id"])
        canvas = np.asarray(Image.open(built / "images" / image["file_name"]).convert("RGB"))
        x, y, w, h = ann["bbox"]
        expected = np.asarray(Image.open(tree / ann["source"]).convert("RGB").resize((w, h), Image.BILINEAR))
        np.testing.assert_array_equal(canvas[y:y + h, x:x + w], expected)  # png: lossless


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_and_yolo_labels_agree(built: Path, split: str):
    data = coco(built, split)
    for image in data["images"]:
        stem = Path(image["file_name"]).stem
        rows = sorted(read_yolo_labels(built / "labels" / split / f"{stem}.txt"))
        anns = sorted((a["category_id"] - 1, (a["bbox"][0] + a["bbox"][2] / 2) / 64, (a["bbox"][1] + a["bbox"][3] / 2) / 64,
                       a["bbox"][2] / 64, a["bbox"][3] / 64) for a in data["annotations"] if a["image_id"] == image["id"])
        assert len(rows) == len(anns)
        for row, ann in zip(rows, anns):
            assert row[0] == ann[0]
            np.testing.assert_allclose(row[1:], ann[1:], atol=1e-6)
    assert [c["name"] for c in data["categories"]] == CLASSES
    yaml_text = (built / "data.yaml").read_text()
    assert "train: images/train" in yaml_text and "0: ant" in yaml_text and "2: cat" in yaml_text and "path:" not in yaml_text


def test_placement_never_overlaps_even_when_crowded():
    spec = SynthSpec(1, 1, 40, min_object=12, max_object=20, max_objects=12)
    for seed in range(20):
        boxes = place_boxes(np.random.default_rng(seed), spec, 12)
        assert 1 <= len(boxes) <= 12
        assert all(not boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert boxes_overlap((0, 0, 4, 4), (3, 3, 4, 4)) and not boxes_overlap((0, 0, 4, 4), (4, 0, 4, 4))


def test_command_reads_a_tar_archive_and_prints_a_summary(tree: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("POLARPRUNE_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="tiny")
    out = tmp_path / "set"
    assert main(["make-detection-data", "--out", str(out), "--images", "2", "--val-images", "1", "--image-size", "48",
                 "--min-object", "8", "--max-object", "16", "--archive", str(archive), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "train: 2/2 images" in captured.err and "val: 1/1 images" in captured.err  # progress on stderr
    assert summary["classes"] == CLASSES and summary["train"]["images"] == 2 and summary["val"]["images"] == 1
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 2 and len(list((out / "labels" / "val").glob("*.txt"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--images", "0"], "--images must be >= 1"),
    (["--min-object", "40", "--image-size", "32"], "image size 32 is below the min object size 40"),
    (["--max-object", "4", "--min-object", "8"], "max object size 4 is below the min object size 8"),
])
def test_bad_arguments_get_one_line(tree: Path, tmp_path: Path, capsys, argv: list[str], message: str):
    out = tmp_path / "set"
    assert main(["make-detection-data", "--out", str(out), "--archive", str(tree), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists() and not list(tmp_path.glob(".set*"))  # nothing half-written


def test_a_source_without_train_or_an_occupied_out_is_refused(tree: Path, tmp_path: Path):
    with pytest.raises(PolarpruneError, match="no train/<class>/ folders"):
        make_detection_set(tmp_path, tmp_path / "a", SPEC)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(PolarpruneError, match="exists and is not an empty folder"):
        make_detection_set(tree, busy, SPEC)


def test_ultralytics_reads_the_data_yaml(built: Path, monkeypatch):
    """ultralytics' own data set check finds both splits and the class names (no ``path:``: the YAML's folder)."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    utils = pytest.importorskip("ultralytics.data.utils")
    data = utils.check_det_dataset(str(built / "data.yaml"))
    assert Path(data["train"]) == built / "images" / "train" and Path(data["val"]) == built / "images" / "val"
    assert data["nc"] == 3 and data["names"] == dict(enumerate(CLASSES))


def test_help_names_the_options(capsys):
    assert main(["make-detection-data", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--out", "--images", "--image-size", "--seed", "--archive", "--max-objects"))
