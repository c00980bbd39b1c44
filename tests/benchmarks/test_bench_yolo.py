"""bench/bench_yolo.py (YOLOv8n on the CIFAR-10 detection set): its pure helpers (stages, the paired bootstrap over
val images, the layers Torch-Pruning keeps), its rendering while stages are pending, done or failed, and a smoke run at a
tiny scale (slow)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import bench_yolo as by  # noqa: E402
import rendering as render  # noqa: E402
from rendering import yolo as ry  # noqa: E402


def tiny_coco() -> dict:
    """Three images: the first with two boxes, the second with one, the third with none."""
    return {"images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 64},
                       {"id": 9, "file_name": "b.jpg", "width": 64, "height": 64},
                       {"id": 11, "file_name": "c.jpg", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [30, 30, 20, 20], "area": 400, "iscrowd": 0},
                            {"id": 3, "image_id": 9, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_models_and_stages_are_listed_in_run_order() -> None:
    assert by.model_names() == ["baseline", "polarization/sparsity", "polarization/pruned", "polarization/finetuned",
                                "l1/sparsity", "l1/pruned", "l1/finetuned", "tp/pruned", "tp/finetuned"]
    assert list(ry.MODELS) == by.model_names()  # the table renders every scored model
    assert by.stage_names() == ["data", "baseline", "polarization/sparsity", "polarization/prune", "polarization/finetune",
                                "l1/sparsity", "l1/prune", "l1/finetune", "tp/prune", "tp/finetune", "evaluate", "latency"]
    status = by.stage_status({"data": {}, "baseline": {"best": "b.pt"}, "tp/prune": {"error": "boom"}})
    assert status["data"] == status["baseline"] == "done" and status["tp/prune"] == "failed"
    assert [s for s, v in status.items() if v == "pending"] == by.stage_names()[2:8] + by.stage_names()[9:]


def test_scores_are_kept_only_once_every_model_is_made_for_good() -> None:
    stages = ["baseline", "polarization/sparsity", "polarization/prune", "polarization/finetune", "l1/sparsity",
              "l1/prune", "l1/finetune"]
    done = {stage: {} for stage in stages}
    assert not by.settled(done)  # Torch-Pruning not run yet
    assert by.settled({**done, "tp/prune": {"error": "x"}, "tp/finetune": {"error": "no model"}})  # its failure is final
    assert not by.settled({**done, "l1/prune": {"error": "missed the target"}, "tp/prune": {}, "tp/finetune": {}})
    assert by.ready("l1/sparsity", done) and not by.ready("l1/pruned", {**done, "l1/prune": {"error": "x"}})


def test_bootstrap_samples_are_paired_and_seeded() -> None:
    first, again = by.bootstrap_samples(5, 4, seed=3), by.bootstrap_samples(5, 4, seed=3)
    assert first == again and len(first) == 4 and all(len(s) == 5 and all(0 <= i < 5 for i in s) for s in first)
    assert by.bootstrap_samples(5, 4, seed=4) != first


def test_resampled_images_get_new_ids_with_copies_of_their_boxes_and_predictions() -> None:
    gt = tiny_coco()
    rows = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},
            {"image_id": 11, "category_id": 2, "bbox": [1, 1, 5, 5], "score": 0.3}]
    new_gt, new_rows = by.resampled(gt, rows, [0, 0, 2])  # image 7 twice, image 11 once, image 9 left out
    assert [i["id"] for i in new_gt["images"]] == [1, 2, 3]
    assert [i["file_name"] for i in new_gt["images"]] == ["a.jpg", "a.jpg", "c.jpg"]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in new_gt["annotations"]] == [(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2)]
    assert [(r["image_id"], r["score"]) for r in new_rows] == [(1, 0.9), (2, 0.9), (3, 0.3)]
    assert gt == tiny_coco() and rows[0]["image_id"] == 7  # the inputs are left as they were


def test_resampling_every_image_once_keeps_the_map() -> None:
    pytest.importorskip("pycocotools")
    from polarprune.data.coco import coco_map

    gt = tiny_coco()
    rows = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},  # right
            {"image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},  # wrong place: category 2 missed
            {"image_id": 9, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.7}]  # right
    whole = coco_map(rows, gt)
    assert whole["map50"] == pytest.approx(0.5, abs=1e-6)  # category 1 found twice (AP 1), category 2 missed (AP 0)
    assert coco_map(*reversed(by.resampled(gt, rows, [0, 1, 2]))) == pytest.approx(whole)
    # only the image whose boxes are all found, twice: AP 1 for category 1; category 2 has no ground truth there
    assert coco_map(*reversed(by.resampled(gt, rows, [1, 1])))["map50"] == pytest.approx(1.0)


def test_percentile_interval_and_paired_differences() -> None:
    assert by.percentile_interval(list(range(101))) == (2, 98)  # 2.5% and 97.5% of 0..100: ranks 2.5 and 97.5, rounded outwards
    assert by.percentile_interval([5.0]) == (5.0, 5.0)
    scores = {"baseline": [0.50, 0.52, 0.48, 0.51], "polarization/pruned": [0.40, 0.41, 0.39, 0.42],
              "l1/pruned": [0.50, 0.53, 0.47, 0.51]}
    pairs = by.comparison_pairs(list(scores))
    assert pairs == [("polarization/pruned", "baseline"), ("l1/pruned", "baseline"), ("polarization/pruned", "l1/pruned")]
    diffs = by.paired_differences(scores, pairs)
    pol = diffs["polarization/pruned - baseline"]
    assert pol["mean"] == pytest.approx(-0.0975) and pol["ci95"] == pytest.approx([-0.11, -0.09]) and pol["beyond_noise"]
    l1 = diffs["l1/pruned - baseline"]
    assert l1["ci95"] == pytest.approx([-0.01, 0.01]) and not l1["beyond_noise"]  # the interval holds 0: within noise
    assert by.comparison_pairs(["polarization/finetuned", "tp/finetuned"]) == [("polarization/finetuned", "tp/finetuned")]


def test_tp_keeps_the_detect_heads_outputs() -> None:
    pytest.importorskip("ultralytics")
    from polarprune.integrations.ultralytics import build_yolo

    model = build_yolo("yolov8n.yaml", nc=10)
    kept = by.tp_ignored(model)
    head = model.model[-1]
    assert len(kept) == 7 and kept[-1] is head.dfl
    assert {m.out_channels for m in kept[:3]} == {64} and {m.out_channels for m in kept[3:6]} == {10}  # 4 x 16 bins; classes


def test_predictions_are_ultralytics_own(tmp_path: Path) -> None:
    """The benchmark's scorer sees what ultralytics' predict sees on the same model and image: classes, scores and
    boxes (clipped to the image, in pixels, COCO's x, y, w, h; category = class + 1)."""
    pytest.importorskip("ultralytics")
    import numpy as np
    import torch
    from PIL import Image
    from ultralytics import YOLO

    torch.manual_seed(0)
    (tmp_path / "images" / "val").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "val" / "a.png")
    (tmp_path / "val.json").write_text(json.dumps({"images": [{"id": 5, "file_name": "val/a.png", "width": 64, "height": 64}],
                                                   "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    yolo = YOLO("yolov8n.yaml")
    with torch.no_grad():  # a new head's class bias scores every box below 0.001: lift it so there is something to keep
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.add_(6.0)
    rows = by.predictions(yolo.model.float().eval(), {"val_annotations": tmp_path / "val.json", "images": tmp_path / "images"}, 64)
    found = yolo.predict(str(tmp_path / "images" / "val" / "a.png"), imgsz=64, conf=0.001, iou=0.7, max_det=300, verbose=False)[0].boxes
    # the top boxes agree; near the 0.001 floor a few differ (ultralytics' predict runs the fused model: rounding)
    assert len(rows) >= 5 and len(found) >= 5 and {r["image_id"] for r in rows} == {5}
    ours = sorted(rows, key=lambda r: -r["score"])[:5]
    theirs = [(int(c) + 1, float(s), [float(x[0]), float(x[1]), float(x[2] - x[0]), float(x[3] - x[1])])
              for c, s, x in list(zip(found.cls, found.conf, found.xyxy))[:5]]
    assert [r["category_id"] for r in ours] == [t[0] for t in theirs]
    assert [r["score"] for r in ours] == pytest.approx([t[1] for t in theirs], abs=1e-4)
    assert [r["bbox"] for r in ours] == [pytest.approx(t[2], abs=1e-2) for t in theirs]


def _result(**parts: object) -> dict:
    done = {"data": {}, "baseline": {}, **{k: {} for k in parts.pop("stages", [])}}
    return {"status": by.stage_status(done), "prune": parts.pop("prune", {}), "evaluate": parts.pop("evaluate", None),
            "latency": parts.pop("latency", None)}


def test_rendering_says_pending_until_a_stage_is_done(tmp_path: Path) -> None:
    results = render.Results(tmp_path)
    assert "Pending" in ry.yolo_cifar_table(results) and ry.yolo_cifar_status(results) == "every stage is pending"
    (tmp_path / "yolo_cifar.json").write_text(json.dumps(_result()))
    results = render.Results(tmp_path)
    lines = ry.yolo_cifar_table(results).splitlines()
    assert lines[2] == "| baseline |" + " pending |" * 7 and len(lines) == 2 + len(ry.MODELS)  # not scored yet
    assert ry.yolo_cifar_status(results).startswith("done: data, baseline; pending: polarization/sparsity")
    assert "polarization: pending" in ry.yolo_cifar_reading(results)


def test_rendering_states_the_scale_the_run_used(tmp_path: Path) -> None:
    assert ry.yolo_cifar_scale(render.Results(tmp_path)) == ry.SCALE_WHEN_PENDING
    args = argparse.Namespace(smoke=False, target=None, train_images=None, epochs=20, sparsity_epochs=6, finetune_epochs=6,
                              bootstrap=None, lbd=None, polarization_t=None, sparsity_target_latency_ratio=None)
    name, scale = by.chosen_scale(args)
    (tmp_path / "yolo_cifar.json").write_text(json.dumps({**_result(), "scale": dataclasses.asdict(scale), "scale_name": name}))
    assert ry.yolo_cifar_scale(render.Results(tmp_path)) == (
        "3,000 train and 1,000 val canvases of 160 x 160 pixels, 16 to 64 pixels an object; a 20-epoch baseline, "
        "6 sparsity epochs per arm and 6 fine-tuning epochs per pruned model, batch 32; 100 bootstrap resamples "
        "(scale `full, epochs=20, sparsity_epochs=6, finetune_epochs=6`)")


def test_rendering_reads_the_result_file_a_block_names(tmp_path: Path) -> None:
    """A run with its own settings (``--stem``) renders from its own file; the default stem stays pending."""
    args = argparse.Namespace(smoke=False, target=None, train_images=None, epochs=20, sparsity_epochs=10, finetune_epochs=10,
                              bootstrap=20, lbd=0.02, polarization_t=1.8, sparsity_target_latency_ratio=0.5)
    name, scale = by.chosen_scale(args)
    (tmp_path / "yolo_cifar_t18.json").write_text(json.dumps({**_result(), "scale": dataclasses.asdict(scale), "scale_name": name}))
    results = render.Results(tmp_path)
    assert ry.yolo_cifar_scale(results) == ry.SCALE_WHEN_PENDING
    assert ry.yolo_cifar_scale(results, "yolo_cifar_t18").endswith(
        "10 sparsity epochs per arm and 10 fine-tuning epochs per pruned model, batch 32; 20 bootstrap resamples "
        "(scale `full, epochs=20, bootstrap=20, lbd=0.02, t=1.8, sparsity target latency 0.5`)")  # 10 and 10: the defaults
    assert ry.yolo_cifar_status(results, "yolo_cifar_t18").startswith("done: data, baseline; pending: polarization/sparsity")


def test_rendering_a_finished_run_gives_numbers_and_verdicts(tmp_path: Path) -> None:
    def model(m: float) -> dict:
        return {"map50_95": m, "map50": m + 0.2, "macs": 200e6, "params": 1.5e6}

    def pair(mean: float, low: float, high: float) -> dict:
        return {"mean": mean, "ci95": [low, high], "beyond_noise": not low <= 0 <= high}

    evaluate = {"models": {"baseline": model(0.60), "polarization/pruned": model(0.50), "polarization/finetuned": model(0.595),
                           "l1/pruned": model(0.30), "l1/finetuned": model(0.55)},
                "bootstrap": {"pairs": {"polarization/finetuned - baseline": pair(-0.005, -0.012, 0.002),
                                        "l1/finetuned - baseline": pair(-0.05, -0.06, -0.04),
                                        "polarization/pruned - l1/pruned": pair(0.2, 0.18, 0.22),
                                        "polarization/finetuned - l1/finetuned": pair(0.045, 0.03, 0.06)}}}
    latency = {"onnxruntime": {"baseline": {"median_ms": 10.0, "ratio_to_baseline": 1.0},
                               "polarization/finetuned": {"median_ms": 5.1, "ratio_to_baseline": 0.51}}, "eager": {}}
    prune = {"polarization": {"latency": {"measured_latency_ratio": 0.52}}, "tp": {"error": "RuntimeError: chunk"}}
    (tmp_path / "yolo_cifar.json").write_text(json.dumps(_result(
        stages=by.stage_names()[2:8] + ["tp/prune", "tp/finetune", "evaluate", "latency"], prune=prune, evaluate=evaluate,
        latency=latency)))
    results = render.Results(tmp_path)
    table = ry.yolo_cifar_table(results)
    assert "| polarization, pruned + fine-tuned | 59.5 | -0.5 [-1.2, +0.2] | 79.5 | 200 | 1.50 | 5.1 (0.51x) | pending |" in table
    assert "| Torch-Pruning GroupNorm, pruned | failed: RuntimeError: chunk |" in table
    reading = ry.yolo_cifar_reading(results)
    assert "polarization meets it (-0.5 points at 0.51x the baseline's onnxruntime latency)" in reading  # side by side
    assert "L1 misses it (-5.0 points)" in reading  # no latency figure: mAP alone decides
    slow = {**latency, "onnxruntime": {**latency["onnxruntime"], "polarization/finetuned": {"median_ms": 6.0, "ratio_to_baseline": 0.6}}}
    (tmp_path / "yolo_cifar.json").write_text(json.dumps({**json.loads((tmp_path / "yolo_cifar.json").read_text()), "latency": slow}))
    assert "polarization misses it (-0.5 points at 0.60x" in ry.yolo_cifar_reading(render.Results(tmp_path))  # 0.6 > 0.5 + 0.05
    assert "- At the prune step, polarization is ahead of L1 (+20.0 points, 95% CI [+18.0, +22.0])." in reading
    assert "- After fine-tuning, polarization is ahead of L1 (+4.5 points, 95% CI [+3.0, +6.0])." in reading
    assert "- Polarization against Torch-Pruning GroupNorm at the prune step: no model (its stage failed)." in reading


@pytest.mark.slow
def test_smoke_run_writes_every_stage_and_resumes(tmp_path: Path) -> None:
    """The whole script at a tiny scale (16 images, imgsz 64, 1 epoch a stage): every model scored on the same val
    images, the pruned ones smaller, then a second run reuses every stage."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, str(REPO / "bench" / "bench_yolo.py"), "--smoke", "--allow-dirty", "--workdir", str(tmp_path / "w")]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=1500)
    result = json.loads((tmp_path / "w" / "yolo_cifar.json").read_text())
    assert set(result["status"].values()) <= {"done", "failed"} and result["status"]["polarization/finetune"] == "done"
    models = result["evaluate"]["models"]
    assert models["polarization/pruned"]["macs"] < models["baseline"]["macs"] > models["l1/pruned"]["macs"]
    assert all(0.0 <= m["map50_95"] <= m["map50"] <= 1.0 for m in models.values())
    assert result["evaluate"]["bootstrap"]["images"] == 8 and "polarization/pruned - l1/pruned" in result["evaluate"]["bootstrap"]["pairs"]
    assert set(result["latency"]["onnxruntime"]) >= {"baseline", "polarization/finetuned", "l1/finetuned"}
    stamp = (tmp_path / "w" / "evaluate.json").stat().st_mtime_ns
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    assert (tmp_path / "w" / "evaluate.json").stat().st_mtime_ns == stamp  # reused, not run again


def test_scale_overrides_are_applied_and_named() -> None:
    def parse(*extra: tuple[str, int]) -> tuple[str, by.Scale]:
        given = {"smoke": False, "target": None, "train_images": None, "epochs": None, "sparsity_epochs": None,
                 "finetune_epochs": None, "bootstrap": None, "lbd": None, "polarization_t": None,
                 "sparsity_target_latency_ratio": None, **dict(extra)}
        return by.chosen_scale(argparse.Namespace(**given))

    assert parse() == ("full", by.SCALES["full"])
    name, scale = parse(("epochs", 20), ("train_images", 3000), ("finetune_epochs", 6))
    assert name == "full, epochs=20, finetune_epochs=6"  # the default train_images is no change
    assert (scale.epochs, scale.finetune_epochs, scale.train_images, scale.sparsity_epochs) == (20, 6, 3000, 10)
    name, _ = parse(("sparsity_epochs", 4), ("lbd", 0.02), ("polarization_t", 1.8), ("sparsity_target_latency_ratio", 0.5))
    assert name == "full, sparsity_epochs=4, lbd=0.02, t=1.8, sparsity target latency 0.5"


def test_sparsity_sections_follow_the_command_line() -> None:
    """Defaults: LAMBDA per arm, no t, no target; overrides: one lambda for both arms, t for polarization only, and
    the latency target measured like the prune step's (onnxruntime, batch 1, the benchmark's threads)."""
    default = by.Regularization()
    assert by.sparsity_section("polarization", default, 1) == {"regularizer": "polarization", "lbd": by.LAMBDA["polarization"]}
    assert by.sparsity_section("l1", default, 1) == {"regularizer": "l1", "lbd": by.LAMBDA["l1"]}
    tuned = by.Regularization(lbd=0.02, polarization_t=1.8, target_latency_ratio=0.5)
    target = {"target_latency_ratio": 0.5, "latency_runtime": "onnxruntime", "latency_batch": 1, "latency_threads": 2}
    assert by.sparsity_section("polarization", tuned, 2) == {"regularizer": "polarization", "lbd": 0.02, "t": 1.8, **target}
    assert by.sparsity_section("l1", tuned, 2) == {"regularizer": "l1", "lbd": 0.02, **target}
    cfg = by.pipeline_config(Path("/w"), by.SCALES["full"], Path("/w/polarization"), "polarization", 2, reg=tuned)
    assert (cfg.sparsity.lbd, cfg.sparsity.t, cfg.sparsity.target_latency_ratio, cfg.sparsity.latency_runtime) == (0.02, 1.8, 0.5, "onnxruntime")


def test_top_per_image_keeps_the_map_and_the_bootstrap_workers_agree_with_one_process() -> None:
    """COCOeval reads each image's best 100 detections only, so dropping the rest keeps the mAP; the forked
    bootstrap gives the same mAPs as evaluating the resamples one by one."""
    pytest.importorskip("pycocotools")
    from polarprune.data.coco import coco_map

    rng = random.Random(0)
    gt = {"images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in range(4)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": k, "image_id": k % 4, "category_id": 1 + k % 2, "bbox": [4.0 * (k % 5), 8.0, 20.0, 24.0],
                           "area": 480.0, "iscrowd": 0} for k in range(10)]}
    rows = [{"image_id": i, "category_id": rng.choice((1, 2)), "score": rng.random(),
             "bbox": [rng.uniform(0, 30), rng.uniform(0, 30), rng.uniform(8, 30), rng.uniform(8, 30)]}
            for i in range(4) for _ in range(150)]
    rows = [{**r, "category_id": 1} for r in rows[:300]] + rows[300:]  # images 0 and 1: 150 of one category
    top = by.top_per_image(rows)
    assert [sum(r["image_id"] == i for r in top) for i in range(2)] == [100, 100] and len(top) == 500
    assert coco_map(top, gt) == coco_map(rows, gt) and coco_map(rows, gt)["map50_95"] > 0
    assert coco_map(sorted(rows, key=lambda r: -r["score"])[:380], gt) != coco_map(rows, gt)  # any other cut changes it
    samples = by.bootstrap_samples(4, 3)
    maps = by.bootstrap_maps(gt, {"m": top}, samples)
    assert maps["m"] == [coco_map(*reversed(by.resampled(gt, top, picks)))["map50_95"] for picks in samples]


def test_sparsity_traces_are_recorded_and_rendered(tmp_path: Path) -> None:
    """The stage's per-epoch rows keep the tuning keys only; the renderer gives one row per arm and epoch, "-" where
    a key was not logged (after the target stop the trial no longer runs)."""
    record = {"last": "x.pt", "target_reached": True, "epochs": [
        {"epoch": 1.0, "lambda": 0.02, "gamma_frac_below_0.01": 0.0, "gamma_mean": 0.8, "trial_macs_ratio_grad": 1.0,
         "trial_latency_ratio_grad": 1.0, "ema_gamma_mean": 0.8},
        {"epoch": 2.0, "lambda": 0.0, "gamma_frac_below_0.01": 0.788, "gamma_mean": 0.036, "trial_macs_ratio_grad": 0.268}]}
    trace = by.sparsity_trace(record)
    assert trace == {"target_reached": True, "epochs": [
        {"epoch": 1.0, "lambda": 0.02, "gamma_frac_below_0.01": 0.0, "gamma_mean": 0.8, "trial_macs_ratio_grad": 1.0,
         "trial_latency_ratio_grad": 1.0},
        {"epoch": 2.0, "lambda": 0.0, "gamma_frac_below_0.01": 0.788, "gamma_mean": 0.036, "trial_macs_ratio_grad": 0.268}]}
    assert by.sparsity_trace(None) is None and by.sparsity_trace({"error": "boom"}) is None
    (tmp_path / "yolo_cifar.json").write_text(json.dumps({**_result(), "sparsity": {"polarization": trace, "l1": None}}))
    lines = ry.yolo_cifar_sparsity(render.Results(tmp_path)).splitlines()
    assert lines[2] == "| polarization | 1 | 0.02 | 0.000 | 0.800 | 1.000 | 1.000 |"
    assert lines[3] == "| polarization | 2 | 0 | 0.788 | 0.036 | 0.268 | - |"
    assert len(lines) == 4
    (tmp_path / "yolo_cifar.json").write_text(json.dumps(_result()))
    assert ry.yolo_cifar_sparsity(render.Results(tmp_path)).startswith("Not recorded")
