"""torchvision detection and segmentation families: pruned (``fixed``, half of every BN's gamma and
beta zeroed), saved, loaded into a fresh instance; the final outputs equal the unpruned model's.

A detector is pruned through its traced form (the transformed batch through the backbone): the
pruned backbone's feature maps must equal the original's within 1e-5 of their scale, and the full
detector's final detections (boxes, scores, labels, masks, keypoints) must match. The pruned part of every
family (a detector's backbone, a segmenter whole) exports to ONNX, checked in onnxruntime. The small
MobileNet families run in the fast layer; the ResNet-50 and VGG ones are slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import detection

import polarprune
from polarprune.errors import PolarpruneError
from polarprune.models import torchvision_detection as tvd
from polarprune.pruning import prune_model
from polarprune.pruning.api import channel_groups
from prune_roundtrip import TOLERANCE, zero_half_of_every_bn

FAST = {"fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
        "deeplabv3_mobilenet_v3_large"}
# families whose every BatchNorm channel is tied to an output, or that have none: nothing to remove
NOTHING_TO_PRUNE = {"ssd300_vgg16": "VGG-16 without BatchNorm: no gamma to prune by"}
NUM_CLASSES = 5


def family_params() -> list[Any]:
    names = [*tvd.DETECTION_NAMES, *tvd.SEGMENTATION_NAMES]
    return [pytest.param(n, marks=()) if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


# fewer proposals and detections than torchvision's defaults (1000 and 100): the RoI heads of the
# ResNet-50 R-CNNs (Keypoint R-CNN's above all) would otherwise dominate the tests' time
RCNN_TEST_OPTIONS = {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 20}


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    options = RCNN_TEST_OPTIONS if tvd.DETECTION_NAMES.get(name, (None,))[0] in (detection.FasterRCNN, detection.MaskRCNN,
                                                                                  detection.KeypointRCNN) else {}
    return polarprune.models.create(name, num_classes=NUM_CLASSES, **options).eval()


def example(name: str, model: nn.Module) -> Any:
    entry = polarprune.models.get_entry(name)
    assert entry is not None and entry.input_size is not None
    if entry.example_input is not None:
        return entry.example_input(model, entry.input_size)
    return torch.rand(2, 3, entry.input_size, entry.input_size, generator=torch.Generator().manual_seed(1))


def scale_of(tensors: list[Tensor]) -> float:
    return max(1.0, max(float(t.abs().max()) for t in tensors if t.numel()))


def assert_close(a: list[Tensor], b: list[Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if x.numel())
    assert diff <= TOLERANCE * scale_of(a), diff
    return diff


def matched(reference: dict[str, Tensor], got: dict[str, Tensor]) -> Tensor:
    """For each reference detection, the index of the same detection in ``got`` (nearest box of the same
    label and score): the order of detections with equal scores is not defined."""
    cost = torch.cdist(reference["boxes"], got["boxes"], p=1) + 1e6 * (reference["labels"][:, None] != got["labels"][None])
    cost = cost + 1e3 * (reference["scores"][:, None] - got["scores"][None]).abs()
    order = []
    for row in cost:  # greedy, one to one: equal duplicates (same box, label and score) pair up in any order
        row = row.clone()
        row[order] = float("inf")
        order.append(int(row.argmin()))
    return torch.tensor(order, dtype=torch.long)


def above_cut(detections: dict[str, Tensor], cut: float) -> dict[str, Tensor]:
    keep = detections["scores"] > cut
    return {key: value[keep] for key, value in detections.items()}


def score_cut(scores: Tensor, gap: float = 1e-4) -> float:
    """A score between the lowest kept detections and the rest, in a gap wider than rounding noise
    (the lowest such gap): detections above it are the same however the ties below are broken."""
    ordered = scores.sort(descending=True).values
    wide = ((ordered[:-1] - ordered[1:]) > gap).nonzero().flatten()
    if not len(wide):
        return float("-inf") if len(scores) else 0.0
    last = int(wide[-1])
    return float(ordered[last] + ordered[last + 1]) / 2


def assert_same_detections(reference: list[dict[str, Tensor]], got: list[dict[str, Tensor]]) -> None:
    """Same detections, apart from those tied with the lowest kept score: which of the tied candidates
    fill the last places of the top-k is not defined (a random head scores many alike)."""
    assert len(reference) == len(got)
    for ref, out in zip(reference, got):
        assert set(ref) == set(out) and ref["boxes"].shape == out["boxes"].shape
        cut = score_cut(ref["scores"])
        ref, out = above_cut(ref, cut), above_cut(out, cut)
        assert len(ref["scores"]) == len(out["scores"]) > 0
        order = matched(ref, out)
        assert sorted(order.tolist()) == list(range(len(order)))  # one to one
        for key in ref:
            assert_close([ref[key].float()], [out[key][order].float()])


def head_outputs(model: nn.Module, batch: Tensor) -> list[Tensor]:
    """The raw outputs of a detector's heads on its transformed batch (the RPN's for a two-stage one).
    A one-stage detector with random weights scores thousands of anchors almost alike, so which of
    them survive its top-k and NMS depends on rounding: its raw head outputs are compared instead
    of its final detections (those of the two-stage ones are compared too)."""
    with torch.no_grad():
        features = tvd.raw_features(model, batch)
        return list(tvd.tensors_of(model.rpn.head(features) if hasattr(model, "rpn") else model.head(features)))


def final_outputs(model: nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return model(inputs)


def check_family(name: str, tmp_path: Path) -> dict[str, float]:
    original = build(name, 0)
    zero_half_of_every_bn(original)
    inputs = example(name, original)
    if name not in FAST and isinstance(inputs, list):
        inputs = inputs[:1]  # one image for the large detectors (the fast ones check a batch of two)
    pruned, report = prune_model(original, inputs, "fixed")
    path = polarprune.save(pruned, tmp_path / "pruned.safetensors")
    fresh = build(name, 123)  # other random weights: everything must come from the file
    loaded = polarprune.load(path, model=fresh)
    assert loaded is fresh and type(loaded) is type(original) and not loaded.training
    part_before, part_after = tvd.exportable_part(original), tvd.exportable_part(loaded)
    probe = tvd.detector_batch(original, inputs) if isinstance(original, tvd.DETECTORS) else inputs
    with torch.no_grad():
        assert_close([part_before(probe)], [part_after(probe)])
    before, after = final_outputs(original, inputs), final_outputs(loaded, inputs)
    if isinstance(original, tvd.DETECTORS):
        assert_close(head_outputs(original, probe), head_outputs(loaded, probe))
        if hasattr(original, "rpn"):
            assert_same_detections(before, after)
    else:
        assert_close(list(tvd.tensors_of(before)), list(tvd.tensors_of(after)))
    if name in NOTHING_TO_PRUNE:
        assert report.macs_after == report.macs_before
    else:
        assert report.macs_after < report.macs_before
    export_part(name, loaded, tmp_path)
    return {"macs_before": report.macs_before, "macs_after": report.macs_after}


EXPORT_SIDE = 64  # the exported part takes any size; a small one keeps the test cheap (fixed-size models: their own)


def export_part(name: str, pruned: nn.Module, tmp_path: Path) -> None:
    """The pruned part (a detector's backbone with its FPN, a segmenter whole) exports to ONNX, and onnxruntime
    computes every output the same as PyTorch (``export_model``'s check over all outputs)."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the deploy extra is not installed")
    from polarprune.deploy.export import export_model

    side = tvd.FIXED_SIDES.get(name, EXPORT_SIDE)
    report = export_model(pruned, tmp_path / "part.onnx", input_size=side, batch=1)  # the entry's for_export: the part
    assert report.max_abs_diff <= report.tolerance * report.output_scale and (tmp_path / "part.onnx").stat().st_size > 0
    assert report.note == (tvd.DETECTOR_EXPORT_NOTE if isinstance(pruned, tvd.DETECTORS) else tvd.SEGMENTER_EXPORT_NOTE)
    with torch.no_grad():  # the file computes the part: its output size is the flattened feature maps'
        want = tvd.exportable_part(pruned)(torch.zeros(1, 3, side, side))
    from polarprune.deploy import load_artifact

    assert load_artifact(tmp_path / "part.onnx", "onnx")(torch.zeros(1, 3, side, side)).shape == want.shape


@pytest.mark.parametrize("name", family_params())
def test_family_prunes_saves_and_loads(name: str, tmp_path: Path) -> None:
    check_family(name, tmp_path)


def test_every_family_is_registered_with_its_task() -> None:
    tasks = {e.name: e.task for e in tvd.entries()}
    assert tasks == {**{n: "detection" for n in tvd.DETECTION_NAMES}, **{n: "segmentation" for n in tvd.SEGMENTATION_NAMES}}
    assert set(tvd.DETECTION_NAMES) | set(tvd.SEGMENTATION_NAMES) <= set(polarprune.models.list_models())


def test_export_command_on_a_pruned_detector_file_writes_its_part_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the deploy extra is not installed")
    from polarprune.cli import main

    model = build("lraspp_mobilenet_v3_large", 0)
    zero_half_of_every_bn(model)
    pruned, _ = prune_model(model, example("lraspp_mobilenet_v3_large", model), "fixed")
    source = polarprune.save(pruned, tmp_path / "pruned.safetensors")
    assert main(["export", str(source), "--format", "onnx", "--out", str(tmp_path / "seg.onnx"), "--input-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'seg.onnx'} (onnx") and lines[-1] == f"note: {tvd.SEGMENTER_EXPORT_NOTE}"


def test_a_tensor_given_to_a_detector_names_the_expected_form() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_fpn", 0)
    with pytest.raises(PolarpruneError, match=r"^FasterRCNN takes a list of 3xHxW image tensors .*\(1, 3, 64, 64\)"):
        prune_model(model, torch.rand(1, 3, 64, 64), "fixed")
    with pytest.raises(PolarpruneError, match=r"got an item \(1, 64, 64\)"):
        prune_model(model, [torch.rand(1, 64, 64)], "fixed")


def test_the_traced_form_is_undone_after_pruning() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_fpn", 0)
    zero_half_of_every_bn(model)
    pruned, report = prune_model(model, example("fasterrcnn_mobilenet_v3_large_fpn", model), "fixed")
    assert type(pruned) is type(model)
    assert [n for n in report.notes if n.startswith("left whole: ")] == [f"left whole: {t}" for t in tvd.DETECTION_KEPT]
    assert not any(isinstance(m, tvd.ThawedBatchNorm2d) for m in pruned.modules())


def test_fpn_outputs_stay_whole_and_the_body_is_pruned() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_fpn", 0)
    groups = channel_groups(model, example("fasterrcnn_mobilenet_v3_large_fpn", model))
    whole = [g for g in groups if not g.prunable]
    fpn_outputs = [g for g in whole if g.name.startswith("backbone.fpn.layer_blocks.")]  # named by their root conv
    assert len(fpn_outputs) == len(model.backbone.fpn.layer_blocks)  # one per level
    assert all(g.reason == "reaches the model output" for g in fpn_outputs)
    prunable = [g for g in groups if g.prunable]
    assert prunable and all(bn.startswith("backbone.body.") for g in prunable for bn in g.bn_names)
    # the FPN's lateral convs read pruned widths: a body output group holds an fpn.inner_blocks input
    assert any(it.module_name.startswith("backbone.fpn.inner_blocks.") for g in prunable for it in g.items)


def test_frozen_batchnorm_is_pruned_and_frozen_again(tmp_path: Path) -> None:
    """A pretrained detector's FrozenBatchNorm2d (here: every BatchNorm of a built detector frozen, as
    torchvision builds them when weights are given) prunes like a BatchNorm and comes back frozen,
    with the same detections, and loads into a fresh frozen instance."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    def to_frozen(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(bn, key).detach())
        return frozen

    def frozen_detector(seed: int) -> nn.Module:
        model = build("fasterrcnn_mobilenet_v3_large_fpn", seed)
        del model.polarprune_spec  # a plain torchvision instance, as a user would build it
        assert tvd._replace_modules(model, nn.BatchNorm2d, to_frozen)
        return model

    original = frozen_detector(0)
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, FrozenBatchNorm2d):
                half = module.weight.numel() // 2
                module.weight[:half] = 0
                module.bias[:half] = 0
    images = tvd.detector_example(original, 160)
    pruned, report = prune_model(original, images, "fixed")
    assert report.macs_after < report.macs_before
    frozen = [m for m in pruned.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(type(m) is FrozenBatchNorm2d for m in frozen)
    loaded = polarprune.load(polarprune.save(pruned, tmp_path / "p.safetensors"), model=frozen_detector(5))
    assert_same_detections(final_outputs(original, images), final_outputs(loaded, images))


@pytest.mark.slow
def test_a_fresh_process_lists_the_families() -> None:
    """``list_models`` registers torchvision's families before it lists (no earlier lookup needed)."""
    import subprocess
    import sys

    code = "import polarprune.models as m; print(','.join(m.list_models()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    listed = set(done.stdout.strip().split(","))
    assert set(tvd.DETECTION_NAMES) | set(tvd.SEGMENTATION_NAMES) <= listed and "resnet50" in listed


@pytest.mark.slow
def test_the_whole_pruned_faster_rcnn_exports_to_onnx(tmp_path: Path) -> None:
    """The full detector (transform, post-processing, NMS) with its pruned backbone, through torch's
    TorchScript-based ONNX exporter (opset 11, the one torchvision's detection export uses), runs in
    onnxruntime with the same detections as PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    name = "fasterrcnn_mobilenet_v3_large_fpn"
    original = build(name, 0)
    zero_half_of_every_bn(original)
    images = example(name, original)[:1]
    pruned, _ = prune_model(original, images, "fixed")
    path = tmp_path / "detector.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(pruned, (images,), str(path), dynamo=False, opset_version=11,
                          input_names=["image"], output_names=["boxes", "labels", "scores"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, labels, scores = session.run(None, {"image": images[0].numpy()})
    got = [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}]
    assert_same_detections(final_outputs(original, images), got)
