"""Sparsity-training methods on real CIFAR-10 at matched MACs, against Torch-Pruning.

Methods (same seed, same initial weights, same data, same epochs per stage):

- ``none``          no regularizer, then the global-threshold ``percent`` family (flops-target);
- ``l1``            L1 on BN gammas (Network Slimming), then flops-target;
- ``polarization``  polarization regularizer, then ``grad`` (its MACs reduction R sets the target);
- ``masksparsity``  baseline (= the ``none`` sparsity run) -> global L1 -> mask at R ->
                    mask-L1 from the baseline -> prune the masked channels;
- ``tp-bnscale``    Torch-Pruning BNScalePruner with its regularizer, pruned to R;
- ``tp-groupnorm``  Torch-Pruning GroupNormPruner with its regularizer, pruned to R;

each followed by the same fine-tuning. ``percent`` is replaced by ``flops-target``: the same
global-threshold family, with the threshold searched so that MACs drop by R.

Every stage is cached in ``--workdir`` (outside the repository) and resumes, so the script can
be re-run after an interruption; ``--report-only`` only rebuilds the tables and plots.
Results: ``bench/results/methods_cifar_<model>.{json,md}``, ``methods_cifar_<model>_acc_macs.png``,
``methods_cifar_<model>_gammas.png``.

CPU protocol (default): a fixed stratified subset of the shared JPEG archive, a few epochs.
GPU protocol (``--protocol gpu``): the papers' protocol, full CIFAR-10, 200 + 200 epochs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, add_provenance_options, bundle_sizes, checked_revision, provenance, provenance_markdown, reexec_with_steady_malloc, steady_malloc, write_results  # noqa: E402
from plots import plot_acc_macs, plot_gammas  # noqa: E402
from stages import (ARCHIVE, INPUT_SHAPE, LABELS, MODEL_FILE, RECORD, CifarStages, load_model, read_record,  # noqa: E402
                    save_model, stage_config, train_stage, write_record)

from polarprune.config import TrainConfig  # noqa: E402
from polarprune.flops import count_model  # noqa: E402
from polarprune.pruning import plan_pruning, prune_model  # noqa: E402
from polarprune.report import cpu_latency_ms  # noqa: E402
from polarprune.sparsity.masks import load_mask, save_mask  # noqa: E402

METHODS = ("polarization", "none", "l1", "masksparsity", "tp-groupnorm", "tp-bnscale")

# Protocols: epochs, data, learning rates and regularizer strengths. The CPU protocol's lambdas
# are the papers' scaled by the ratio of optimizer steps (their 200 epochs x 390 steps against a
# few hundred here), since a short run needs a stronger push to polarize the gammas.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {
        "train_subset": 2500, "eval_subset": 2000, "batch_size": 128,
        "sparsity_epochs": 4, "finetune_epochs": 2, "ms_stage_epochs": 2,
        "lr": 0.1, "finetune_lr": 0.01, "schedule": {"type": "cosine"}, "finetune_schedule": {"type": "cosine"},
        "weight_decay": 5e-4,
        "polarization": {"lbd": 8e-3, "t": 1.4, "target_macs_ratio": 0.5},
        "l1_lbd": 3e-3, "ms_l1_lbd": 5e-2, "ms_mask_lbd": 0.2,
        "tp_bnscale_reg": 3e-3, "tp_groupnorm_reg": 2e-2,
    },
    "gpu": {  # the shipped cifar10-resnet56-* recipes: 200 sparsity + 200 fine-tune epochs, full data
        "train_subset": None, "eval_subset": None, "batch_size": 128,
        "sparsity_epochs": 200, "finetune_epochs": 200, "ms_stage_epochs": 160,
        "lr": 0.1, "finetune_lr": 1e-3,
        "schedule": {"type": "multistep", "milestones": [60, 120, 160], "gammas": 0.2, "first_epoch_lr": 0.01},
        "finetune_schedule": {"type": "multistep", "milestones": [30, 80, 150], "gammas": [0.5, 0.5, 0.4]},
        "weight_decay": 5e-4,
        "polarization": {"lbd": 5e-5, "t": 1.4, "target_macs_ratio": None},
        "l1_lbd": 1e-5, "ms_l1_lbd": 1e-4, "ms_mask_lbd": 1e-4,
        "tp_bnscale_reg": 1e-5, "tp_groupnorm_reg": 5e-4,
    },
}


# ----------------------------------------------------------------------------- configs


def base_config(model_name: str, proto: dict[str, Any], seed: int, device: str) -> dict[str, Any]:
    """The sections every training stage shares (model, data, optimiser)."""
    return {
        "seed": seed,
        "device": device,
        "model": {"name": model_name, "bn_init": 0.5},
        "data": {"name": "imagefolder", "root": ARCHIVE, "train_subset": proto["train_subset"],
                 "eval_subset": proto["eval_subset"], "batch_size": proto["batch_size"], "eval_batch_size": 500,
                 "workers": 0},
        "train": {"lr": proto["lr"], "momentum": 0.9, "weight_decay": proto["weight_decay"], "bn_weight_decay": True,
                  "schedule": proto["schedule"], "progress": False},
    }


def finetune_config(base: dict[str, Any], proto: dict[str, Any], out: Path) -> TrainConfig:
    return stage_config(base, out, proto["finetune_epochs"], lr=proto["finetune_lr"], schedule=proto["finetune_schedule"])


# ----------------------------------------------------------------------------- the runner


class Bench(CifarStages):
    """One model's methods: shared data, cached stages, the matched MACs reduction R."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proto = dict(PROTOCOLS[args.protocol])
        for key in ("sparsity_epochs", "finetune_epochs", "ms_stage_epochs", "train_subset", "eval_subset"):
            if getattr(args, key, None) is not None:
                self.proto[key] = getattr(args, key)
        self.work = Path(args.workdir).expanduser() / f"{args.model}-{args.protocol}"
        self.base = base_config(args.model, self.proto, args.seed, args.device)
        self._bundle = None

    def target(self) -> float:
        if self.args.target_macs_reduction is not None:
            return self.args.target_macs_reduction
        record = read_record(self.work / "polarization" / "result.json")
        if record is None:
            raise SystemExit("the polarization method must run first (it sets the MACs reduction R)")
        return float(record["prune"]["macs_reduction"])

    # -- stages shared by the polarprune methods

    def sparsity(self, method: str, sparsity: dict[str, Any] | None) -> tuple[nn.Module, dict[str, Any]]:
        cfg = stage_config(self.base, self.work / method / "sparsity", self.proto["sparsity_epochs"], sparsity)
        return train_stage(cfg)

    def polarprune_prune(self, model: nn.Module, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        example = self.example()
        start = time.perf_counter()
        pruned, report = prune_model(model, example, bn_names=self.bn_names(model), **kwargs)
        seconds = time.perf_counter() - start
        rep = report.to_dict()
        return pruned, {
            "strategy": kwargs.get("strategy"), "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
            "params_before": rep["params_before"], "params_after": rep["params_after"],
            "macs_reduction": 1 - rep["macs_after"] / rep["macs_before"],
            "params_reduction": 1 - rep["params_after"] / rep["params_before"],
            "top1_before": self.top1(model), "top1": self.top1(pruned), "seconds": round(seconds, 2),
            "threshold": rep.get("threshold"),
        }

    def finish(self, method: str, sparse_model: nn.Module, sparse_rec: dict[str, Any], pruned: nn.Module,
               prune_rec: dict[str, Any], extra: dict[str, Any] | None = None, resume: bool = True) -> dict[str, Any]:
        """Fine-tune the pruned model and record the method."""
        save_model(pruned, self.work / method / "pruned.safetensors")
        tuned, ft_rec = train_stage(finetune_config(self.base, self.proto, self.work / method / "finetune"),
                                    model=pruned, resume=resume)
        result = {"method": method, "label": LABELS[method], "sparsity": sparse_rec, "prune": prune_rec,
                  "finetune": {**ft_rec, "per_image": self.per_image(tuned)},  # for paired tests between methods
                  "gammas": self.gammas(sparse_model), **(extra or {})}
        write_record(self.work / method / "result.json", result)
        return result

    # -- methods

    def polarization_settings(self) -> dict[str, Any]:
        """The polarization sparsity stage's ``sparsity:`` section (also bench_latency_accuracy's start)."""
        pol = self.proto["polarization"]
        return {"regularizer": "polarization", "lbd": pol["lbd"], "t": pol["t"], "clamp": 1.0,
                "target_macs_ratio": pol["target_macs_ratio"], "monitor": True}

    def run_polarization(self) -> dict[str, Any]:
        spars = self.polarization_settings()
        model, rec = self.sparsity("polarization", spars)
        pruned, prune_rec = self.polarprune_prune(model, strategy="grad")
        return self.finish("polarization", model, rec, pruned, prune_rec, {"regularizer": spars})

    def run_global_threshold(self, method: str, sparsity: dict[str, Any] | None) -> dict[str, Any]:
        model, rec = self.sparsity(method, sparsity)
        pruned, prune_rec = self.polarprune_prune(model, strategy="flops-target", target_macs_reduction=self.target())
        return self.finish(method, model, rec, pruned, prune_rec, {"regularizer": sparsity or {"regularizer": "none"}})

    def run_none(self) -> dict[str, Any]:
        return self.run_global_threshold("none", None)

    def run_l1(self) -> dict[str, Any]:
        return self.run_global_threshold("l1", {"regularizer": "l1", "lbd": self.proto["l1_lbd"], "monitor": False})

    def run_masksparsity(self) -> dict[str, Any]:
        """Baseline = the ``none`` sparsity run; global L1 and mask-L1 both start from it."""
        baseline, base_rec = self.sparsity("none", None)
        epochs = self.proto["ms_stage_epochs"]
        work = self.work / "masksparsity"
        l1_cfg = stage_config(self.base, work / "global_l1", epochs,
                              {"regularizer": "l1", "lbd": self.proto["ms_l1_lbd"], "monitor": False})
        l1_model, l1_rec = train_stage(l1_cfg, model=copy.deepcopy(baseline))
        mask_path = work / "mask.json"
        if not mask_path.is_file():
            masks = plan_pruning(l1_model, self.example(), strategy="flops-target",
                                 target_macs_reduction=self.target(), bn_names=self.bn_names(l1_model))
            save_mask(masks, mask_path, self.args.model, source={"stage": "global_l1", "strategy": "flops-target"})
        ms_cfg = stage_config(self.base, work / "mask_l1", epochs,
                              {"regularizer": "mask-l1", "lbd": self.proto["ms_mask_lbd"], "mask": str(mask_path),
                               "monitor": False})
        ms_model, ms_rec = train_stage(ms_cfg, model=copy.deepcopy(baseline))
        pruned, prune_rec = self.polarprune_prune(ms_model, strategy="mask", masks=load_mask(mask_path, ms_model))
        return self.finish("masksparsity", ms_model, ms_rec, pruned, prune_rec,
                           {"baseline": base_rec, "global_l1": l1_rec, "mask_path": str(mask_path)})

    def run_tp(self, method: str) -> dict[str, Any]:
        from tp_baselines import TPRegularizerHook, prune_to_macs

        reg = self.proto["tp_bnscale_reg" if method == "tp-bnscale" else "tp_groupnorm_reg"]
        cfg = stage_config(self.base, self.work / method / "sparsity", self.proto["sparsity_epochs"])
        out = Path(cfg.out)
        if (out / "stage.json").is_file():
            model, rec = train_stage(cfg)
        else:
            from polarprune.workflows.train import build_trainer

            model = build_trainer(cfg, resume=False).model  # the very initial weights the other methods start from
            model, rec = train_stage(cfg, model=model, hooks=[TPRegularizerHook(method, model, self.example(), reg)])
        start = time.perf_counter()
        matched = prune_to_macs(method, model, self.example(), self.target(), INPUT_SHAPE, reg=reg)
        seconds = time.perf_counter() - start
        before = count_model(model, INPUT_SHAPE)
        after = count_model(matched.model, INPUT_SHAPE)
        prune_rec = {
            "strategy": f"torch-pruning global, pruning_ratio {matched.pruning_ratio:.4f}",
            "macs_before": before.macs, "macs_after": after.macs, "params_before": before.params,
            "params_after": after.params, "macs_reduction": 1 - after.macs / before.macs,
            "params_reduction": 1 - after.params / before.params, "top1_before": self.top1(model),
            "top1": self.top1(matched.model), "seconds_with_search": round(seconds, 2),
            "ratio_search": matched.tries,
        }
        return self.finish(method, model, rec, matched.model, prune_rec, {"reg": reg}, resume=False)

    def run(self, method: str) -> dict[str, Any]:
        cached = read_record(self.work / method / "result.json")
        if cached is not None:
            return cached
        print(f"== {self.args.model} {method}", flush=True)
        start = time.perf_counter()
        if method.startswith("tp-"):
            result = self.run_tp(method)
        else:
            result = getattr(self, f"run_{method}")()
        print(f"== {method} done in {time.perf_counter() - start:.0f} s: prune {result['prune']['macs_reduction']:.3f}, "
              f"top1 after prune {result['prune']['top1']:.2f}, after fine-tune {result['finetune']['top1']:.2f}", flush=True)
        return result


# ----------------------------------------------------------------------------- report


def measure_latencies(models: dict[str, nn.Module], rounds: int) -> dict[str, dict[str, float]]:
    """CPU latency (ms) at batch 1 and 64 of each model, round-robin over the models: medians,
    and the median of the per-round ratios to the unpruned model (robust to a busy machine)."""
    times: dict[str, dict[str, list[float]]] = {name: {"b1": [], "b64": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name]["b1"].append(cpu_latency_ms(model, INPUT_SHAPE, batch=1, repeats=20, warmup=3, threads=None).median_ms)
            times[name]["b64"].append(cpu_latency_ms(model, INPUT_SHAPE, batch=64, repeats=5, warmup=1, threads=None).median_ms)
    out: dict[str, dict[str, float]] = {}
    for name, t in times.items():
        out[name] = {k: round(statistics.median(v), 3) for k, v in t.items()}
        if "unpruned" in times:
            for k in ("b1", "b64"):
                ratios = [a / b for a, b in zip(t[k], times["unpruned"][k])]
                out[name][f"{k}_ratio"] = round(statistics.median(ratios), 3)
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def unpruned_reference(bench: Bench) -> tuple[nn.Module | None, dict[str, Any] | None]:
    """The unpruned reference (the no-regularizer sparsity stage) and its record, once that stage has run."""
    none_dir = bench.work / "none" / "sparsity"
    if not (none_dir / MODEL_FILE).is_file():
        return None, None
    unpruned = load_model(none_dir / MODEL_FILE)
    cost = count_model(unpruned, INPUT_SHAPE)
    return unpruned, {"top1": read_record(none_dir / RECORD)["top1"], "macs": cost.macs, "params": cost.params,
                      "per_image": bench.per_image(unpruned)}


def report(bench: Bench, rows: list[dict[str, Any]], latency_rounds: int) -> None:
    """Write the result files (JSON, Markdown, both plots) of the methods in ``rows``."""
    args, proto = bench.args, bench.proto
    stem = f"methods_cifar_{args.model}"
    unpruned, base_rec = unpruned_reference(bench)
    models = {"unpruned": unpruned} if unpruned is not None else {}
    for row in rows:
        models[row["method"]] = load_model(bench.work / row["method"] / "finetune" / MODEL_FILE)
    latency = measure_latencies(models, latency_rounds) if models and latency_rounds > 0 else {}
    for row in rows:
        row["latency_ms"] = latency.get(row["method"])
    target = rows[0]["prune"]["macs_reduction"] if rows and rows[0]["method"] == "polarization" else None
    result = {
        "benchmark": "methods_cifar", "model": args.model, "protocol": args.protocol, "protocol_settings": proto,
        "provenance": provenance(args.seed, data=bundle_sizes(bench.bundle, ARCHIVE), allow_dirty=args.allow_dirty), "target_macs_reduction": target,
        "unpruned": {**(base_rec or {}), "latency_ms": latency.get("unpruned")},
        "methods": rows, "methods_not_run": [m for m in METHODS if m not in {r["method"] for r in rows}],
    }
    results_dir = Path(args.results_dir)
    acc_png = results_dir / f"{stem}_acc_macs.png"
    gam_png = results_dir / f"{stem}_gammas.png"
    title = f"CIFAR-10 {args.model}, {args.protocol} protocol ({proto['train_subset'] or 50000} train / {proto['eval_subset'] or 10000} test images)"
    if rows:
        plot_acc_macs(rows, base_rec, acc_png, title)
        plot_gammas(rows, gam_png, f"BN |gamma| after sparsity training, {args.model}")
    text = report_markdown(result, latency_rounds, acc_png.name, gam_png.name)
    write_results(stem, result, text, folder=results_dir)
    print(text)


def report_markdown(result: dict[str, Any], latency_rounds: int, acc_png: str, gam_png: str) -> str:
    """The Markdown page of a methods result."""
    proto, target, base_rec = result["protocol_settings"], result["target_macs_reduction"], result["unpruned"]
    rows, latency = result["methods"], {"unpruned": base_rec.get("latency_ms")}
    lines = [
        f"# Methods on CIFAR-10: {result['model']} ({result['protocol']} protocol)", "",
        provenance_markdown(result["provenance"]), "",
        f"Protocol: {proto['train_subset'] or 'all'} training / {proto['eval_subset'] or 'all'} test images "
        f"(fixed stratified subsets of `{ARCHIVE}`), batch {proto['batch_size']}, sparsity training "
        f"{proto['sparsity_epochs']} epochs (lr {proto['lr']}, {proto['schedule']['type']}), fine-tuning "
        f"{proto['finetune_epochs']} epochs (lr {proto['finetune_lr']}, {proto['finetune_schedule']['type']}), "
        f"MaskSparsity global-L1 and mask-L1 stages {proto['ms_stage_epochs']} epochs each from the no-regularizer run. "
        f"Matched MACs reduction R = {_pct(target)} (set by polarization + grad).", "",
    ]
    if base_rec.get("top1") is not None:
        lat = latency.get("unpruned") or {}
        lines += [f"Unpruned (no regularizer, {proto['sparsity_epochs']} epochs): top-1 {base_rec['top1']:.2f}%, "
                  f"{base_rec['macs'] / 1e6:.2f} M MACs, {base_rec['params'] / 1e3:.1f} k params, latency "
                  f"{lat.get('b1', '-')} ms (batch 1) / {lat.get('b64', '-')} ms (batch 64).", ""]
    lines += [
        "| method | sparsity top-1 | top-1 after prune | top-1 after fine-tune | MACs red. | params red. | latency b1 (ms) | latency b64 (ms) | b1 / unpruned | b64 / unpruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lat = row.get("latency_ms") or {}
        lines.append(
            f"| {row['label']} | {row['sparsity']['top1']:.2f} | {row['prune']['top1']:.2f} | "
            f"{row['finetune']['top1']:.2f} | {_pct(row['prune']['macs_reduction'])} | "
            f"{_pct(row['prune']['params_reduction'])} | {lat.get('b1', '-')} | {lat.get('b64', '-')} | "
            f"{lat.get('b1_ratio', '-')} | {lat.get('b64_ratio', '-')} |"
        )
    if result["methods_not_run"]:
        lines += ["", f"Not run (out of time): {', '.join(result['methods_not_run'])}."]
    lines += ["", "Latency: `polarprune.report.cpu_latency_ms`, medians of "
              f"{latency_rounds} round-robin rounds over all models (20 runs at batch 1, 5 at batch 64 per round); "
              "x / unpruned: median of the per-round latency ratios to the unpruned model. Allocator: "
              + ("glibc keeps freed memory (common.STEADY_MALLOC_ENV)." if steady_malloc() else "glibc defaults (page faults included)."),
              "", f"![accuracy vs MACs]({acc_png})", "", f"![gamma histograms]({gam_png})"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56", "resnet110"])
    parser.add_argument("--protocol", default="cpu", choices=sorted(PROTOCOLS))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, run in this order (polarization always first: it sets R)")
    parser.add_argument("--workdir", default="~/.cache/polarprune/bench_methods")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity-epochs", type=int)
    parser.add_argument("--finetune-epochs", type=int)
    parser.add_argument("--ms-stage-epochs", type=int)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--eval-subset", type=int)
    parser.add_argument("--target-macs-reduction", type=float,
                        help="match this MACs reduction instead of the one polarization + grad reached")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--report-only", action="store_true", help="only rebuild the result files from the cache")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator settings (batch-64 latencies then include page faults; see common.STEADY_MALLOC_ENV)")
    add_provenance_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checked_revision(args.allow_dirty)  # before hours of training, not after them
    if not args.default_malloc and argv is None:
        reexec_with_steady_malloc()
    torch.manual_seed(args.seed)
    bench = Bench(args)
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods: {unknown}; choose from {METHODS}")
    ordered = ["polarization"] * ("polarization" in wanted) + [m for m in wanted if m != "polarization"]
    rows = []
    for method in ordered:
        if args.report_only:
            cached = read_record(bench.work / method / "result.json")
            if cached is not None:
                rows.append(cached)
            continue
        rows.append(bench.run(method))
        report(bench, list(rows), 0)  # partial results (no latency) on disk after every method
    report(bench, rows, args.latency_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
