"""CPU latency of pruned models: polarprune's surgery against the unpruned model and against
ChannelExpand-style pruning (acceptance: at batch 64 the latency cut >= 0.7 x the MACs cut).

For CIFAR ResNet-56 (32x32) and torchvision ResNet-50 (224x224), with synthetic
sparsity-trained gammas (uniform in [0, 1]; in every residual group a shared 30% of the
channels near 0 in all its BNs) and random running statistics,
``prune_model(strategy="flops-target", target_macs_reduction=0.5, round_to=N)`` gives the
*pruned* model, once per ``--round-to`` value (default 1 and 16: without rounding, and with
every kept count rounded up to a multiple of 16, oneDNN's channel block on AVX-512). The
script restarts itself with glibc told to keep freed memory (``common.STEADY_MALLOC_ENV``),
so that page faults of freshly mapped activations do not blur the compute being compared.
The *expand* model removes the same channels (``plan_pruning``'s masks), but ChannelExpand
style: each block's output is sliced and scattered back to the full residual width (zeros
elsewhere) before the addition, so the residual width and every block's input width stay
full. Blocks whose inner width reaches 0 are their shortcut in both. Both memory layouts
(NCHW and channels_last) are timed. All three variants run side by side, interleaved round-robin, repeated;
the result reports medians, paired ratios and the pruning time of ResNet-50 (graph + surgery).

    .venv/bin/python bench/bench_pruned_latency.py [--repeats 7] [--threads 1] [--r50-batch 64] [--round-to 1,16]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RANDOM_INPUTS,
    add_provenance_options,
    interleaved,
    minor_page_faults,
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
from polarprune.pruning import channel_groups, plan_pruning, prune_model  # noqa: E402
from polarprune.pruning.graph import residual_blocks as find_blocks  # noqa: E402
from polarprune.pruning.surgery import slice_batchnorm, slice_conv_in, slice_conv_out  # noqa: E402


def randomise(model: nn.Module, example: Tensor, seed: int, residual_share: float = 0.3) -> None:
    """Synthetic sparsity-trained gammas: uniform in [0, 1], except that in every residual group
    a shared random ``residual_share`` of the channels has gamma in [0, 0.02] in all of the
    group's BNs (as if the regularizer had emptied them). Betas and running statistics random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        for group in channel_groups(model, example):
            if not (group.prunable and group.residual):
                continue
            dead = set(torch.randperm(group.num_channels, generator=g)[: int(residual_share * group.num_channels)].tolist())
            for item in group.bn_items():
                bn = model.get_submodule(item.module_name)
                for idx, root in zip(item.idxs, item.root_idxs):
                    if root in dead:
                        bn.weight[idx] = 0.02 * float(torch.rand(1, generator=g))


class ExpandBlock(nn.Module):
    """A residual block whose branch output (``keep`` channels) is scattered to full width before the add."""

    def __init__(self, block: nn.Module, branch: list[str], keep: list[int], width: int) -> None:
        super().__init__()
        self.branch = nn.ModuleList(getattr(block, name) for name in branch)
        self.shortcut = getattr(block, "downsample", None) or nn.Identity()
        self.register_buffer("index", torch.as_tensor(keep, dtype=torch.long))
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.branch:
            out = layer(out)
        layout = torch.channels_last if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous() else torch.contiguous_format
        full = torch.empty((out.shape[0], self.width, out.shape[2], out.shape[3]), dtype=out.dtype, memory_format=layout).zero_()
        full.index_copy_(1, self.index, out)
        return torch.relu(full + self.shortcut(x))


