"""YOLOv8n on the CIFAR-10 detection set: polarization against L1, pruned to half the onnxruntime latency.

Protocol (issue 29, point 5), every stage run by polarprune's ultralytics pipeline
(``polarprune.integrations.ultralytics``):

1. ``data``: ``make_detection_set`` from the shared CIFAR-10 archive (train canvases from CIFAR's train
   images, val canvases from its test images), square canvases of ``imgsz`` pixels.
2. ``baseline``: ultralytics trains YOLOv8n from its YAML (random start, SGD).
3. For each arm (``polarization``, ``l1``): a sparsity stage of the same number of epochs from the baseline's
   last epoch (no target stop, so both stages have the same length), then ``latency-target`` pruning to the
   same measured onnxruntime latency cut (batch 1, ``--threads`` threads, ``round_to: auto``), then the
   same fine-tuning.
4. ``tp``: Torch-Pruning's route as the anchor: its ``GroupNormPruner`` (``GroupMagnitudeImportance(p=2)``,
   uniform ratio, the Detect head's output convs and DFL ignored) on the baseline, with each C2f's chunked first
   conv given to it as two convs (its YOLOv8 example's route; here polarprune's own YOLO adapter does the
   rewrite and joins the halves again afterwards), its ratio bisected until
   the measured onnxruntime latency cut matches the same target, then the same fine-tuning. Its own sparsity
   training is not run (it would need its ``regularize`` inside ultralytics' step). A failure is recorded as
   its one line and rendered as such.
5. ``evaluate``: every model scored by the same code on the same val images: forward at ``imgsz``, ultralytics'
   NMS (conf 0.001, IoU 0.7), pycocotools' mAP50-95 and mAP50. The models of a training are its ``last.pt``
   (no selection on the val images); the prune step's input is the sparsity stage's ``last.pt`` (its EMA).
   Noise: a paired bootstrap over val images (the same resampled images for every model), 95% intervals
   of each model's difference to the baseline,
   and of polarization's to L1's and Torch-Pruning's.
6. ``latency``: the baseline and the fine-tuned models side by side in onnxruntime and eager (interleaved
   rounds, batch 1, ``--threads``), MACs and parameters.

Every stage is cached in ``--workdir`` (outside the repository): re-running the same command continues
where it stopped. The result file is written after every completed stage; stages not yet run are
``pending`` in it and in BENCHMARKS.md.

Run (full scale: 80 training epochs in all, estimated 3.5-5 hours on an otherwise quiet 2-core CPU, longer while
other jobs share it; the first ``latency-target`` prune also builds onnxruntime's per-layer latency tables, cached
per machine)::

    YOLO_OFFLINE=1 python bench/bench_yolo.py --workdir ~/polarprune-bench/yolo_cifar

The arms' sparsity settings default to ``LAMBDA`` with polarization's default t (1.0) and no target;
``--lbd``, ``--polarization-t`` and ``--sparsity-target-latency-ratio`` change them (the run's name says so), and
``--stem`` gives such a run its own result files, e.g. (reusing the first run's data, baseline and Torch-Pruning
prune through links in the new workdir)::

    python bench/bench_yolo.py --workdir ~/polarprune-bench/yolo_cifar_t18 --epochs 20 --sparsity-epochs 10 \
        --finetune-epochs 10 --lbd 0.02 --polarization-t 1.8 --sparsity-target-latency-ratio 0.5 --stem yolo_cifar_t18

``--smoke``: a tiny scale (16 images, imgsz 64, 1 epoch per stage) that checks the script's logic; its
result goes to the workdir, never to ``bench/results``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("YOLO_OFFLINE", "1")

from common import RESULTS_DIR, add_provenance_options, data_sizes, provenance, provenance_markdown, write_results  # noqa: E402

STEM = "yolo_cifar"
ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.gz")
ARMS = ("polarization", "l1")
OVERRIDABLE = ("train_images", "epochs", "sparsity_epochs", "finetune_epochs", "bootstrap")  # the scale's fields the command line sets
PENDING = "pending"


@dataclass(frozen=True)
class Scale:
    """How big a run is: data, image size, epochs per stage, noise and latency effort."""

    train_images: int
    val_images: int
    imgsz: int
    min_object: int
    max_object: int
    epochs: int
    sparsity_epochs: int
    finetune_epochs: int
    batch: int
    bootstrap: int
    latency_rounds: int
    tp_tries: int
    target: float  # the cut every pruned model aims at
    measured: bool  # True: the cut is of measured onnxruntime latency; False (smoke): of MACs, which noise cannot miss


SCALES = {
    # 160 px canvases of 1-6 CIFAR objects (16-64 px). A forward and backward of YOLOv8n on 32 such images took
    # 0.55 s on 2 cores here: with data loading, the loss and validation, about 2-3 minutes an epoch, 80 epochs in all
    "full": Scale(train_images=3000, val_images=1000, imgsz=160, min_object=16, max_object=64, epochs=30,
                  sparsity_epochs=10, finetune_epochs=10, batch=32, bootstrap=100, latency_rounds=15, tp_tries=6,
                  target=0.5, measured=True),
    "smoke": Scale(train_images=16, val_images=8, imgsz=64, min_object=12, max_object=32, epochs=1,
                   sparsity_epochs=1, finetune_epochs=1, batch=8, bootstrap=5, latency_rounds=3, tp_tries=2,
                   target=0.3, measured=False)  # at 64 px a latency cut is noise: the smoke cuts MACs,
}
# lambda per arm: docs/yolo.md's starting points (ultralytics' summed loss, about 64x a mean-loss lambda)
# lambda per arm, the same for both: at 5e-3 (polarization) and 1e-3 (L1), 4 sparsity epochs with ultralytics' 3-epoch
# warm-up left every gamma where it was (mean 0.97, none below 0.01), and the pruned model lost nearly all its mAP.
# The penalty moves a gamma by about lambda * (t + 1) * lr / (1 - momentum) per optimizer step (47 steps an epoch
# here: batch 32, nbs 64), so 4 epochs at a mean lr near 0.005 move a low gamma by about 30 x lambda: 0.05 can take
# it from 1 to 0 where the loss does not hold it up.
LAMBDA = {"polarization": 0.05, "l1": 0.05}
TRAIN_ARGS = {"optimizer": "SGD", "lr0": 0.01, "plots": False, "seed": 0, "amp": False}
# the stages after the baseline continue a trained model: no warm-up from lr 0 (ultralytics' default is 3 epochs)
ARM_TRAIN_ARGS = {**TRAIN_ARGS, "warmup_epochs": 0}


# ----------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Regularization:
    """The arms' sparsity settings: lambda for both arms (None: ``LAMBDA``), polarization's t (None: the
    regularizer's default, 1.0) and the predicted onnxruntime latency ratio (batch 1) at which lambda drops to 0
    for the rest of the stage (None: no target; either way both stages run all their epochs)."""

    lbd: float | None = None
    polarization_t: float | None = None
    target_latency_ratio: float | None = None

    def label(self) -> str:
        """The settings that differ from the defaults, for the run's name ("" when none does)."""
        parts = [f"lbd={self.lbd}" if self.lbd is not None else "",
                 f"t={self.polarization_t}" if self.polarization_t is not None else "",
                 f"sparsity target latency {self.target_latency_ratio}" if self.target_latency_ratio is not None else ""]
        return "".join(f", {part}" for part in parts if part)


def sparsity_section(regularizer: str, reg: Regularization, threads: int) -> dict[str, Any]:
    """An arm's sparsity section: its regularizer at ``reg``'s lambda (and t for polarization), with the latency
    target (measured in onnxruntime at batch 1 and ``threads``, like the prune step's) when ``reg`` has one."""
    section: dict[str, Any] = {"regularizer": regularizer, "lbd": LAMBDA[regularizer] if reg.lbd is None else reg.lbd}
    if regularizer == "polarization" and reg.polarization_t is not None:
        section["t"] = reg.polarization_t
    if reg.target_latency_ratio is not None:
        section.update(target_latency_ratio=reg.target_latency_ratio, latency_runtime="onnxruntime", latency_batch=1,
                       latency_threads=threads)
    return section


def regularization(args: argparse.Namespace) -> Regularization:
    """The command line's sparsity settings."""
    return Regularization(args.lbd, args.polarization_t, args.sparsity_target_latency_ratio)


def model_names(arms: Sequence[str] = ARMS) -> list[str]:
    """Every scored model, in table order: the baseline, then per arm its sparsity, pruned and fine-tuned model,
    then Torch-Pruning's pruned and fine-tuned model."""
    names = ["baseline"]
    for arm in (*arms, "tp"):
        names += [f"{arm}/sparsity"] if arm != "tp" else []
        names += [f"{arm}/pruned", f"{arm}/finetuned"]
    return names


def stage_names(arms: Sequence[str] = ARMS) -> list[str]:
    """The cached stages in the order they run (each writes the result file when done)."""
    stages = ["data", "baseline"]
    for arm in arms:
        stages += [f"{arm}/sparsity", f"{arm}/prune", f"{arm}/finetune"]
    return stages + ["tp/prune", "tp/finetune", "evaluate", "latency"]


SPARSITY_KEYS = ("epoch", "lambda", "gamma_frac_below_0.01", "gamma_mean", "trial_macs_ratio_grad", "trial_latency_ratio_grad")


def sparsity_trace(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What an arm's sparsity stage did epoch by epoch (lambda, the share of gammas near 0, their mean, the trial
    prune's MACs and predicted latency ratios) and whether its target stop fired; None before the stage is done."""
    if record is None or record.get("error"):
        return None
    epochs = [{key: row[key] for key in SPARSITY_KEYS if key in row} for row in record.get("epochs", [])]
    return {"target_reached": bool(record.get("target_reached", False)), "epochs": epochs}


def stage_status(done: Mapping[str, Any], arms: Sequence[str] = ARMS) -> dict[str, str]:
    """``done``, ``failed`` or ``pending`` for every stage (a stage's record with an ``error`` failed)."""
    status = {}
    for stage in stage_names(arms):
        record = done.get(stage)
        status[stage] = PENDING if record is None else ("failed" if isinstance(record, Mapping) and record.get("error") else "done")
    return status


COCO_MAX_DETS = 100  # COCOeval's detections per image and category: only the best 100 of each count


def top_per_image(predictions: Sequence[Mapping[str, Any]], keep: int = COCO_MAX_DETS) -> list[Mapping[str, Any]]:
    """Each (image, category)'s ``keep`` highest-scoring predictions: the only ones COCOeval (maxDets 100, per image
    and category) reads, so the mAP is the same and no bootstrap evaluation carries the rest."""
    groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for row in predictions:
        groups.setdefault((int(row["image_id"]), int(row["category_id"])), []).append(row)
    return [row for rows in groups.values() for row in sorted(rows, key=lambda r: -float(r["score"]))[:keep]]


_BOOTSTRAP: dict[str, Any] = {}  # what the forked bootstrap workers read (set before the pool forks)


def _resampled_map(task: tuple[str, list[int]]) -> float:
    from polarprune.data.coco import coco_map

    name, picks = task
    return coco_map(*reversed(resampled(_BOOTSTRAP["gt"], _BOOTSTRAP["rows"][name], picks)))["map50_95"]


def bootstrap_maps(gt: Mapping[str, Any], rows_of: Mapping[str, Sequence[Mapping[str, Any]]], samples: list[list[int]],
                   workers: int = 2) -> dict[str, list[float]]:
    """Every model's mAP50-95 on every resample, the evaluations spread over ``workers`` forked processes."""
    import multiprocessing

    _BOOTSTRAP.update(gt=gt, rows=rows_of)
    tasks = [(name, picks) for name in rows_of for picks in samples]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        maps = pool.map(_resampled_map, tasks, chunksize=2)
    return {name: maps[i * len(samples):(i + 1) * len(samples)] for i, name in enumerate(rows_of)}


def bootstrap_samples(n: int, reps: int, seed: int = 0) -> list[list[int]]:
    """``reps`` resamples (with replacement) of ``n`` image positions, the same for every model (paired)."""
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(reps)]


def resampled(ground_truth: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]],
              picks: Sequence[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO ground truth and predictions made of the images at ``picks`` (positions in ``ground_truth['images']``,
    repeats allowed): the k-th pick becomes image id k + 1, with copies of its boxes and predictions."""
    images = ground_truth["images"]
    boxes: dict[int, list[Mapping[str, Any]]] = {}
    for ann in ground_truth["annotations"]:
        boxes.setdefault(int(ann["image_id"]), []).append(ann)
    found: dict[int, list[Mapping[str, Any]]] = {}
    for row in predictions:
        found.setdefault(int(row["image_id"]), []).append(row)
    gt = {"images": [], "annotations": [], "categories": list(ground_truth["categories"])}
    rows: list[dict[str, Any]] = []
    for k, pick in enumerate(picks):
        old, new = int(images[pick]["id"]), k + 1
        gt["images"].append({**images[pick], "id": new})
        for ann in boxes.get(old, []):
            gt["annotations"].append({**ann, "id": len(gt["annotations"]) + 1, "image_id": new})
        rows += [{**row, "image_id": new} for row in found.get(old, [])]
    return gt, rows


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` (order statistics, rounded outwards: never narrower)."""
    ordered = sorted(values)
    low = int((1 - level) / 2 * (len(ordered) - 1))
    return ordered[low], ordered[len(ordered) - 1 - low]


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The paired comparisons reported: every model against the baseline, then polarization against L1 and
    against Torch-Pruning at the prune step and after the fine-tuning (where both models are there)."""
    pairs = [(name, "baseline") for name in names if name != "baseline"]
    for kind in ("pruned", "finetuned"):
        for other in ("l1", "tp"):
            a, b = f"polarization/{kind}", f"{other}/{kind}"
            if a in names and b in names:
                pairs.append((a, b))
    return pairs if "baseline" in names else [p for p in pairs if p[1] != "baseline"]


def paired_differences(scores: Mapping[str, Sequence[float]], pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per pair ``(a, b)``, keyed ``"a - b"``: the mean of the per-resample differences (the same resamples for
    both), their central 95% interval and whether it excludes 0."""
    out = {}
    for a, b in pairs:
        diffs = [x - y for x, y in zip(scores[a], scores[b])]
        low, high = percentile_interval(diffs)
        out[f"{a} - {b}"] = {"mean": statistics.fmean(diffs), "ci95": [low, high], "beyond_noise": not low <= 0.0 <= high}
    return out


# ----------------------------------------------------------------------------- stages


def workdir_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def cached(path: Path, run: Callable[[], Any]) -> Any:
    """The stage record at ``path`` when present, else ``run()`` written there atomically (written last)."""
    from polarprune.fileio import atomic_write_json

    previous = workdir_json(path)
    if previous is not None:
        return previous
    record = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return record


def fresh(path: Path, run: Callable[[], Any]) -> Any:
    """``run()`` without caching it at ``path`` (``cached``'s form, for a stage whose inputs may still change)."""
    return run()


def settled(done: Mapping[str, Any]) -> bool:
    """Whether every model is made for good: each ready, except Torch-Pruning's whose failure is cached and final
    (an arm's failed prune is not cached: a re-run tries it again)."""
    return all(ready(name, done) or (name.startswith("tp/") and "tp/finetune" in done) for name in model_names())


def make_data(workdir: Path, scale: Scale, archive: Path) -> dict[str, Any]:
    """The generated detection set (reused when its ``data.yaml`` is there)."""
    from polarprune.data.detection_synth import SynthSpec, make_detection_set

    out = workdir / "data"
    if not (out / "data.yaml").is_file():
        spec = SynthSpec(scale.train_images, scale.val_images, scale.imgsz, seed=0, min_object=scale.min_object,
                         max_object=scale.max_object)
        make_detection_set(archive, out, spec)
    return {"yaml": str(out / "data.yaml"), "val_annotations": str(out / "annotations" / "instances_val.json"),
            "images": str(out / "images")}


def prune_section(scale: Scale, threads: int) -> dict[str, Any]:
    """The prune step's options: ``latency-target`` on measured onnxruntime latency (batch 1, ``threads``), or
    ``flops-target`` where the scale does not measure (the smoke)."""
    if not scale.measured:
        return {"strategy": "flops-target", "target_macs_reduction": scale.target, "round_to": 8}  # no latency tables
    return {"strategy": "latency-target", "target_latency_reduction": scale.target, "runtime": "onnxruntime", "batch": 1,
            "threads": threads}


def pipeline_config(workdir: Path, scale: Scale, out: Path, regularizer: str, threads: int,
                    train_args: Mapping[str, Any] = ARM_TRAIN_ARGS, reg: Regularization = Regularization()) -> Any:
    """The ultralytics pipeline's config of one arm (the baseline's too, with ``TRAIN_ARGS``: it only reads the
    shared keys)."""
    from polarprune.integrations.ultralytics import load_pipeline_config

    return load_pipeline_config({
        "data": str(workdir / "data" / "data.yaml"), "model": "yolov8n.yaml", "task": "detect", "out": str(out),
        "imgsz": scale.imgsz, "batch": scale.batch, "workers": 0, "device": "cpu", "epochs": scale.epochs,
        "sparsity_epochs": scale.sparsity_epochs, "finetune_epochs": scale.finetune_epochs, "stop_on_target": False,
        "sparsity": sparsity_section(regularizer, reg, threads),
        "prune": prune_section(scale, threads),
        "train_args": dict(train_args)})


def run_arm(workdir: Path, scale: Scale, arm: str, baseline: Mapping[str, Any], args: argparse.Namespace,
            done: dict[str, Any], report: Callable[[], None]) -> None:
    """One arm's sparsity, prune and fine-tune stages, each cached in ``workdir/<arm>`` (the pipeline's
    ``result.json``), the result file written after each."""
    import polarprune.integrations.ultralytics as ultra

    cfg = pipeline_config(workdir, scale, workdir / arm, arm, args.threads, reg=regularization(args))
    task = ultra.TASKS["detect"]
    start = baseline["last"]  # the last epoch, as every scored model: nothing selected on the val images
    steps = (("sparsity", lambda: ultra.run_sparsity(cfg, task, start)),
             ("prune", lambda: ultra.run_prune(cfg, task, done[f"{arm}/sparsity"]["last"], workdir / arm / "prune")),
             ("finetune", lambda: ultra.run_finetune(cfg, task, done[f"{arm}/prune"]["weights"])))
    for stage, run in steps:
        done[f"{arm}/{stage}"] = attempt(lambda: ultra.reuse_or_run(workdir / arm / stage, run))
        report()
        if done[f"{arm}/{stage}"].get("error"):
            return  # the arm's later stages stay pending; a re-run tries the failed stage again


def attempt(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``, or its one-line error as the stage's record (not cached: a re-run tries again). A pruning that
    cannot reach the latency target is a result of the benchmark, not a crash of it."""
    from polarprune.errors import PolarpruneError

    try:
        return run()
    except PolarpruneError as exc:
        return {"error": str(exc).splitlines()[0]}


def tp_ignored(model: Any) -> list[Any]:
    """The layers Torch-Pruning must keep whole in a YOLOv8 detector: the Detect head's output convs and its DFL."""
    head = model.model[-1]
    return [*(seq[-1] for seq in head.cv2), *(seq[-1] for seq in head.cv3), head.dfl]


def tp_prune(workdir: Path, scale: Scale, baseline: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Torch-Pruning's GroupNormPruner on the baseline, its ratio bisected to the measured onnxruntime latency cut;
    the pruned model pickled in the workdir (our own file). Any failure: its one line."""
    import torch
    import torch_pruning as tp

    from polarprune.deploy.latency_cost import TOLERANCE, runtime_compare
    from polarprune.errors import first_line
    from polarprune.integrations.ultralytics import example_input, load_trained
    from polarprune.models.ultralytics_models import finish, prepare
    from polarprune.pruning.options import parse_options
    from tp_baselines import bisect_ratio  # the CIFAR benchmark's bisection, on a measured cut here

    base = load_trained(baseline["last"])
    example = example_input(base, scale.imgsz)
    opts = parse_options(options=None, **prune_section(scale, args.threads))
    compare = runtime_compare(opts, (3, scale.imgsz, scale.imgsz)) if scale.measured else macs_ratio(scale.imgsz)

    def pruned_at(ratio: float) -> Any:
        candidate = copy.deepcopy(base)
        prepare(candidate, example)  # TP's YOLOv8 route: each C2f's chunked cv1 as two convs, the head's predictions only
        pruner = tp.pruner.GroupNormPruner(candidate, example, tp.importance.GroupMagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=tp_ignored(candidate))
        pruner.step()
        finish(candidate)  # one cv1 again, split by the widths its halves kept; the head as before
        candidate(example)  # a pruned model that no longer runs fails here, not in the fine-tuning
        return candidate

    try:
        ratio, tried = bisect_ratio(lambda r: 1.0 - compare(base, pruned_at(r)), scale.target, tolerance=TOLERANCE,
                                    high=0.9, max_tries=scale.tp_tries)
        model = pruned_at(ratio)
    except Exception as exc:  # noqa: BLE001 - the anchor's failure is recorded as its one line
        return {"error": f"{type(exc).__name__}: {first_line(exc)}"[:300]}
    path = workdir / "tp" / "tp_pruned.pth"  # not ".pt": ultralytics would read it as its own checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return {"weights": str(path), "pruning_ratio": ratio, "tries": tried,
            "measured_latency_ratio" if scale.measured else "macs_ratio": 1.0 - dict(tried)[ratio]}


def macs_ratio(imgsz: int) -> Callable[[Any, Any], float]:
    """(unpruned, pruned) -> MACs of the pruned over the unpruned model: the smoke's stand-in for measured latency."""
    return lambda unpruned, pruned: size_of(pruned, imgsz)["macs"] / size_of(unpruned, imgsz)["macs"]


def tp_finetune(workdir: Path, scale: Scale, pruned: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The same fine-tuning as the arms' (the pipeline's trainer of a given network) on Torch-Pruning's model."""
    import torch

    import polarprune.integrations.ultralytics as ultra

    if pruned.get("error"):
        return {"error": f"no Torch-Pruning model to fine-tune ({pruned['error']})"}
    cfg = pipeline_config(workdir, scale, workdir / "tp", "l1", args.threads)
    module = torch.load(pruned["weights"], weights_only=False)  # written by tp_prune above
    task = ultra.TASKS["detect"]
    trainer = ultra.stage_trainer(ultra.pruned_trainer(task, module), cfg, "finetune", pruned["weights"], scale.finetune_epochs)
    trainer.train()
    return ultra.train_result(trainer)


# ----------------------------------------------------------------------------- scoring


def load_model(name: str, done: Mapping[str, Any]) -> Any:
    """A scored model by its name in ``model_names`` (float32, eval mode)."""
    import torch

    from polarprune.integrations.ultralytics import load_pruned, load_trained

    arm, _, kind = name.partition("/")
    if name == "baseline":
        return load_trained(done["baseline"]["last"])
    if kind == "sparsity":
        return load_trained(done[f"{arm}/sparsity"]["last"])
    if kind == "finetuned":
        return load_trained(done[f"{arm}/finetune"]["last"])
    path = done[f"{arm}/prune"]["weights"]
    model = torch.load(path, weights_only=False) if arm == "tp" else load_pruned(path)  # tp: our own pickle
    return model.float().eval()


def ready(name: str, done: Mapping[str, Any]) -> bool:
    """Whether the stage that makes model ``name`` is done (and did not fail)."""
    arm, _, kind = name.partition("/")
    stage = "baseline" if name == "baseline" else f"{arm}/{ {'pruned': 'prune', 'finetuned': 'finetune'}.get(kind, kind) }"
    record = done.get(stage)
    return record is not None and not record.get("error")


def predictions(model: Any, data: Mapping[str, Any], imgsz: int, batch: int = 16) -> list[dict[str, Any]]:
    """COCO result rows of ``model`` on every val image (ultralytics' NMS at its val settings), in pixels of the image."""
    import numpy as np
    import torch
    from ultralytics.utils.nms import non_max_suppression

    from polarprune.data.coco import read_coco
    from polarprune.data.loaders import open_rgb

    images = read_coco(data["val_annotations"])["images"]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pics = [open_rgb(Path(data["images"]) / info["file_name"]).resize((imgsz, imgsz)) for info in chunk]
        x = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in pics])).permute(0, 3, 1, 2)
        with torch.no_grad():
            found = non_max_suppression(model(x), conf_thres=0.001, iou_thres=0.7, max_det=300)
        for info, det in zip(chunk, found):
            sx, sy = info["width"] / imgsz, info["height"] / imgsz
            det[:, :4] = det[:, :4].clamp(0, imgsz)  # boxes clipped to the image, as ultralytics' predict and val do
            for x1, y1, x2, y2, score, cls in det.tolist():
                rows.append({"image_id": int(info["id"]), "category_id": int(cls) + 1, "score": float(score),
                             "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy]})
    return rows


def size_of(model: Any, imgsz: int) -> dict[str, int]:
    """MACs and parameters of one forward at ``imgsz`` (polarprune's counter)."""
    from polarprune.flops import count_model

    counted = count_model(model, (3, imgsz, imgsz))
    return {"macs": int(counted.macs), "params": int(counted.params)}


def evaluate(workdir: Path, scale: Scale, data: Mapping[str, Any], done: Mapping[str, Any]) -> dict[str, Any]:
    """mAP50-95, mAP50, MACs and params of every model whose stage is done (each cached in ``workdir/eval``), and
    the paired bootstrap over val images of each model's difference to the baseline."""
    from polarprune.data.coco import read_coco

    gt = read_coco(data["val_annotations"])
    scored: dict[str, Any] = {}
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for name in (n for n in model_names() if ready(n, done)):
        path = workdir / "eval" / f"{name.replace('/', '_')}.json"
        record = cached(path, lambda: score_model(name, done, data, scale.imgsz, gt))
        rows_of[name] = top_per_image(record.pop("predictions"))
        scored[name] = record
    samples = bootstrap_samples(len(gt["images"]), scale.bootstrap)
    boot = bootstrap_maps(gt, rows_of, samples)
    return {"models": scored, "bootstrap": {"reps": scale.bootstrap, "images": len(gt["images"]), "metric": "map50_95",
                                            "pairs": paired_differences(boot, comparison_pairs(list(boot)))}}


def score_model(name: str, done: Mapping[str, Any], data: Mapping[str, Any], imgsz: int, gt: Mapping[str, Any]) -> dict[str, Any]:
    """One model's predictions, mAPs and size."""
    from polarprune.data.coco import coco_map

    model = load_model(name, done)
    rows = predictions(model, data, imgsz)
    return {**coco_map(rows, gt), **size_of(model, imgsz), "predictions": rows}


def latency(scale: Scale, done: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """The baseline and every fine-tuned model side by side (interleaved rounds, batch 1) in onnxruntime and eager."""
    from polarprune.deploy.latency import measure_latency, steady_malloc_here

    names = [n for n in model_names() if (n == "baseline" or n.endswith("/finetuned")) and ready(n, done)]
    models = {n: load_model(n, done) for n in names}
    out: dict[str, Any] = {"threads": threads, "batch": 1, "rounds": scale.latency_rounds}
    for runtime in ("onnxruntime", "eager"):
        with steady_malloc_here():
            result = measure_latency(models, (3, scale.imgsz, scale.imgsz), runtime=runtime, batches=(1,),
                                     rounds=scale.latency_rounds, threads=threads)
        batch = result.batches[0]
        out[runtime] = {n: {"median_ms": batch.median_ms[n], "ratio_to_baseline": batch.ratio_to_first[n]} for n in names}
    return out


# ----------------------------------------------------------------------------- the result file


def assemble(done: Mapping[str, Any], scale_name: str, scale: Scale, args: argparse.Namespace) -> dict[str, Any]:
    """The result record of whatever stages are done (the rest ``pending``)."""
    prov = provenance(0, (*("polarprune", "torch", "torchvision", "torch-pruning"), "ultralytics", "onnxruntime", "pycocotools"),
                      data=data_sizes(scale.train_images, scale.val_images,
                                      f"CIFAR-10 detection canvases ({ARCHIVE.name}, seed 0)"), allow_dirty=args.allow_dirty)
    prunes = {arm: done.get(f"{arm}/prune") for arm in (*ARMS, "tp")}
    reg = regularization(args)
    return {"provenance": prov, "scale_name": scale_name, "scale": asdict(scale),
            "lambda": {arm: sparsity_section(arm, reg, args.threads)["lbd"] for arm in ARMS},
            "polarization_t": reg.polarization_t, "sparsity_target_latency_ratio": reg.target_latency_ratio,
            "train_args": TRAIN_ARGS, "arm_train_args": ARM_TRAIN_ARGS, "target_reduction": scale.target, "target_of": "onnxruntime latency, measured" if scale.measured else "MACs",
            "threads": args.threads,
            "status": stage_status(done), "prune": {arm: p for arm, p in prunes.items() if p is not None},
            "sparsity": {arm: sparsity_trace(done.get(f"{arm}/sparsity")) for arm in ARMS},
            "evaluate": done.get("evaluate"), "latency": done.get("latency"), "workdir": str(args.workdir)}


def chosen_scale(args: argparse.Namespace) -> tuple[str, Scale]:
    """The named scale with the command line's overrides; a scale with overrides is named after them."""
    name = "smoke" if args.smoke else "full"
    changes = {key: getattr(args, key) for key in ("target", *OVERRIDABLE) if getattr(args, key) is not None}
    changes = {key: value for key, value in changes.items() if getattr(SCALES[name], key) != value}
    label = name + "".join(f", {key}={value}" for key, value in changes.items()) + regularization(args).label()
    return label, replace(SCALES[name], **changes)


def markdown(result: Mapping[str, Any]) -> str:
    """A short Markdown page of the result (the table BENCHMARKS.md renders, and the stage status)."""
    lines = ["# YOLOv8n on the CIFAR-10 detection set", "", provenance_markdown(result["provenance"]), "",
             "| stage | status |", "|---|---|"]
    lines += [f"| {stage} | {status} |" for stage, status in result["status"].items()]
    models = (result.get("evaluate") or {}).get("models", {})
    if models:
        lines += ["", "| model | mAP50-95 | mAP50 | MACs (M) | params (K) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {m['map50_95']:.4f} | {m['map50']:.4f} | {m['macs'] / 1e6:.1f} | {m['params'] / 1e3:.1f} |"
                  for n, m in models.items()]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage in order, each cached in the workdir; the result file written after each."""
    import polarprune.integrations.ultralytics as ultra

    scale_name, scale = chosen_scale(args)
    workdir = Path(args.workdir).expanduser().resolve()
    folder = workdir if args.smoke else RESULTS_DIR
    done: dict[str, Any] = {}

    def report() -> None:
        result = assemble(done, scale_name, scale, args)
        write_results(args.stem, result, markdown(result), folder=folder)

    done["data"] = cached(workdir / "data.json", lambda: make_data(workdir, scale, Path(args.archive)))
    base_cfg = pipeline_config(workdir, scale, workdir, "polarization", args.threads, TRAIN_ARGS)
    done["baseline"] = ultra.reuse_or_run(workdir / "baseline", lambda: ultra.run_baseline(base_cfg, ultra.TASKS["detect"]))
    report()
    for arm in ARMS:
        run_arm(workdir, scale, arm, done["baseline"], args, done, report)
    done["tp/prune"] = cached(workdir / "tp" / "prune.json", lambda: tp_prune(workdir, scale, done["baseline"], args))
    report()
    done["tp/finetune"] = cached(workdir / "tp" / "finetune.json", lambda: tp_finetune(workdir, scale, done["tp/prune"], args))
    report()
    keep = settled(done)  # with an arm still to redo, the last two stages run again next time (models cached)
    done["evaluate"] = (cached if keep else fresh)(workdir / "evaluate.json", lambda: evaluate(workdir, scale, done["data"], done))
    report()
    done["latency"] = (cached if keep else fresh)(workdir / "latency.json", lambda: latency(scale, done, args.threads))
    report()
    return done


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="~/polarprune-bench/yolo_cifar", help="where every stage is cached (outside the repository)")
    parser.add_argument("--archive", default=str(ARCHIVE), help="the CIFAR-10 archive the detection set is made from")
    parser.add_argument("--smoke", action="store_true", help="a tiny scale that checks the script (result in the workdir)")
    parser.add_argument("--target", type=float, default=None, help="the measured onnxruntime latency cut every pruned model aims at "
                        "(default: the scale's, 0.5 at full scale)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every latency measurement (batch 1)")
    parser.add_argument("--lbd", type=float, default=None, help=f"lambda of both arms (default: {LAMBDA})")
    parser.add_argument("--polarization-t", type=float, default=None,
                        help="polarization's t (default: the regularizer's, 1.0; larger: more channels to 0)")
    parser.add_argument("--sparsity-target-latency-ratio", type=float, default=None,
                        help="lambda drops to 0 once the sparsity stage's trial prune is predicted at this onnxruntime "
                             "latency ratio (default: no target); the stage still runs all its epochs")
    parser.add_argument("--stem", default=STEM, help=f"the result files' name in bench/results (default {STEM}): "
                        "a run with other settings can keep its own")
    for key in OVERRIDABLE:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"override the scale's {key}")
    add_provenance_options(parser)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).expanduser().resolve()
    if not args.smoke and workdir.is_relative_to(Path(__file__).resolve().parents[1]):
        raise SystemExit(f"bench_yolo: --workdir {workdir} is inside the repository; give a folder outside it")
    run(args)


if __name__ == "__main__":
    main()
