"""ultralytics YOLOv8 / YOLO11 detect and segment models: built from YAML, pruned exactly, saved,
loaded (into a fresh instance and from the file alone), exported, and run again by ``YOLO.predict``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics try a download
ultralytics = pytest.importorskip("ultralytics")

import polarprune  # noqa: E402
from polarprune.errors import PolarpruneError  # noqa: E402
from polarprune.flops import count_model  # noqa: E402
from polarprune.models import create, entry_for  # noqa: E402
from polarprune.models import ultralytics_models as um  # noqa: E402
from polarprune.pruning import channel_groups, prune_model  # noqa: E402

from prune_roundtrip import TOLERANCE, zero_half_of_every_bn  # noqa: E402
from yolo_data import write_yolo_set  # noqa: E402

SIZE = 128  # a multiple of 32; small enough for the 2-core machine


def predictions(model: nn.Module, x: Tensor) -> list[Tensor]:
    """What pruning preserves: the decoded predictions (and, for a segmenter, the mask prototypes)."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    first = out[0]
    return list(first) if isinstance(first, (tuple, list)) else [first]


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    assert [t.shape for t in got] == [t.shape for t in want]
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= TOLERANCE * max(1.0, float(b.abs().max()))


def image(seed: int = 1, batch: int = 1) -> Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def head_widths(model: nn.Module) -> list[int]:
    """Output widths of the head's final convs (classes, DFL box bins, mask coefficients) and the prototypes."""
    head = model.model[-1]
    convs = [seq[-1] for branch in ("cv2", "cv3", "cv4") for seq in getattr(head, branch, [])]
    proto = [head.proto.cv3.conv] if hasattr(head, "proto") else []
    return [c.out_channels for c in convs + proto]


def test_names_build_from_yaml_without_download() -> None:
    model = create("yolo11n-seg", num_classes=3)
    assert type(model).__name__ == "SegmentationModel" and model.model[-1].nc == 3
    assert model.polarprune_spec["name"] == "yolo11n-seg"
    entry = entry_for(model)
    assert entry is not None and entry.family == "ultralytics" and entry.input_size == 640
    assert {"yolov8n", "yolov8s", "yolo11n", "yolo11s", "yolov8n-seg", "yolo11s-seg"} <= set(polarprune.models.list_models())


def test_split_blocks_pickle_as_ultralytics_checkpoints_do(tmp_path: Path) -> None:
    """ultralytics saves its checkpoints with ``torch.save`` of the module: the split block classes must be
    found by name when the file is read back (the pruned model's fine-tuning saves and resumes such files)."""
    model = create("yolov8n", num_classes=2).eval()
    assert {type(m).__name__ for m in model.modules()} >= {"SplitC2f"}
    torch.save({"model": model}, tmp_path / "last.pt")
    back = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert type(back.model[2]) is type(model.model[2])
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(back(x)[0], model(x)[0])


def test_bn_names_of_the_model_select_the_split_halves() -> None:
    """``bn_names`` given in the model's own names (a sparsity run's regularized BNs) reach the analysis'
    split halves: ``model.2.cv1.bn`` scores both ``cv1a`` and ``cv1b``; an unknown name is one line."""
    from polarprune.pruning import TrialAnalysis

    model = create("yolov8n", num_classes=2).eval()
    with torch.no_grad():
        model.model[2].cv1.bn.weight[::2] = 0.0  # half of the split conv's channels, in both halves
    trial = TrialAnalysis(model, torch.rand(1, 3, 64, 64))
    keep = trial.decide(strategy="fixed", bn_names=["model.2.cv1.bn"]).bn_keep
    cut = {name: (int(mask.sum()), len(mask)) for name, mask in keep.items() if not bool(mask.all())}
    # both halves lose their zeroed half; the bottleneck's residual add ties m.0.cv2 to the second half
    assert cut == {"model.2.cv1a.bn": (8, 16), "model.2.cv1b.bn": (8, 16), "model.2.m.0.cv2.bn": (8, 16)}
    with pytest.raises(PolarpruneError, match=r"no BatchNorm layer named 'model.2.nope.bn'"):
        trial.decide(strategy="fixed", bn_names=["model.2.nope.bn"])


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ultralytics", None)  # as if not installed
    with pytest.raises(PolarpruneError, match=r"needs the ultralytics extra: pip install 'polarprune\[ultralytics\]'"):
        create("yolov8n")


def test_split_forms_compute_the_same() -> None:
    """The split-by-width blocks and the two-conv analysis form give the original outputs."""
    torch.manual_seed(0)
    original = ultralytics.YOLO("yolo11n.yaml").model.eval()
    x = image()
    want = predictions(original, x)
    assert "model.2" in um.split_by_width(original)  # a C3k2
    assert_same(predictions(original, x), want)
    um.prepare(original, x)
    assert hasattr(original.model[2], "cv1a") and not hasattr(original.model[2], "cv1")
    with torch.no_grad():
        assert isinstance(original(x), Tensor)  # the head returns only its predictions while analysed
    um.finish(original)
    assert list(original.model[2]._modules)[0] == "cv1"
    assert_same(predictions(original, x), want)


