"""The methods side by side on all of CIFAR-10 (ResNet-20, CPU), at two pruning levels.

The full-data successor of ``bench_methods_cifar.py``'s subset protocol: all 50,000 training and
10,000 test images of the shared archive, bf16 autocast + channels_last (the fastest CPU
setting, bench/results/engine_throughput.md), one shared baseline trained to convergence, then
for every method a sparsity stage that starts from that baseline, a prune at each level's MACs
target, and the same fine-tuning for all.

Stages (every one cached in ``--workdir``, outside the repository, and resumable):

- ``baseline``            no regularizer, ``baseline_epochs`` (cosine, 1 warm-up epoch);
- ``<method>/sparsity``   ``sparsity_epochs`` from the baseline (cosine from ``sparsity_lr``):
  ``none`` (no regularizer), ``l1``, ``polarization-a`` / ``polarization-b`` (the paper's
  regularizer, stopped at the level's MACs target), ``masksparsity-a`` / ``-b`` (mask-L1 with
  the mask that global L1 (= the ``l1`` run) prunes at the level), ``tp-bnscale``,
  ``tp-groupnorm`` (Torch-Pruning's own regularizers);
- ``<method>-<level>/finetune``  ``finetune_epochs`` of every pruned model (cosine from
  ``finetune_lr``); ``polarization-distill-<level>`` fine-tunes the same pruned polarization
  model with the unpruned baseline as the teacher.

Levels: ``a`` is the MACs reduction polarization + ``grad`` reaches at the paper's setting
(t = 1.4, stopped at half the MACs), ``b`` the one of a stronger polarization run (about 70%).
Every other method is pruned to the same reduction (global threshold searched: ``flops-target``;
Torch-Pruning: its global pruning ratio bisected). Results:
``bench/results/methods_full_resnet20.{json,md}`` and its two plots.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plots import plot_gammas, save_fig  # noqa: E402
from stages import (ARCHIVE, INPUT_SHAPE, LABELS, MODEL_FILE, RECORD, CifarStages, load_model, read_record, save_model,  # noqa: E402
                    stage_config, train_stage, write_record)
from stats import standard_error  # noqa: E402,F401  (the report's noise line; tests call it here)
from common import RESULTS_DIR, add_provenance_options, bundle_sizes, checked_revision, provenance, provenance_markdown, reexec_with_steady_malloc, write_results  # noqa: E402

from polarprune.deploy.latency import measure_latency  # noqa: E402
from polarprune.flops import count_model  # noqa: E402
from polarprune.pruning import plan_pruning, prune_model  # noqa: E402
from polarprune.sparsity.masks import load_mask, save_mask  # noqa: E402

MODEL = "resnet20"
LEVELS = ("a", "b")
METHODS = ("polarization", "none", "l1", "masksparsity", "tp-bnscale", "tp-groupnorm", "polarization-distill")
FULL_LABELS = {**LABELS, "polarization-distill": "polarization + grad, fine-tuned with distillation"}

PROTOCOL: dict[str, Any] = {
    "batch_size": 128, "weight_decay": 5e-4, "amp_dtype": "bfloat16", "channels_last": True,
    "baseline_epochs": 40, "baseline_lr": 0.1,
    "sparsity_epochs": 6, "sparsity_lr": 0.05,
    "finetune_epochs": 6, "finetune_lr": 0.02,
    # Pruned widths (15, 13, 9, ...) trained faster in NCHW than in channels_last in a quick
    # check (not a committed benchmark); the unpruned stages keep channels_last.
    "finetune_channels_last": False,
    # The papers' lambdas are for 160-200 epochs from scratch; a 6-epoch stage from a converged
    # baseline needs a stronger push, the same scale for L1 and Torch-Pruning's sign(gamma).
    # The MACs-target trial runs every 20 of an epoch's 391 steps, not only at epoch ends: level b's
    # strong regularizer crossed its target by far within one epoch when checked at epoch ends.
    "polarization": {"a": {"lbd": 5e-3, "t": 1.4, "target_macs_ratio": 0.5, "target_check_every": 20},
                     "b": {"lbd": 1.2e-2, "t": 1.8, "target_macs_ratio": 0.3, "target_check_every": 20}},
    "l1_lbd": 2e-3, "ms_mask_lbd": 1e-2, "tp_bnscale_reg": 2e-3, "tp_groupnorm_reg": 1e-3,
    # Teacher: the unpruned baseline (the strongest model at hand; the sparsity-trained model of
    # the level, tried first with alpha 0.9, was weaker than the fine-tuned student).
    "distill": {"temperature": 4.0, "alpha": 0.7},
    "distill_levels": ["b"],  # the one extra row: distillation where pruning costs the most
}


SMOKE = {"baseline_epochs": 1, "sparsity_epochs": 1, "finetune_epochs": 1}  # --smoke: the code paths in minutes


def planned(method: str, level: str) -> bool:
    """Whether the protocol has this row (the distilled fine-tuning only at ``distill_levels``)."""
    return method != "polarization-distill" or level in PROTOCOL["distill_levels"]


def run_name(seed: int) -> str:
    """The stage folder under ``--workdir`` and the result files' stem: seed 0 is the main run, other
    seeds (a repeat of some rows, for the seed-to-seed spread) get their own folder and files."""
    stem = f"methods_full_{MODEL}"
    return stem if seed == 0 else f"{stem}_seed{seed}"


def base_config(seed: int, smoke: bool = False) -> dict[str, Any]:
    """The sections every stage shares: full data, bf16 + channels_last on the CPU."""
    p = PROTOCOL
    cfg = {
        "seed": seed, "device": "cpu",
        "model": {"name": MODEL, "bn_init": 0.5},
        "data": {"name": "imagefolder", "root": ARCHIVE, "train_subset": None, "eval_subset": None,
                 "batch_size": p["batch_size"], "eval_batch_size": 500, "workers": 0},
        "train": {"lr": p["baseline_lr"], "momentum": 0.9, "weight_decay": p["weight_decay"], "bn_weight_decay": True,
                  "schedule": {"type": "cosine", "warmup_epochs": 1}, "progress": False,
                  "amp": True, "amp_dtype": p["amp_dtype"], "channels_last": p["channels_last"]},
    }
    if smoke:
        cfg["data"].update(train_subset=640, eval_subset=500)
        cfg["train"]["max_steps_per_epoch"] = 3
    return cfg


class FullBench(CifarStages):
    """Cached stages of the full-data protocol."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).expanduser() / run_name(args.seed)
        self.base = base_config(args.seed, args.smoke)
        if args.smoke:
            PROTOCOL.update(SMOKE)
        self._bundle = None
        self._example: torch.Tensor | None = None

    def stage(self, folder: str, epochs: int, lr: float, sparsity: dict[str, Any] | None = None,
              model: nn.Module | None = None, hooks: list | None = None, distill: dict[str, Any] | None = None,
              resume: bool = True, **train: Any) -> tuple[nn.Module, dict[str, Any]]:
        cfg_dict = copy.deepcopy(self.base)
        if distill is not None:
            cfg_dict["distill"] = distill
        cfg = stage_config(cfg_dict, self.work / folder, epochs, sparsity, lr=lr, schedule={"type": "cosine"}, **train)
        print(f"-- stage {folder}: {epochs} epochs", flush=True)
        return train_stage(cfg, model=model, hooks=hooks, resume=resume)

    def baseline(self) -> tuple[nn.Module, dict[str, Any]]:
        cfg = stage_config(self.base, self.work / "baseline", PROTOCOL["baseline_epochs"], eval_every=4)
        print("-- stage baseline", flush=True)
        return train_stage(cfg)

    def sparse(self, folder: str, sparsity: dict[str, Any] | None, hooks_for=None) -> tuple[nn.Module, dict[str, Any]]:
        """A sparsity stage from the baseline's weights."""
        done = read_record(self.work / folder / "sparsity" / "stage.json")
        start = None if done is not None else copy.deepcopy(self.baseline()[0])
        hooks = hooks_for(start) if (hooks_for and start is not None) else None
        return self.stage(f"{folder}/sparsity", PROTOCOL["sparsity_epochs"], PROTOCOL["sparsity_lr"], sparsity,
                          model=start, hooks=hooks, resume=hooks is None)

    def level_target(self, level: str) -> float:
        record = read_record(self.work / f"polarization-{level}" / "result.json")
        if record is None:
            raise SystemExit(f"polarization at level {level} must run first (it sets the level's MACs reduction)")
        reduction = float(record["prune"]["macs_reduction"])
        return max(reduction, 0.2) if self.args.smoke else reduction  # a 3-step smoke run may prune nothing

    # -- prune + fine-tune

    def prune_record(self, sparse: nn.Module, pruned: nn.Module, seconds: float, strategy: str) -> dict[str, Any]:
        before, after = count_model(sparse, INPUT_SHAPE), count_model(pruned, INPUT_SHAPE)
        return {"strategy": strategy, "macs_before": before.macs, "macs_after": after.macs,
                "params_before": before.params, "params_after": after.params,
                "macs_reduction": 1 - after.macs / before.macs, "params_reduction": 1 - after.params / before.params,
                "top1_before": self.top1(sparse), "top1": self.top1(pruned), "seconds": round(seconds, 2)}

    def polarprune_prune(self, sparse: nn.Module, **options: Any) -> tuple[nn.Module, dict[str, Any]]:
        start = time.perf_counter()
        pruned, _ = prune_model(sparse, self.example(), bn_names=self.bn_names(sparse), **options)
        return pruned, self.prune_record(sparse, pruned, time.perf_counter() - start, options["strategy"])

    def finish(self, name: str, level: str, sparse: nn.Module, sparse_rec: dict[str, Any], pruned: nn.Module,
               prune_rec: dict[str, Any], *, distill: dict[str, Any] | None = None, resume: bool = True,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        folder = f"{name}-{level}"
        save_model(pruned, self.work / folder / "pruned.safetensors")
        tuned, ft_rec = self.stage(f"{folder}/finetune", PROTOCOL["finetune_epochs"], PROTOCOL["finetune_lr"],
                                   model=pruned, distill=distill, resume=resume,
                                   channels_last=PROTOCOL["finetune_channels_last"])
        result = {"method": name, "level": level, "label": FULL_LABELS[name], "sparsity": sparse_rec, "prune": prune_rec,
                  "finetune": {**ft_rec, "per_image": self.per_image(tuned)},  # for paired tests between methods
                  "gammas": self.gammas(sparse), **(extra or {})}
        write_record(self.work / folder / "result.json", result)
        return result

    # -- methods

    @staticmethod
    def polarization_sparsity(level: str) -> dict[str, Any]:
        return {"regularizer": "polarization", "clamp": 1.0, "monitor": True, **PROTOCOL["polarization"][level]}

    @staticmethod
    def l1_sparsity() -> dict[str, Any]:
        return {"regularizer": "l1", "lbd": PROTOCOL["l1_lbd"], "monitor": False}

    def run_polarization(self, level: str) -> dict[str, Any]:
        spars = self.polarization_sparsity(level)
        model, rec = self.sparse(f"polarization-{level}-sparse", spars)
        pruned, prune_rec = self.polarprune_prune(model, strategy="grad")
        return self.finish("polarization", level, model, rec, pruned, prune_rec, extra={"regularizer": spars})

    def run_polarization_distill(self, level: str) -> dict[str, Any]:
        model, rec = self.sparse(f"polarization-{level}-sparse", self.polarization_sparsity(level))  # run_polarization's stage
        teacher = self.work / "baseline" / "teacher.safetensors"
        if not teacher.is_file():
            save_model(self.baseline()[0], teacher)
        pruned = load_model(self.work / f"polarization-{level}" / "pruned.safetensors")
        prune_rec = read_record(self.work / f"polarization-{level}" / "result.json")["prune"]
        distill = {"teacher": str(teacher), **PROTOCOL["distill"]}
        return self.finish("polarization-distill", level, model, rec, pruned, prune_rec, distill=distill,
                           extra={"distill": distill})

    def run_none(self, level: str) -> dict[str, Any]:
        return self.global_threshold("none", level, None)

    def run_l1(self, level: str) -> dict[str, Any]:
        return self.global_threshold("l1", level, self.l1_sparsity())

    def global_threshold(self, name: str, level: str, sparsity: dict[str, Any] | None) -> dict[str, Any]:
        model, rec = self.sparse(f"{name}-sparse", sparsity)
        pruned, prune_rec = self.polarprune_prune(model, strategy="flops-target", target_macs_reduction=self.level_target(level))
        return self.finish(name, level, model, rec, pruned, prune_rec, extra={"regularizer": sparsity or {"regularizer": "none"}})

    def run_masksparsity(self, level: str) -> dict[str, Any]:
        """Mask = what global L1 (the ``l1`` stage) prunes at the level; mask-L1 from the baseline."""
        l1_model, _ = self.sparse("l1-sparse", self.l1_sparsity())
        mask_path = self.work / f"masksparsity-{level}-sparse" / "mask.json"
        if not mask_path.is_file():
            masks = plan_pruning(l1_model, self.example(), strategy="flops-target",
                                 target_macs_reduction=self.level_target(level), bn_names=self.bn_names(l1_model))
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            save_mask(masks, mask_path, MODEL, source={"stage": "l1-sparse", "strategy": "flops-target"})
        spars = {"regularizer": "mask-l1", "lbd": PROTOCOL["ms_mask_lbd"], "mask": str(mask_path), "monitor": False}
        model, rec = self.sparse(f"masksparsity-{level}-sparse", spars)
        pruned, prune_rec = self.polarprune_prune(model, strategy="mask", masks=load_mask(mask_path, model))
        return self.finish("masksparsity", level, model, rec, pruned, prune_rec, extra={"regularizer": spars})

    def run_tp(self, name: str, level: str) -> dict[str, Any]:
        from tp_baselines import TPRegularizerHook, prune_to_macs

        reg = PROTOCOL["tp_bnscale_reg" if name == "tp-bnscale" else "tp_groupnorm_reg"]
        model, rec = self.sparse(f"{name}-sparse", None,
                                 hooks_for=lambda m: [TPRegularizerHook(name, m, self.example(), reg)])
        start = time.perf_counter()
        matched = prune_to_macs(name, model, self.example(), self.level_target(level), INPUT_SHAPE, reg=reg)
        prune_rec = self.prune_record(model, matched.model, time.perf_counter() - start,
                                      f"torch-pruning global, pruning_ratio {matched.pruning_ratio:.4f}")
        return self.finish(name, level, model, rec, matched.model, prune_rec, resume=False, extra={"reg": reg})

    def run(self, name: str, level: str) -> dict[str, Any]:
        cached = read_record(self.work / f"{name}-{level}" / "result.json")
        if cached is not None:
            return cached
        print(f"== {name} level {level}", flush=True)
        start = time.perf_counter()
        if name.startswith("tp-"):
            result = self.run_tp(name, level)
        else:
            result = getattr(self, f"run_{name.replace('-', '_')}")(level)
        print(f"== {name}-{level} done in {time.perf_counter() - start:.0f} s: MACs -{result['prune']['macs_reduction']:.3f}, "
              f"top-1 after prune {result['prune']['top1']:.2f}, after fine-tune {result['finetune']['top1']:.2f}", flush=True)
        return result


# ----------------------------------------------------------------------------- hand-over

FINISHED_STAGE_FILES = (RECORD, MODEL_FILE)  # what train_stage reads back for a finished stage
METHOD_FILES = ("result.json", "pruned.safetensors", "mask.json")  # a method's record, its pruned model, MaskSparsity's mask


def export_stages(work: Path, dest: Path) -> list[Path]:
    """Copy what another machine needs to go on from ``work`` into ``dest``: every finished stage's
    record and model, each method's result, pruned model and mask, and an unfinished stage's
    ``last.pt`` (it resumes from its last epoch); no TensorBoard logs, best.pt or checkpoints of
    finished stages. Copying ``dest`` back under a ``--workdir`` continues the run."""
    copied: list[Path] = []
    for folder in sorted(p for p in [work, *work.rglob("*")] if p.is_dir()):
        finished = (folder / "stage.json").is_file()
        names = [*METHOD_FILES, *(FINISHED_STAGE_FILES if finished else ("last.pt",))]
        for name in names:
            source = folder / name
            if source.is_file():
                target = dest / source.relative_to(work)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied.append(target)
    return copied


# ----------------------------------------------------------------------------- report


def plot_levels(rows: list[dict[str, Any]], baseline: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    markers = {"a": "o", "b": "s"}
    colours = {name: f"C{i}" for i, name in enumerate(METHODS)}
    labelled: set[str] = set()
    for row in rows:
        macs = row["prune"]["macs_after"] / 1e6
        ax.plot([macs, macs], [row["prune"]["top1"], row["finetune"]["top1"]], color="#cccccc", lw=1, zorder=1)
        ax.scatter([macs], [row["finetune"]["top1"]], marker=markers[row["level"]], color=colours[row["method"]], s=42,
                   zorder=3, label=None if row["method"] in labelled else row["label"])
        labelled.add(row["method"])
    ax.scatter([baseline["macs"] / 1e6], [baseline["top1"]], marker="*", s=140, color="black", label="unpruned baseline", zorder=3)
    ax.set_xlabel("MACs per image (M)   (circles: level a, squares: level b)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    low = min(r["finetune"]["top1"] for r in rows) if rows else baseline["top1"]
    ax.set_ylim(max(0.0, low - 3), baseline["top1"] + 1.5)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save_fig(fig, path)


def latencies(bench: FullBench, rows: list[dict[str, Any]], baseline_model: nn.Module, rounds: int) -> dict[str, Any]:
    """``polarprune latency``'s measurement (eager, batch 1 and 64, interleaved) of every fine-tuned model."""
    models = {"unpruned": baseline_model}
    for row in rows:
        models[f"{row['method']}-{row['level']}"] = load_model(bench.work / f"{row['method']}-{row['level']}" / "finetune" / "model.safetensors")
    result = measure_latency(models, INPUT_SHAPE, runtime="eager", batches=(1, 64), rounds=rounds)
    out: dict[str, Any] = {}
    for name in models:
        out[name] = {f"b{b.batch}_ms": round(b.median_ms[name], 3) for b in result.batches}
        out[name].update({f"b{b.batch}_ratio": round(b.ratio_to_first[name], 3) for b in result.batches})
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def report(bench: FullBench, rows: list[dict[str, Any]], latency_rounds: int, results_dir: Path | None = None) -> None:
    """Write the result files (JSON, Markdown, both plots) for ``rows`` to ``results_dir`` (default: ``--results-dir``)."""
    base_model, base_rec = bench.baseline()
    cost = count_model(base_model, INPUT_SHAPE)
    baseline = {"top1": base_rec["top1"], "macs": cost.macs, "params": cost.params, "epochs": PROTOCOL["baseline_epochs"],
                "images_per_s": base_rec.get("images_per_s"), "wall_s": base_rec.get("wall_s"), "machine": base_rec.get("machine"),
                "per_image": bench.per_image(base_model)}
    lat = latencies(bench, rows, base_model, latency_rounds) if latency_rounds > 0 and rows else {}
    targets = {lv: read_record(bench.work / f"polarization-{lv}" / "result.json") for lv in LEVELS}
    targets = {lv: r["prune"]["macs_reduction"] for lv, r in targets.items() if r}
    for row in rows:
        row["latency"] = lat.get(f"{row['method']}-{row['level']}")
        target = targets.get(row["level"])
        row["within_1_point_of_target"] = None if target is None else abs(row["prune"]["macs_reduction"] - target) <= 0.01
    stem = run_name(bench.args.seed)
    result = {
        "benchmark": "methods_full", "model": MODEL, "protocol": PROTOCOL, "provenance": provenance(bench.args.seed, data=bundle_sizes(bench.bundle, ARCHIVE), allow_dirty=bench.args.allow_dirty),
        "baseline": {**baseline, "latency": lat.get("unpruned"), "standard_error": round(standard_error(baseline["top1"]), 3)},
        "level_targets": targets, "methods": rows,
        "not_run": [f"{m}-{lv}" for lv in LEVELS for m in METHODS if planned(m, lv) and not any(r["method"] == m and r["level"] == lv for r in rows)],
        "latency_rounds": latency_rounds,
    }
    results_dir = Path(results_dir or bench.args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    acc_png, gam_png = results_dir / f"{stem}_acc_macs.png", results_dir / f"{stem}_gammas.png"
    if rows:
        plot_levels(rows, baseline, acc_png, f"CIFAR-10 (all 50,000 / 10,000 images), {MODEL}, two pruning levels")
        seen, sparse_rows = set(), []
        for row in rows:
            key = (row["method"], row["level"] if row["method"] in ("polarization", "masksparsity") else "")
            if row["method"] != "polarization-distill" and key not in seen:
                seen.add(key)
                sparse_rows.append({**row, "method": f"{row['method']}-{row['level']}" if key[1] else row["method"]})
        if sparse_rows:  # a run of the distilled row alone has no sparsity stage of its own
            plot_gammas(sparse_rows, gam_png, f"BN |gamma| after the sparsity stage, {MODEL}, full CIFAR-10")
    text = report_markdown(result, acc_png.name, gam_png.name)
    write_results(stem, result, text, folder=results_dir)
    print(text, flush=True)


def report_markdown(result: dict[str, Any], acc_png: str, gam_png: str) -> str:
    """The Markdown page of a full-data methods result."""
    p, baseline, targets, rows = result["protocol"], result["baseline"], result["level_targets"], result["methods"]
    latency_rounds = result["latency_rounds"]
    lines = [f"# Methods on all of CIFAR-10: {MODEL}, two pruning levels (CPU)", "", provenance_markdown(result["provenance"]), "",
             f"Protocol: all 50,000 training / 10,000 test images of `{ARCHIVE}`, batch {p['batch_size']}, bf16 autocast, "
             f"channels_last for the unpruned stages and {'channels_last' if p['finetune_channels_last'] else 'NCHW'} for "
             f"fine-tuning the pruned models. Baseline: {p['baseline_epochs']} epochs, no regularizer (lr {p['baseline_lr']}, cosine, 1 warm-up "
             f"epoch). Every sparsity stage: {p['sparsity_epochs']} epochs from the baseline (lr {p['sparsity_lr']}, cosine); "
             f"every fine-tuning: {p['finetune_epochs']} epochs (lr {p['finetune_lr']}, cosine).", "",
             f"Baseline: top-1 **{baseline['top1']:.2f}%** (standard error {standard_error(baseline['top1']):.2f} points), "
             f"{baseline['macs'] / 1e6:.2f} M MACs, {baseline['params'] / 1e3:.1f} k params.", ""]
    for level in LEVELS:
        level_rows = [r for r in rows if r["level"] == level]
        if not level_rows:
            continue
        tgt = targets.get(level)
        lines += [f"## Level {level}: MACs reduction {_pct(tgt) if tgt is not None else '?'} (set by polarization + grad)", "",
                  "| method | top-1 after sparsity | top-1 after prune | top-1 after fine-tune | MACs red. | params red. | latency b1 (ms) | latency b64 (ms) | b64 / unpruned |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in level_rows:
            la = r.get("latency") or {}
            lines.append(f"| {r['label']} | {r['sparsity']['top1']:.2f} | {r['prune']['top1']:.2f} | {r['finetune']['top1']:.2f} | "
                         f"{_pct(r['prune']['macs_reduction'])} | {_pct(r['prune']['params_reduction'])} | "
                         f"{la.get('b1_ms', '-')} | {la.get('b64_ms', '-')} | {la.get('b64_ratio', '-')} |")
        lines.append("")
    if result["not_run"]:
        lines += [f"Not run: {', '.join(result['not_run'])}.", ""]
    mean_final = sum(r["finetune"]["top1"] for r in rows) / max(len(rows), 1)
    se = standard_error(mean_final)
    lines += [f"Noise: the binomial standard error of a top-1 of {mean_final:.0f}% (the fine-tuned models' mean) on 10,000 test "
              f"images is {se:.2f} points; two results differ beyond noise when they are more than {2 * math.sqrt(2) * se:.2f} "
              "points apart (two standard errors of a difference).",
              "", f"Latency: `polarprune latency`'s measurement (eager PyTorch, {latency_rounds} interleaved rounds, medians; "
              "ratio: median of the per-round ratios to the unpruned baseline).", "",
              f"![accuracy vs MACs]({acc_png})", "", f"![gamma histograms]({gam_png})"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS} (polarization first: it sets the levels)")
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--workdir", default="~/.cache/polarprune/bench_methods_full")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every stage; a seed other than 0 runs in its own stage folder and writes "
                             "methods_full_resnet20_seed<N>.* (e.g. the headline rows again: --seed 1 --levels b "
                             "--methods polarization,l1,masksparsity)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="1 epoch of 3 steps per stage on 640 images: checks the code paths, not the methods")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the result files from the cache")
    parser.add_argument("--export-stages", metavar="DEST",
                        help="copy the finished stages (and an unfinished stage's last.pt) of this seed's run to DEST "
                             "and exit: to go on elsewhere, copy DEST to WORKDIR/" + run_name(0) + " (or _seed<N>)")
    add_provenance_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checked_revision(args.allow_dirty)  # before hours of training, not after them
    if argv is None:
        reexec_with_steady_malloc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    bench = FullBench(args)
    if args.export_stages:
        copied = export_stages(bench.work, Path(args.export_stages).expanduser())
        print(f"copied {len(copied)} files ({sum(p.stat().st_size for p in copied) / 1e6:.1f} MB) to {args.export_stages}")
        return 0
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    unknown = sorted(set(wanted) - set(METHODS)) + sorted(set(levels) - set(LEVELS))
    if unknown:
        raise SystemExit(f"unknown methods or levels: {unknown}; choose from {METHODS} and {LEVELS}")
    order = [m for m in METHODS if m in wanted]
    rows: list[dict[str, Any]] = []
    for method in order:
        for level in (lv for lv in levels if planned(method, lv)):
            if args.report_only:
                cached = read_record(bench.work / f"{method}-{level}" / "result.json")
                if cached is not None:
                    rows.append(cached)
                continue
            rows.append(bench.run(method, level))
            # partial results after every method, in the stage folder: the committed result files change only
            # when the run is complete (or on --report-only)
            report(bench, list(rows), 0, results_dir=bench.work / "partial")
    report(bench, rows, args.latency_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