class ShortcutBlock(nn.Module):
    """A block whose branch is gone: ``relu(shortcut(x))``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.shortcut = getattr(block, "downsample", None) or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x))


def expand_variant(model: nn.Module, keep: dict[str, Tensor]) -> nn.Module:
    """ChannelExpand-style copy removing the same channels as ``keep`` (``plan_pruning``'s masks):
    inner channels sliced, each block's output sliced then scattered back to full width."""
    expanded = copy.deepcopy(model).eval()
    for name, info in find_blocks(expanded).items():
        block = expanded.get_submodule(name)
        prefix = f"{name}."
        convs = [a for a in info.branch if a.startswith("conv")]
        bns = [a for a in info.branch if a.startswith("bn")]
        if any(not bool(keep[prefix + bn].any()) for bn in bns[:-1]):
            replacement: nn.Module = ShortcutBlock(block)
        else:
            for conv, bn, next_conv in zip(convs[:-1], bns[:-1], convs[1:]):
                kept = torch.nonzero(keep[prefix + bn]).flatten().tolist()
                slice_conv_out(getattr(block, conv), kept)
                slice_batchnorm(getattr(block, bn), kept)
                slice_conv_in(getattr(block, next_conv), kept)
            last_bn = getattr(block, bns[-1])
            width = last_bn.num_features
            kept = torch.nonzero(keep[prefix + bns[-1]]).flatten().tolist()
            slice_conv_out(getattr(block, convs[-1]), kept)
            slice_batchnorm(last_bn, kept)
            replacement = ExpandBlock(block, info.branch, kept, width)
        parent_name, _, attr = name.rpartition(".")
        setattr(expanded.get_submodule(parent_name) if parent_name else expanded, attr, replacement)
    return expanded


def forward_fn(model: nn.Module, x: Tensor, calls: int) -> Any:
    def run() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                model(x)

    return run


def bench_model(name: str, size: int, batches: list[int], repeats: int, seed: int, round_to: int = 1) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = create(name).eval()
    example = torch.randn(1, 3, size, size)
    randomise(model, example, seed)
    pruned, report = prune_model(model, example, "flops-target", target_macs_reduction=0.5, round_to=round_to)
    threshold = float(report.options["threshold"])
    expanded = expand_variant(model, plan_pruning(model, example, "fixed", threshold=threshold, round_to=round_to))
    variants = {"unpruned": model, "pruned": pruned.eval(), "expand": expanded}
    macs = {k: count_model(v, example).macs for k, v in variants.items()}
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in variants.items()}
    with torch.inference_mode():
        check = torch.randn(2, 3, size, size)
        same = float((pruned(check) - model(check)).abs().max())
    result: dict[str, Any] = {
        "model": name,
        "input_size": size,
        "round_to": round_to,
        "threshold": threshold,
        "macs": macs,
        "macs_reduction": {k: 1 - v / macs["unpruned"] for k, v in macs.items()},
        "params": params,
        "removed_blocks": len(report.removed_blocks),
        "prune_seconds": report.seconds,
        "max_abs_logit_diff_pruned_vs_unpruned": same,
        "latency": {},
    }
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    for layout, memory_format in layouts.items():
        placed = {k: copy.deepcopy(v).to(memory_format=memory_format) for k, v in variants.items()}
        result["latency"][layout] = {}
        for batch in batches:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
            calls = max(1, 8 // batch)  # batch 1: several forwards per timed call
            times = interleaved({k: forward_fn(v, x, calls) for k, v in placed.items()}, rounds=repeats, warmup=1)
            per_forward = {k: [t / calls for t in ts] for k, ts in times.items()}
            faults = {}
            for k, v in placed.items():
                before = minor_page_faults()
                forward_fn(v, x, 1)()
                faults[k] = minor_page_faults() - before
            ratios = {k: statistics.median(paired_ratios(per_forward[k], per_forward["unpruned"])) for k in ("pruned", "expand")}
            result["latency"][layout][str(batch)] = {
                "seconds": {k: summary(v) for k, v in per_forward.items()},
                "ratio_to_unpruned": ratios,
                "latency_cut": {k: 1 - r for k, r in ratios.items()},
                "page_faults_per_forward": faults,
            }
    big = str(max(batches))
    result["acceptance"] = {}
    for layout in layouts:
        cut = result["latency"][layout][big]["latency_cut"]["pruned"]
        result["acceptance"][layout] = {
            "batch": int(big),
            "latency_cut": cut,
            "macs_reduction": result["macs_reduction"]["pruned"],
            "required": 0.7 * result["macs_reduction"]["pruned"],
            "passed": cut >= 0.7 * result["macs_reduction"]["pruned"],
        }
    return result


def pruning_time(size: int, seed: int, repeats: int = 3) -> dict[str, Any]:
    """prune_model timings of ResNet-50 (fixed threshold 0.5 on the random gammas): median per phase."""
    torch.manual_seed(seed)
    model = create("resnet50").eval()
    x = torch.randn(1, 3, size, size)
    randomise(model, x, seed)
    runs = [prune_model(model, x, "fixed", threshold=0.5)[1].seconds for _ in range(repeats)]
    phases = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    phases["graph_plus_surgery"] = phases["graph"] + phases["surgery"]
    phases["graph_decide_surgery"] = phases["graph"] + phases["decide"] + phases["surgery"]
    return {"example_input": [1, 3, size, size], "seconds": phases, "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Latency of pruned models (CPU)", "", provenance_markdown(result["provenance"]), ""]
    lines.append(f"Load average (1/5/15 min) at start {result['load_start']}, at end {result['load_end']}; "
                 f"torch threads {result['threads']}.")
    lines.append("")
    lines.append(f"Allocator: {'glibc keeps freed memory (STEADY_MALLOC_ENV)' if result['steady_malloc'] else 'default glibc'}; "
                 "page faults are counted over one forward after the timed rounds.")
    lines.append("")
    lines.append("| model | round_to | variant | MACs | MACs cut | layout | batch | median latency (ms) | latency cut | page faults / forward |")
    lines.append("|---|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for r in result["models"]:
        for layout, per_batch in r["latency"].items():
            for batch, lat in per_batch.items():
                for variant in ("unpruned", "pruned", "expand"):
                    cut = "-" if variant == "unpruned" else f"{lat['latency_cut'][variant]:.1%}"
                    lines.append(
                        f"| {r['model']} ({r['input_size']}px) | {r['round_to']} | {variant} | {r['macs'][variant]:,} | "
                        f"{r['macs_reduction'][variant]:.1%} | {layout} | {batch} | {lat['seconds'][variant]['median'] * 1000:.2f} | {cut} | "
                        f"{lat['page_faults_per_forward'][variant]:,} |"
                    )
    lines.append("")
    for r in result["models"]:
        for layout, a in r["acceptance"].items():
            seconds = r["latency"][layout][str(a["batch"])]["seconds"]
            cuts = [1 - p / u for p, u in zip(seconds["pruned"]["all"], seconds["unpruned"]["all"])]
            lines.append(f"- {r['model']}, round_to {r['round_to']}, {layout}: at batch {a['batch']} the latency cut is {a['latency_cut']:.1%} for a MACs cut of "
                         f"{a['macs_reduction']:.1%} (needs >= {a['required']:.1%}): {'PASS' if a['passed'] else 'FAIL'} "
                         f"(per-round cuts {min(cuts):.1%} .. {max(cuts):.1%} over {len(cuts)} rounds)")
        lines.append(f"- {r['model']}, round_to {r['round_to']}: {r['removed_blocks']} residual branches removed; threshold {r['threshold']:.4f}; "
                     f"max |logit diff| pruned vs unpruned {r['max_abs_logit_diff_pruned_vs_unpruned']:.3g} (random gammas: not zero)")
    lines.append("")
    lines.append("ResNet-50 pruning time (median seconds per phase of `prune_model`, `fixed` threshold 0.5):")
    lines.append("")
    lines.append("| example input | graph | decide | surgery | graph+surgery | graph+decide+surgery | compensation | total (with probes and report) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in result["pruning_time"]:
        s = t["seconds"]
        lines.append(f"| {'x'.join(map(str, t['example_input']))} | {s['graph']:.2f} | {s['decide']:.2f} | {s['surgery']:.2f} | "
                     f"{s['graph'] + s['surgery']:.2f} | {s['graph'] + s['decide'] + s['surgery']:.2f} | {s['compensation']:.2f} | {s['total']:.2f} |")
    lines.append("")
    lines.append("On this shared 2-core machine the load (above) makes single rounds noisy: the paired per-round "
                 "ratios are the robust measure, and the medians move by a few points between runs.")
    lines.append("")
    lines.append("*expand*: the seeds' ChannelExpand layout (residual width kept full, block outputs scattered "
                 "back with zeros). Latency cut = 1 - median of the per-round latency ratios to the unpruned model.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--r50-batch", type=int, default=64, help="the large batch of ResNet-50 (64: about 5 s a forward on one core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-to", default="1,16", help="comma-separated prune_model round_to values, one pruned model each")
    parser.add_argument("--models", default="resnet56,resnet50", help="comma-separated: resnet56, resnet50")
    parser.add_argument("--out-stem", default="pruned_latency", help="result file name under bench/results/")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--default-malloc", action="store_true",
                        help="time with glibc's default allocator settings (page faults included) instead of restarting with STEADY_MALLOC_ENV")
    add_provenance_options(parser)
    args = parser.parse_args()
    if not args.default_malloc:
        reexec_with_steady_malloc()
    torch.set_num_threads(args.threads)
    start = time.time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    result: dict[str, Any] = {"provenance": provenance(args.seed, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty), "threads": args.threads, "load_start": load_start,
                              "steady_malloc": steady_malloc()}
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - {"resnet56", "resnet50"})
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from resnet56, resnet50")
    try:
        roundings = [int(v) for v in args.round_to.split(",")]
    except ValueError:
        parser.error(f"--round-to: expected comma-separated integers, got {args.round_to!r}")
    result["round_to"] = roundings
    result["models"] = []
    for round_to in roundings:
        if "resnet56" in wanted:
            print(f"resnet56, round_to {round_to} ...", file=sys.stderr, flush=True)
            result["models"].append(bench_model("resnet56", 32, [1, 64], args.repeats, args.seed, round_to))
        if "resnet50" in wanted:
            print(f"resnet50, round_to {round_to} ...", file=sys.stderr, flush=True)
            result["models"].append(
                bench_model("resnet50", 224, [1, args.r50_batch], max(3, args.repeats // 2), args.seed, round_to)
            )
    result["pruning_time"] = [pruning_time(224, args.seed), pruning_time(64, args.seed)] if "resnet50" in wanted else []
    result["load_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_seconds"] = time.time() - start
    text = markdown(result)
    print(text)
    if not args.no_write:
        paths = write_results(args.out_stem, result, text)
        print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
