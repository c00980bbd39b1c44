"""CPU latency of the paper-accounting residual mode (``residual: scatter``) against polarprune's default.

CIFAR ResNet-56 (32x32) with random BN statistics and ``round(0.4*C)`` random channels of every
block's bn1 and bn2 at gamma = beta = 0 (each BN its own channels, as a sparsity run leaves
them), pruned with the ``fixed`` threshold 0.01 two ways:

- *default*: ``prune_model`` (residual channels leave only when the whole coupled group agrees,
  here almost never; bn1 channels leave);
- *scatter*: ``pruning.scatter.apply_scatter`` (the original's accounting: every bn2 prunes its
  conv's outputs, which are scattered back to full width before the addition).

Both are exact on these gammas (the logits match the unpruned model's). The script reports
each variant's MACs, the original accounting's MACs of the per-BN decision, and the latency
of all three variants at batch 1 and 64, interleaved round-robin (paired per-round ratios),
one torch thread, glibc told to keep freed memory (``common.STEADY_MALLOC_ENV``).

    .venv/bin/python bench/bench_scatter_latency.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RANDOM_INPUTS,
    add_provenance_options,
    interleaved,
    paired_ratios,
    provenance,
    provenance_markdown,
    reexec_with_steady_malloc,
    steady_malloc,
    summary,
    write_results,
)

from polarprune.flops import count_model  # noqa: E402
from polarprune.models import create  # noqa: E402
from polarprune.pruning import prune_model  # noqa: E402
from polarprune.pruning.scatter import apply_scatter, original_macs, scatter_keep_masks  # noqa: E402


def zero_block_channels(model: nn.Module, fraction: float, seed: int) -> None:
    """Random BN statistics; ``round(fraction*C)`` random channels of every block BN at gamma = beta = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, bn in model.named_modules():
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            c = bn.num_features
            bn.weight.copy_(0.2 + 0.8 * torch.rand(c, generator=g))
            bn.bias.copy_(0.2 * torch.rand(c, generator=g) - 0.1)
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if name.startswith("layer") and name.endswith(("bn1", "bn2")):
                dead = torch.randperm(c, generator=g)[: round(fraction * c)]
                bn.weight[dead] = 0.0
                bn.bias[dead] = 0.0


def forward_fn(model: nn.Module, x: torch.Tensor, calls: int) -> Any:
    def run() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                model(x)

    return run


def run(repeats: int, seed: int, fraction: float) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = create("resnet56", num_classes=10).eval()
    zero_block_channels(model, fraction, seed)
    example = torch.randn(1, 3, 32, 32)
    default, report = prune_model(model, example, "fixed", threshold=0.01)
    keep = scatter_keep_masks(model, "fixed", threshold=0.01)
    scattered, emptied = apply_scatter(model, keep)
    variants = {"unpruned": model, "default": default.eval(), "scatter": scattered.eval()}
    macs = {k: count_model(v, example).macs for k, v in variants.items()}
    check = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        reference = model(check)
        logit_diff = {k: float((v(check) - reference).abs().max()) for k, v in variants.items() if k != "unpruned"}
    result: dict[str, Any] = {
        "model": "resnet56",
        "zero_fraction": fraction,
        "macs": macs,
        "macs_ratio": {k: v / macs["unpruned"] for k, v in macs.items()},
        "original_accounting_macs": original_macs(model, example, keep),
        "params": {k: sum(p.numel() for p in v.parameters()) for k, v in variants.items()},
        "emptied_blocks_scatter": emptied,
        "removed_blocks_default": report.removed_blocks,
        "max_abs_logit_diff": logit_diff,
        "latency": {},
    }
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        calls = max(1, 8 // batch)
        times = interleaved({k: forward_fn(v, x, calls) for k, v in variants.items()}, rounds=repeats, warmup=1)
        per_forward = {k: [t / calls for t in ts] for k, ts in times.items()}
        ratios = {k: statistics.median(paired_ratios(per_forward[k], per_forward["unpruned"])) for k in ("default", "scatter")}
        scatter_vs_default = statistics.median(paired_ratios(per_forward["scatter"], per_forward["default"]))
        result["latency"][str(batch)] = {
            "seconds": {k: summary(v) for k, v in per_forward.items()},
            "ratio_to_unpruned": ratios,
            "scatter_over_default": scatter_vs_default,
        }
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Scatter (paper accounting) vs polarprune's default: ResNet-56 latency (CPU)", "",
             provenance_markdown(result["provenance"]), "",
             f"Load average (1/5/15 min) at start {result['load_start']}, at end {result['load_end']}; torch threads "
             f"{result['threads']}; allocator {'steady (STEADY_MALLOC_ENV)' if result['steady_malloc'] else 'default glibc'}.", "",
             f"Gammas: {result['zero_fraction']:.0%} of every block bn1/bn2 at gamma = beta = 0 (random channels per BN); "
             "`fixed` threshold 0.01.", "",
             "| variant | MACs | MACs ratio | params | max abs logit diff | batch 1 median (ms) | ratio | batch 64 median (ms) | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lat = result["latency"]
    for k in ("unpruned", "default", "scatter"):
        diff = "-" if k == "unpruned" else f"{result['max_abs_logit_diff'][k]:.2g}"
        cells = []
        for batch in ("1", "64"):
            ratio = "1" if k == "unpruned" else f"{lat[batch]['ratio_to_unpruned'][k]:.3f}"
            cells += [f"{lat[batch]['seconds'][k]['median'] * 1000:.2f}", ratio]
        lines.append(f"| {k} | {result['macs'][k]:,} | {result['macs_ratio'][k]:.4f} | {result['params'][k]:,} | {diff} | " + " | ".join(cells) + " |")
    lines += ["", f"Original accounting of the per-BN decision: {result['original_accounting_macs']:,} MACs "
              f"(= the scatter model's count: {result['original_accounting_macs'] == result['macs']['scatter']}).",
              f"Scatter latency / default latency (median of paired rounds): batch 1 {lat['1']['scatter_over_default']:.3f}, "
              f"batch 64 {lat['64']['scatter_over_default']:.3f}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--fraction", type=float, default=0.4, help="fraction of every block BN's channels at 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_provenance_options(parser)
    args = parser.parse_args()
    reexec_with_steady_malloc()
    torch.set_num_threads(args.threads)
    start = time.time()
    result: dict[str, Any] = {"provenance": provenance(args.seed, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty), "threads": args.threads,
                              "load_start": [round(v, 2) for v in os.getloadavg()], "steady_malloc": steady_malloc()}
    result.update(run(args.repeats, args.seed, args.fraction))
    result["load_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_seconds"] = time.time() - start
    text = markdown(result)
    print(text)
    if not args.no_write:
        print("wrote", *write_results("scatter_latency", result, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
