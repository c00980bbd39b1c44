"""Issue 26's accuracy at equal latency on real CIFAR-10: the same polarization model pruned by ``latency-target``
and by ``flops-target`` to the same measured onnxruntime latency, then the same fine-tuning.

Protocol: ``bench_methods_cifar.py``'s CPU protocol (a fixed stratified subset of the shared JPEG archive: its
training and test images, its polarization sparsity stage, its fine-tuning schedule). With the same ``--workdir``
the sparsity stage is the one ``bench_methods_cifar.py`` trained (cached); otherwise it is trained here first.

Per cell (model, batch), in onnxruntime at ``--threads`` threads:

1. ``latency-target`` at R = ``--target`` (default widths) with ``prune_to_latency``: its own end-to-end check;
2. ``flops-target`` (default widths, ``round_to: auto`` for the same runtime) at a grid of MACs cuts around
   latency-target's (``candidate_cuts``), all timed in the same interleaved rounds as latency-target's model; the
   one whose latency ratio is closest to latency-target's is the flops-target arm (a search one cut at a time
   failed: a loaded machine's noise between separate measurements exceeded the differences sought);
3. the unpruned model and both pruned ones timed side by side again (interleaved rounds, medians of per-round
   ratios): the confirmation that the table reports next to the match's own ratios;
4. both fine-tuned with the same schedule from the same start; top-1 on the same test images, compared by
   McNemar's exact test on their per-image correctness;
5. a third arm, ``latency-threshold`` (flops-target's global threshold searched on the predicted latency, checked
   end to end like latency-target), pruned, timed and fine-tuned alike (added after the first run: a cell pruned
   before gains the arm, and its confirmation timing and verdicts are taken again).

Every step is cached under ``--workdir`` (pruned models, fine-tuning stages, the cell's record), so a rerun
resumes; the result file ``bench/results/latency_accuracy.{json,md}`` is rewritten after each cell.

    python bench/bench_latency_accuracy.py [--models resnet20,resnet56] [--batches 1,64] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_methods_cifar import PROTOCOLS, Bench, finetune_config  # noqa: E402
from common import RESULTS_DIR, add_provenance_options, bundle_sizes, checked_revision, provenance, provenance_markdown, write_results  # noqa: E402
from stages import ARCHIVE, INPUT_SHAPE, load_model, read_record, save_model, train_stage, write_record  # noqa: E402
from stats import decode_correct, discordant, mcnemar_exact  # noqa: E402

from polarprune.deploy.latency import measure_latency, steady_malloc_here  # noqa: E402
from polarprune.deploy.latency_cost import TOLERANCE, prune_to_latency, prune_with_cost_model  # noqa: E402
from polarprune.errors import PolarpruneError  # noqa: E402
from polarprune.flops import count_model  # noqa: E402
from polarprune.pruning.options import PruneOptions  # noqa: E402

STEM = "latency_accuracy"
RUNTIME = "onnxruntime"
LIBRARIES = ("polarprune", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript")
MATCH = 0.02  # flops-target's measured latency ratio counts as equal to latency-target's within this
SPAN, STEP = 0.25, 0.025  # flops-target MACs cuts tried: latency-target's MACs cut +- SPAN in steps of STEP
ROUNDS = 9  # interleaved rounds of each side-by-side timing (the match's, then the confirmation's)
ROUND_SECONDS = 0.25
ARMS = ("latency-target", "flops-target", "latency-threshold")


# ----------------------------------------------------------------------------- matching (pure)


def candidate_cuts(center: float, half_width: float = SPAN, step: float = STEP, lowest: float = 0.05,
                   highest: float = 0.95) -> list[float]:
    """The flops-target MACs cuts tried: a grid of ``step`` around ``center`` (latency-target's MACs cut),
    ``half_width`` either side, inside [``lowest``, ``highest``]."""
    count = round(half_width / step)
    cuts = (round(center + k * step, 4) for k in range(-count, count + 1))
    return [c for c in cuts if lowest <= c <= highest]


def closest_match(ratios: Mapping[str, float], target_ratio: float) -> str:
    """The candidate whose latency ratio (measured in the same interleaved rounds) is nearest ``target_ratio``."""
    return min(ratios, key=lambda name: abs(ratios[name] - target_ratio))


def paired(ref: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """McNemar's exact test between two encoded per-image results: the discordant counts, p and the top-1 difference."""
    b, c = discordant(decode_correct(dict(ref)), decode_correct(dict(other)))
    return {"ref_only_right": b, "other_only_right": c, "p": mcnemar_exact(b, c), "difference": other["top1"] - ref["top1"]}


# ----------------------------------------------------------------------------- one cell


class Cell:
    """One (model, batch) cell: its folder under the bench's work folder, the sparsity model and its probe batch."""

    def __init__(self, bench: Bench, batch: int, threads: int, target: float) -> None:
        self.bench, self.batch, self.threads, self.target = bench, batch, threads, target
        self.folder = bench.work / STEM / f"{RUNTIME}-b{batch}-t{threads}-r{target:g}"
        self.sparse, _ = bench.sparsity("polarization", bench.polarization_settings())
        self.example = bench.example()
        self.macs = count_model(self.sparse, INPUT_SHAPE).macs

    def options(self, strategy: str, **fields: Any) -> PruneOptions:
        return PruneOptions(strategy=strategy, runtime=RUNTIME, batch=self.batch, threads=self.threads, **fields)

    def latency_arm(self, cache: Path, strategy: str = "latency-target") -> tuple[nn.Module, dict[str, Any]]:
        opts = self.options(strategy, target_latency_reduction=self.target)
        result = prune_to_latency(self.sparse, self.example, opts, cache_dir=cache)
        return result.pruned.eval(), result.as_dict()

    def flops_candidates(self, cache: Path, center: float) -> dict[str, nn.Module]:
        """flops-target (the runtime's widths) at every ``candidate_cuts`` MACs cut; one model per architecture."""
        models: dict[str, nn.Module] = {}
        seen: set[int] = set()
        for cut in candidate_cuts(center):
            opts = self.options("flops-target", target_macs_reduction=cut, measure_latency=False)
            pruned, _, _ = prune_with_cost_model(self.sparse, self.example, opts, cache_dir=cache)
            macs = count_model(pruned, INPUT_SHAPE).macs
            if macs not in seen:
                seen.add(macs)
                models[f"{cut:.3f}"] = pruned.eval()
        return models

    def flops_arm(self, cache: Path, latency_model: nn.Module, center: float) -> tuple[nn.Module, dict[str, Any]]:
        """The flops-target model whose latency, timed in the same interleaved rounds as latency-target's, is closest."""
        candidates = self.flops_candidates(cache, center)
        timing = self.timed({"latency-target": latency_model, **candidates})
        ratios = {name: timing["ratio_to_unpruned"][name] for name in candidates}
        target = timing["ratio_to_unpruned"]["latency-target"]
        pick = closest_match(ratios, target)
        print(f"  flops-target: {len(candidates)} architectures, latency ratios {min(ratios.values()):.3f}-{max(ratios.values()):.3f}; "
              f"MACs cut {pick} is closest to latency-target's {target:.3f} ({ratios[pick]:.3f})", flush=True)
        return candidates[pick], {"target_macs_reduction": float(pick), "candidates": ratios, "latency_target_ratio": target,
                                  "matched_ratio": ratios[pick]}

    def pruned(self) -> tuple[dict[str, nn.Module], dict[str, Any]]:
        """The arms' pruned models (read back when an earlier run saved them) and their pruning records."""
        record = read_record(self.folder / "pruned.json")
        cache = self.folder / "latency-cache"
        if record is not None:
            if "latency-threshold" not in record:  # a cell pruned before that strategy existed: add its arm
                model, record["latency-threshold"] = self.latency_arm(cache, "latency-threshold")
                save_model(model, self.folder / "latency-threshold.safetensors")
                write_record(self.folder / "pruned.json", record)
            return {arm: load_model(self.folder / f"{arm}.safetensors") for arm in ARMS}, record
        start = time.perf_counter()
        lt, lt_rec = self.latency_arm(cache)
        lt_cut = 1.0 - count_model(lt, INPUT_SHAPE).macs / self.macs
        ft, ft_rec = self.flops_arm(cache, lt, lt_cut)
        th, th_rec = self.latency_arm(cache, "latency-threshold")
        models = {"latency-target": lt, "flops-target": ft, "latency-threshold": th}
        for arm, model in models.items():
            save_model(model, self.folder / f"{arm}.safetensors")
        record = {"latency-target": lt_rec, "flops-target": ft_rec, "latency-threshold": th_rec,
                  "prune_seconds": time.perf_counter() - start}
        write_record(self.folder / "pruned.json", record)
        return models, record

    def timed(self, models: Mapping[str, nn.Module]) -> dict[str, Any]:
        """``models`` and the unpruned model timed side by side in interleaved rounds (ratios: medians of per-round ratios)."""
        with steady_malloc_here():
            timing = measure_latency({"unpruned": self.sparse, **models}, INPUT_SHAPE, runtime=RUNTIME, batches=(self.batch,),
                                     rounds=ROUNDS, threads=self.threads, min_round_seconds=ROUND_SECONDS).batches[0]
        return {"median_ms": timing.median_ms, "ratio_to_unpruned": {a: timing.ratio_to_first[a] for a in models},
                "round_ms": timing.ms}

    def run(self) -> dict[str, Any]:
        """The cell's record (read back when an earlier run finished it)."""
        done = read_record(self.folder / "cell.json")
        if done is not None and set(done["arms"]) == set(ARMS):
            return done
        cell = self.measure_and_finetune()
        write_record(self.folder / "cell.json", cell)
        return cell

    def measure_and_finetune(self) -> dict[str, Any]:
        started = time.perf_counter()
        models, record = self.pruned()
        timing = self.timed(models)
        arms = {}
        for arm, model in models.items():
            counted = count_model(model, INPUT_SHAPE)
            top1_pruned = self.bench.top1(model)  # before fine-tuning, which trains the model in place
            tuned, ft_rec = train_stage(finetune_config(self.bench.base, self.bench.proto, self.folder / arm / "finetune"),
                                        model=model)
            arms[arm] = {"macs": counted.macs, "params": counted.params, "macs_cut": 1.0 - counted.macs / self.macs,
                         "latency_ratio": timing["ratio_to_unpruned"][arm], "pruning": record[arm],
                         "top1_pruned": top1_pruned, "finetune": {**ft_rec, "per_image": self.bench.per_image(tuned)}}
        unpruned = count_model(self.sparse, INPUT_SHAPE)
        return {"batch": self.batch, "threads": self.threads, "runtime": RUNTIME, "target_latency_reduction": self.target,
                "unpruned": {"macs": unpruned.macs, "params": unpruned.params, "top1": self.bench.top1(self.sparse),
                             "ms": timing["median_ms"]["unpruned"]},
                "arms": arms, "timing": timing, "prune_seconds": record["prune_seconds"],
                "match_ratios": {"latency-target": record["flops-target"]["latency_target_ratio"],
                                 "flops-target": record["flops-target"]["matched_ratio"],
                                 "latency-threshold": record["latency-threshold"]["measured_latency_ratio"]},  # its own check
                "paired": paired(arms["flops-target"]["finetune"]["per_image"], arms["latency-target"]["finetune"]["per_image"]),
                "paired_threshold": paired(arms["flops-target"]["finetune"]["per_image"],
                                           arms["latency-threshold"]["finetune"]["per_image"]),
                "latency_ratios_differ_by": abs(arms["latency-target"]["latency_ratio"] - arms["flops-target"]["latency_ratio"]),
                "wall_seconds": time.perf_counter() - started, "load_average_1min": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- the result file


def markdown(result: Mapping[str, Any]) -> str:
    from rendering.latency_accuracy import cells_markdown

    return "\n".join(["# Accuracy at equal latency: latency-target and latency-threshold vs flops-target (CIFAR-10, onnxruntime)", "",
                      provenance_markdown(result["provenance"]), "", cells_markdown(result)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56", help="comma-separated CIFAR models of bench_methods_cifar.py")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes whose latency counts")
    parser.add_argument("--target", type=float, default=0.5, help="latency-target's --target-latency-reduction")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="~/.cache/polarprune/bench_methods",
                        help="bench_methods_cifar.py's work folder (its polarization sparsity stage is reused)")
    add_provenance_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checked_revision(args.allow_dirty)  # before the training, not after it
    torch.set_num_threads(args.threads)
    proto = PROTOCOLS["cpu"]
    cells: dict[str, Any] = {}
    for name in [m for m in args.models.split(",") if m]:
        bench = Bench(argparse.Namespace(model=name, protocol="cpu", workdir=args.workdir, seed=args.seed, device="cpu"))
        for batch in [int(b) for b in args.batches.split(",") if b]:
            key = f"{name}/{batch}"
            print(f"== {key}", flush=True)
            try:
                cells[key] = {"model": name, **Cell(bench, batch, args.threads, args.target).run()}
            except PolarpruneError as exc:  # latency-target missed its target: said in the file, the other cells go on
                cells[key] = {"model": name, "batch": batch, "error": str(exc)}
            prov = provenance(args.seed, LIBRARIES, data=bundle_sizes(bench.bundle, ARCHIVE), allow_dirty=args.allow_dirty)
            result = {"benchmark": STEM, "protocol": {"runtime": RUNTIME, "target_latency_reduction": args.target,
                                                      "tolerance": TOLERANCE, "match": MATCH, "span": SPAN, "step": STEP, "threads": args.threads,
                                                      "rounds": ROUNDS, "settings": proto},
                      "provenance": prov, "cells": cells}
            print("wrote", *write_results(STEM, result, markdown(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