def test_wrong_image_size_is_one_line() -> None:
    model = create("yolov8n")
    with pytest.raises(PolarpruneError, match=r"\(N, 3, H, W\) with H and W multiples of 32") as info:
        prune_model(model, torch.randn(1, 3, 100, 100), "fixed")
    assert "\n" not in str(info.value) and "(1, 3, 100, 100)" in str(info.value)


def test_groups_left_whole_say_why() -> None:
    model = create("yolo11n")
    reasons = {g.reason for g in channel_groups(model, image()) if not g.prunable}
    assert any("Attention" in r and "heads" in r for r in reasons), reasons
    assert "reaches the model output" in reasons


def prune_roundtrip(name: str, tmp_path: Path) -> dict[str, Any]:
    """Half of every BN zeroed, ``fixed``, saved; loaded into a fresh instance and from the file alone."""
    torch.manual_seed(0)
    original = create(name).eval()
    zero_half_of_every_bn(original)
    x = image(batch=2)
    want = predictions(original, x)
    pruned, report = prune_model(original, x[:1], "fixed")
    assert report.macs_after < report.macs_before
    assert head_widths(pruned) == head_widths(original)
    path = polarprune.save(pruned, tmp_path / f"{name}.safetensors")
    torch.manual_seed(1)
    fresh = polarprune.load(path, model=create(name))
    alone = polarprune.load(path)
    for loaded in (fresh, alone):
        assert_same(predictions(loaded, x), want)
        assert count_model(loaded, (3, SIZE, SIZE)).macs == report.macs_after
    return {"pruned": alone, "report": report, "x": x}


