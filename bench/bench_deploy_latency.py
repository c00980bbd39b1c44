"""Latency per runtime of pruned models: polarprune vs Torch-Pruning at equal MACs, vs unpruned.

For CIFAR ResNet-56 (32x32) and torchvision ResNet-50 (224x224) with synthetic
sparsity-trained gammas (``bench_pruned_latency.randomise``: uniform in [0, 1], a shared 30%
of every residual group near 0; random running statistics; no training),
``prune_model(strategy="flops-target", target_macs_reduction=0.5, round_to=16)`` gives
*polarprune* (round_to 16: oneDNN's fp32 channel block on AVX-512, the recommended rounding
for CPU inference). Torch-Pruning prunes the same model (same gammas) to the same MACs with
its own ``BNScalePruner`` (global pruning, |gamma| importance; its ``pruning_ratio`` bisected
until the MACs reduction matches polarprune's): *tp* with its default widths and *tp-r16*
with its own ``round_to=16``. On the CIFAR ResNet, Torch-Pruning cannot trace the option-A
shortcut, so its residual stream is left to it unpruned (``tp_baselines.residual_stream_layers``);
on ResNet-50 only the classifier is excluded.

All models of one model run side by side in each runtime (``polarprune.deploy.measure_latency``:
interleaved rounds, medians, per-round ratios to the unpruned model), at batch 1 and 64, in
eager fp32 (NCHW), eager channels_last, eager bf16 (channels_last) and onnxruntime (CPU
provider, the model exported for the timed batch). The script restarts itself with glibc told
to keep freed memory (``STEADY_MALLOC_ENV``). The figure of merit is latency cut / MACs cut
(1.0: the time falls as fast as the MACs).

    .venv/bin/python bench/bench_deploy_latency.py [--threads 1] [--rounds 7] [--r50-rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pruned_latency import randomise  # noqa: E402
from common import RANDOM_INPUTS, add_provenance_options, provenance, provenance_markdown, write_results  # noqa: E402
from tp_baselines import bisect_ratio, macs_reduction, residual_stream_layers  # noqa: E402

from polarprune.deploy import RUNTIMES, measure_latency  # noqa: E402
from polarprune.deploy.latency import reexec_with_steady_malloc, steady_malloc  # noqa: E402
from polarprune.flops import count_model  # noqa: E402
from polarprune.models import create  # noqa: E402
from polarprune.pruning import prune_model  # noqa: E402

LIBRARIES = ("polarprune", "torch", "torchvision", "numpy", "torch-pruning", "onnx", "onnxruntime", "onnxscript")
GOAL = 0.9  # latency cut / MACs cut for polarprune at batch 64 in at least one CPU runtime
BIG_BATCH = 64
EQUAL_MACS = 0.02  # MACs cuts within 2 points count as equal


def tp_ignored_layers(name: str, model: nn.Module) -> list[nn.Module]:
    """What Torch-Pruning must leave alone: the CIFAR ResNet's option-A residual stream, or the classifier."""
    if name == "resnet56":
        return residual_stream_layers(model)
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def tp_prune_to_macs(name: str, model: nn.Module, example: torch.Tensor, target: float, round_to: int | None) -> tuple[nn.Module, float, float]:
    """Torch-Pruning's BNScalePruner (global, |gamma|) on a copy of ``model`` at ``target`` MACs reduction:
    (model, pruning_ratio, reduction reached)."""
    shape = tuple(example.shape[1:])
    base_macs = count_model(model, shape).macs

    def pruned_at(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model).eval()
        pruner = tp.pruner.BNScalePruner(candidate, example, tp.importance.BNScaleImportance(), global_pruning=True,
                                         pruning_ratio=ratio, ignored_layers=tp_ignored_layers(name, candidate), round_to=round_to)
        pruner.step()
        return candidate

    ratio, _ = bisect_ratio(lambda r: macs_reduction(pruned_at(r), base_macs, shape), target, tolerance=0.004)
    final = pruned_at(ratio)
    return final.eval(), ratio, macs_reduction(final, base_macs, shape)


def bench_model(name: str, size: int, rounds: int, threads: int, seed: int, extra_round_to: tuple[int, ...] = ()) -> dict[str, Any]:
    torch.manual_seed(seed)
    base = create(name).eval()
    example = torch.randn(1, 3, size, size)
    randomise(base, example, seed)
    ours, report = prune_model(base, example, "flops-target", target_macs_reduction=0.5, round_to=16)
    shape = (3, size, size)
    reached = macs_reduction(ours, count_model(base, shape).macs, shape)
    tp_default, tp_ratio, tp_reached = tp_prune_to_macs(name, base, example, reached, None)
    tp_r16, tp16_ratio, tp16_reached = tp_prune_to_macs(name, base, example, reached, 16)
    models = {"unpruned": base, "polarprune": ours.eval()}
    extra = {}
    for k in extra_round_to:  # other roundings of polarprune, same gammas and MACs target
        variant, variant_report = prune_model(base, example, "flops-target", target_macs_reduction=0.5, round_to=k)
        models[f"polarprune-r{k}"] = variant.eval()
        extra[f"polarprune-r{k}"] = {"round_to": k, "threshold": float(variant_report.options["threshold"])}
    models.update({"tp": tp_default, "tp-r16": tp_r16})
    macs = {k: count_model(v, shape).macs for k, v in models.items()}
    result: dict[str, Any] = {
        "model": name, "input_size": size, "rounds": rounds,
        "macs": macs, "macs_cut": {k: 1 - v / macs["unpruned"] for k, v in macs.items()},
        "params": {k: sum(p.numel() for p in v.parameters()) for k, v in models.items()},
        "variants": list(models),
        "polarprune": {"round_to": 16, "threshold": float(report.options["threshold"]), "removed_blocks": len(report.removed_blocks)},
        "polarprune_other_roundings": extra,
        "torch_pruning": {"tp": {"pruning_ratio": tp_ratio, "round_to": None}, "tp-r16": {"pruning_ratio": tp16_ratio, "round_to": 16}},
        "runtimes": {},
    }
    for runtime in RUNTIMES:
        print(f"  {name} {runtime} ...", file=sys.stderr, flush=True)
        start = time.time()
        measured = measure_latency(models, shape, runtime=runtime, batches=(1, BIG_BATCH), rounds=rounds, threads=threads, seed=seed)
        per_batch = {}
        for entry in measured.as_dict()["batches"]:
            cuts = {k: 1 - r for k, r in entry["ratio_to_first"].items()}
            per_batch[str(entry["batch"])] = {
                **entry,
                "latency_cut": cuts,
                "cut_over_macs_cut": {k: cuts[k] / result["macs_cut"][k] for k in models if k != "unpruned"},
            }
        result["runtimes"][runtime] = {"batches": per_batch, "seconds": time.time() - start}
    big = {rt: r["batches"][str(BIG_BATCH)]["cut_over_macs_cut"] for rt, r in result["runtimes"].items()}
    equal = [k for k in ("tp", "tp-r16") if abs(result["macs_cut"][k] - result["macs_cut"]["polarprune"]) <= EQUAL_MACS]
    best_runtime = max(big, key=lambda rt: big[rt]["polarprune"])
    result["goal"] = {
        "batch": BIG_BATCH, "required": GOAL, "best_runtime": best_runtime, "best": big[best_runtime]["polarprune"],
        "met": big[best_runtime]["polarprune"] >= GOAL,
        # only where Torch-Pruning reached the same MACs (its round_to=16 cannot always: coarse steps)
        "equal_macs": equal,
        "not_below_torch_pruning": {rt: {k: v["polarprune"] >= v[k] for k in equal} for rt, v in big.items()},
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Latency per runtime: polarprune vs Torch-Pruning at equal MACs (CPU)", "",
             provenance_markdown(result["provenance"]), "",
             f"Threads {result['threads']} (torch intra-op and onnxruntime intra-op); allocator "
             f"{'glibc keeps freed memory (STEADY_MALLOC_ENV)' if result['steady_malloc'] else 'glibc default'}; "
             f"load average at start {result['load_start']}, at end {result['load_end']}; {result['wall_seconds'] / 60:.1f} min.", "",
             "Synthetic sparsity-trained gammas (no training): accuracy is not measured here, only speed at equal MACs.", ""]
    if not result.get("complete", True):
        lines += ["**Incomplete run**: the models below are those measured before the run stopped.", ""]
    for r in result["models"]:
        lines.append(f"## {r['model']} ({r['input_size']} px), {r['rounds']} interleaved rounds")
        lines.append("")
        lines.append("| variant | MACs | MACs cut | params |")
        lines.append("|---|---:|---:|---:|")
        for k in r["macs"]:
            lines.append(f"| {k} | {r['macs'][k]:,} | {r['macs_cut'][k]:.1%} | {r['params'][k]:,} |")
        lines.append("")
        variants = r.get("variants", list(r["macs"]))
        pruned = variants[1:]
        lines.append("| runtime | batch | " + " | ".join(f"{v} ms" for v in variants) + " | "
                     + " | ".join(f"{v} cut / MACs cut" for v in pruned) + " |")
        lines.append("|---|---:|" + "---:|" * (len(variants) + len(pruned)))
        for rt, per_runtime in r["runtimes"].items():
            for batch, b in per_runtime["batches"].items():
                ms, ratio = b["median_ms"], b["cut_over_macs_cut"]
                cells = [f"{ms[v]:.2f}" for v in variants] + [f"**{ratio[v]:.2f}**" if v == "polarprune" else f"{ratio[v]:.2f}" for v in pruned]
                lines.append(f"| {rt} | {batch} | " + " | ".join(cells) + " |")
        g = r["goal"]
        lines.append("")
        lines.append(f"- Goal (polarprune latency cut / MACs cut >= {g['required']} at batch {g['batch']} in at least one CPU runtime): "
                     f"best {g['best']:.2f} in {g['best_runtime']}: {'MET' if g['met'] else 'NOT MET'}.")
        lines.append(f"- Torch-Pruning variants at equal MACs (within {EQUAL_MACS:.0%}): {', '.join(g['equal_macs']) or 'none'}.")
        below = [f"{rt} vs {k}" for rt, v in g["not_below_torch_pruning"].items() for k, ok in v.items() if not ok]
        lines.append(f"- polarprune below Torch-Pruning at batch {g['batch']}: {', '.join(below) if below else 'never'}.")
        lines.append(f"- polarprune: round_to 16, threshold {r['polarprune']['threshold']:.4f}, {r['polarprune']['removed_blocks']} residual branches removed; "
                     f"Torch-Pruning pruning_ratio {r['torch_pruning']['tp']['pruning_ratio']:.4f} (tp), {r['torch_pruning']['tp-r16']['pruning_ratio']:.4f} (tp-r16).")
        lines.append("")
    lines.append("Latency cut = 1 - median of the per-round latency ratios to the unpruned model; cut / MACs cut = 1 means the "
                 "time falls exactly as the MACs do. eager-bf16: bfloat16 weights and input, channels_last. onnxruntime: "
                 "CPU provider, graph optimisations on, exported (and verified) for the timed batch size.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1 on a shared machine)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds for ResNet-56")
    parser.add_argument("--r50-rounds", type=int, default=3, help="interleaved rounds for ResNet-50 (batch 64: seconds a forward)")
    parser.add_argument("--models", default="resnet56,resnet50", help="comma-separated: resnet56, resnet50")
    parser.add_argument("--extra-round-to", default="", help="comma-separated: also time polarprune pruned with these round_to values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-stem", default="deploy_latency", help="result file name under bench/results/")
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_provenance_options(parser)
    args = parser.parse_args()
    reexec_with_steady_malloc()
    wanted = args.models.split(",")
    if set(wanted) - {"resnet56", "resnet50"}:
        parser.error(f"--models: choose from resnet56, resnet50, got {args.models!r}")
    try:
        extra_round_to = tuple(int(v) for v in args.extra_round_to.split(",") if v)
    except ValueError:
        parser.error(f"--extra-round-to: expected comma-separated integers, got {args.extra_round_to!r}")
    torch.set_num_threads(args.threads)
    start = time.time()
    result: dict[str, Any] = {"provenance": provenance(args.seed, LIBRARIES, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty), "threads": args.threads, "steady_malloc": steady_malloc(),
                              "load_start": [round(v, 2) for v in os.getloadavg()], "models": []}
    for name, size, rounds in (("resnet56", 32, args.rounds), ("resnet50", 224, args.r50_rounds)):
        if name in wanted:
            print(f"{name} ...", file=sys.stderr, flush=True)
            result["models"].append(bench_model(name, size, rounds, args.threads, args.seed, extra_round_to))
            result["complete"] = len(result["models"]) == len(wanted)
            result["load_end"] = [round(v, 2) for v in os.getloadavg()]
            result["wall_seconds"] = time.time() - start
            text = markdown(result)
            if not args.no_write:  # after each model: a long run that is cut short keeps what it measured
                print("wrote", *write_results(args.out_stem, result, text), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