def export_check(model: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from polarprune.deploy import export_model, load_artifact

    export = export_model(model, tmp_path / "pruned.onnx", "onnx", input_size=SIZE, batch=1)
    assert export.max_abs_diff <= export.tolerance * export.output_scale and export.output_scale > 1  # boxes in pixels
    outputs = load_artifact(tmp_path / "pruned.onnx", "onnx", all_outputs=True)(image())
    assert len(outputs) == (2 if hasattr(model.model[-1], "proto") else 1)
    assert outputs[0].shape[1] == 4 + model.model[-1].nc + getattr(model.model[-1], "nm", 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8n", "yolo11n", "yolov8n-seg", "yolo11n-seg"])
def test_prune_save_load_export_n(name: str, tmp_path: Path) -> None:
    result = prune_roundtrip(name, tmp_path)
    export_check(result["pruned"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8s", "yolo11s", "yolov8s-seg", "yolo11s-seg"])
def test_prune_save_load_export_s(name: str, tmp_path: Path) -> None:
    export_check(prune_roundtrip(name, tmp_path)["pruned"], tmp_path)


@pytest.mark.slow
def test_yolo_instance_loads_back_into_yolo_and_predicts_the_same_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model from ``YOLO(...)`` itself: pruned, loaded into a fresh ``YOLO(...).model``; its ``predict``
    gives the unpruned model's boxes, and so does ultralytics' own TorchScript export of it."""
    torch.manual_seed(0)
    original = ultralytics.YOLO("yolov8n.yaml").model.eval()
    zero_half_of_every_bn(original)
    pruned, report = prune_model(original, image(), "fixed")
    assert report.macs_after < report.macs_before
    path = polarprune.save(pruned, tmp_path / "pruned.safetensors")
    loaded = polarprune.load(path, model=ultralytics.YOLO("yolov8n.yaml").model)
    picture = (torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    options = dict(imgsz=SIZE, conf=0.0, max_det=50, verbose=False, device="cpu")
    want = um.to_yolo(original).predict(picture, **options)[0].boxes
    got = um.to_yolo(loaded).predict(picture, **options)[0].boxes
    assert len(want) == 50 and got.xyxy.shape == want.xyxy.shape
    assert torch.allclose(got.xyxy, want.xyxy, atol=1e-3) and torch.equal(got.cls, want.cls)
    assert torch.allclose(got.conf, want.conf, atol=1e-5)
    monkeypatch.chdir(tmp_path)  # ultralytics writes the export next to the working folder
    exported = um.to_yolo(loaded).export(format="torchscript", imgsz=SIZE)
    again = ultralytics.YOLO(exported, task="detect").predict(picture, **options)[0].boxes
    assert torch.allclose(again.xyxy, want.xyxy, atol=1e-3) and torch.equal(again.cls, want.cls)


def sharpened_head(model: nn.Module, factor: float = 30.0) -> nn.Module:
    """The Detect head's output convs' weights times ``factor``: a random YOLO's boxes are then no longer nearly all the
    whole image, so its val predictions differ from image to image."""
    with torch.no_grad():
        for seq in (*model.model[-1].cv2, *model.model[-1].cv3):
            seq[-1].weight.mul_(factor)
    return model


def val_predictions(yolo: Any, data: Path, folder: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """ultralytics' own ``val``: its metrics and its predictions (``save_json``), sorted."""
    import json

    metrics = yolo.val(data=str(data), imgsz=SIZE, batch=4, device="cpu", plots=False, verbose=False, conf=0.001,
                       save_json=True, project=str(folder.parent), name=folder.name, exist_ok=True)
    found = json.loads((folder / "predictions.json").read_text())
    return metrics.results_dict, sorted(found, key=lambda p: (p["image_id"], -p["score"], p["bbox"]))


def top(predictions: list[dict[str, Any]], per_image: int = 10) -> list[dict[str, Any]]:
    """Each image's most confident predictions (``val_predictions`` sorts by image, then score)."""
    kept: list[dict[str, Any]] = []
    for found in predictions:
        if sum(p["image_id"] == found["image_id"] for p in kept) < per_image:
            kept.append(found)
    return kept


@pytest.mark.slow
def test_yolo_val_of_the_loaded_pruned_model_equals_the_unpruned(tmp_path: Path) -> None:
    """ultralytics' own ``val`` of the pruned model, loaded back into a fresh instance and wrapped in ``YOLO``, makes the
    unpruned model's predictions on the same images and the same metrics. (Random weights: the metrics are 0, so the
    predictions are what is compared.)"""
    data = write_yolo_set(tmp_path / "set", n_train=1, n_val=8, size=SIZE)
    torch.manual_seed(0)
    original = sharpened_head(create("yolov8n", num_classes=2).eval())
    zero_half_of_every_bn(original)
    pruned, report = prune_model(original, image(), "fixed")
    loaded = polarprune.load(polarprune.save(pruned, tmp_path / "pruned.safetensors"), model=create("yolov8n", num_classes=2))
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after < report.params_before
    want_metrics, want = val_predictions(um.to_yolo(original), data, tmp_path / "val_unpruned")
    got_metrics, got = val_predictions(um.to_yolo(loaded), data, tmp_path / "val_pruned")
    assert got_metrics == pytest.approx(want_metrics, abs=1e-6)
    assert len(want) > 100 and len({tuple(p["bbox"]) for p in want}) > 5
    assert abs(len(got) - len(want)) <= 0.02 * len(want)  # near-tied boxes at the confidence floor may swap in NMS
    for mine, theirs in zip(top(got), top(want)):
        assert (mine["image_id"], mine["category_id"]) == (theirs["image_id"], theirs["category_id"])
        assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=1e-2) and mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_analysis_halves_share_the_live_tensors() -> None:
    """A trial analysis (sparsity training's target stop) reads the live gammas through the two-conv form."""
    model = create("yolov8n")
    cv1 = model.model[2].cv1
    um.prepare(model)
    half = cv1.bn.num_features // 2
    with torch.no_grad():
        cv1.bn.weight[half - 2:half + 2] = 0.0  # the last two of the first half, the first two of the second
        cv1.conv.weight[half] = 7.0
    block = model.model[2]
    assert block.cv1a.bn.weight[-2:].abs().sum() == 0 and block.cv1b.bn.weight[:2].abs().sum() == 0
    assert torch.all(block.cv1b.conv.weight[0] == 7.0)


def test_bn_names_and_keep_masks_are_the_models_own() -> None:
    """The analysis splits ``cv1`` in two; the BN names and keep masks it gives back are the model's:
    ``cv1.bn`` is regularized, and its mask joins the two halves' masks."""
    from polarprune.pruning import plan_pruning, prunable_bn_names

    torch.manual_seed(0)
    model = create("yolov8n").eval()
    zero_half_of_every_bn(model)
    x = image()
    own = dict(model.named_modules())
    names = prunable_bn_names(model, x)
    assert "model.2.cv1.bn" in names and all(n in own for n in names)
    keep = plan_pruning(model, x, "fixed")
    assert set(keep) <= set(own) and "model.2.cv1.bn" in keep
    pruned, _ = prune_model(model, x, "fixed")
    for name in ("model.2.cv1.bn", "model.12.cv1.bn", "model.21.cv1.bn"):
        assert keep[name].shape == (own[name].num_features,)
        assert int(keep[name].sum()) == pruned.get_submodule(name).num_features


def test_flops_weights_of_a_split_conv_are_the_models_own() -> None:
    from polarprune.pruning.trial import TrialAnalysis

    model = create("yolov8n").eval()
    weights = TrialAnalysis(model, image()).channel_macs()
    assert weights["model.2.cv1.bn"] > 0
    assert not any(".cv1a." in n or ".cv1b." in n for n in weights)
