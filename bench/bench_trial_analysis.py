"""Pruning and trial-prune costs on torchvision ResNet-50 at 224 px, side by side in one run.

Three comparisons, each measured round-robin (every repeat runs each candidate once, so drifts
of a shared machine hit them alike), medians of ``--repeats``:

1. ``prune_model`` (``uniform``, ratio 0.5, with compensation and its output check, in place
   on a fresh copy) against Torch-Pruning's own ``MagnitudePruner`` (L1 importance, the same
   uniform ratio, on a fresh copy); the copies are not timed;
2. building the trial analysis (``TrialAnalysis(model, x)``, once per sparsity run) against
   one ``prune_model`` analysis (adapt + ``analyze`` a copy);
3. one per-epoch trial decision (``TrialAnalysis.macs_ratio(model, "grad")`` on polarized
   gammas, not cached).

Run: ``python bench/bench_trial_analysis.py [--repeats 5] [--threads 2]``; results in
``bench/results/trial_analysis.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RANDOM_INPUTS, add_provenance_options, clock, provenance, provenance_markdown, summary, write_results  # noqa: E402

from polarprune.pruning import TrialAnalysis, prune_model  # noqa: E402
from polarprune.pruning.api import analysed_copy  # noqa: E402


def polarize(model: torch.nn.Module, seed: int) -> None:
    """About 40 % of every BN's gammas near 0, the rest in [0.3, 0.8): a trial has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                low = torch.rand(m.num_features, generator=g) < 0.4
                m.weight.copy_(torch.where(low, torch.rand(m.num_features, generator=g) * 0.008,
                                           0.3 + 0.5 * torch.rand(m.num_features, generator=g)))


def tp_prune(model: torch.nn.Module, example: torch.Tensor, ratio: float) -> None:
    """Torch-Pruning's MagnitudePruner, uniform ratio, classifier left whole."""
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[model.fc])
    pruner.step()


def timed(setup: Callable[[], Any], run: Callable[[Any], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run(setup())``; the setup (a fresh copy) is not timed."""
    state = setup()
    wall, cpu = clock()
    run(state)
    wall_end, cpu_end = clock()
    return wall_end - wall, cpu_end - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stem", default="trial_analysis")
    add_provenance_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet50(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    polarized = copy.deepcopy(model)
    polarize(polarized, args.seed)

    # warm-up (allocator, lazy imports), not recorded
    prune_model(copy.deepcopy(model), example, "uniform", ratio=args.ratio, inplace=True)
    tp_prune(copy.deepcopy(model), example, args.ratio)
    trial = TrialAnalysis(polarized, example)
    trial.macs_ratio(polarized, "grad")

    names = ("prune_model", "torch_pruning", "trial_build", "prune_analysis", "trial_decision")
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    runs: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
        "prune_model": (lambda: copy.deepcopy(model), lambda m: prune_model(m, example, "uniform", ratio=args.ratio, inplace=True)),
        "torch_pruning": (lambda: copy.deepcopy(model), lambda m: tp_prune(m, example, args.ratio)),
        "trial_build": (lambda: None, lambda _: TrialAnalysis(polarized, example)),
        "prune_analysis": (lambda: None, lambda _: analysed_copy(polarized, example)),
        "trial_decision": (lambda: None, lambda _: trial.macs_ratio(polarized, "grad")),
    }
    for _ in range(args.repeats):
        for name, (setup, run) in runs.items():
            wall, cpu = timed(setup, run)
            walls[name].append(wall)
            cpus[name].append(cpu)
    _, report = prune_model(copy.deepcopy(model), example, "uniform", ratio=args.ratio, inplace=True)
    m = {k: summary(v)["median"] for k, v in walls.items()}
    c = {k: summary(v)["median"] for k, v in cpus.items()}
    result = {
        "provenance": provenance(args.seed, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty),
        "model": "torchvision resnet50", "input": [1, 3, 224, 224], "ratio": args.ratio, "repeats": args.repeats,
        "threads": args.threads, "load_average_1min": os.getloadavg()[0],
        "wall_seconds": {k: summary(v) for k, v in walls.items()},
        "cpu_seconds": {k: summary(v) for k, v in cpus.items()},
        "prune_over_torch_pruning": m["prune_model"] / m["torch_pruning"],
        "prune_over_torch_pruning_cpu": c["prune_model"] / c["torch_pruning"],
        "trial_build_over_prune_analysis": m["trial_build"] / m["prune_analysis"],
        "trial_decision_seconds": m["trial_decision"],
        "prune_report_seconds": {k: round(v, 4) for k, v in report.seconds.items()},
        "prune_macs_reduction": report.macs_reduction,
        "prune_max_abs_output_diff": report.max_abs_output_diff,
        "trial_macs_ratio_grad": trial.macs_ratio(polarized, "grad"),
    }
    md = "\n".join([
        "# Pruning and trial-prune costs on ResNet-50 (CPU, side by side)", "",
        provenance_markdown(result["provenance"]), "",
        f"torchvision ResNet-50, input 1x3x224x224, {args.threads} threads, medians of {args.repeats} round-robin repeats "
        f"(wall clock; CPU seconds of the process in brackets; 1-minute load average {result['load_average_1min']:.1f} "
        f"on {os.cpu_count()} CPUs at the end).", "",
        "| comparison | polarprune (s) | reference (s) | ratio |",
        "|---|---|---|---|",
        f"| `prune_model` uniform {args.ratio} (compensation + output check) vs Torch-Pruning `MagnitudePruner` | "
        f"{m['prune_model']:.3f} ({c['prune_model']:.3f}) | {m['torch_pruning']:.3f} ({c['torch_pruning']:.3f}) | "
        f"{result['prune_over_torch_pruning']:.2f}x ({result['prune_over_torch_pruning_cpu']:.2f}x) |",
        f"| building `TrialAnalysis` vs one `prune_model` analysis | {m['trial_build']:.3f} ({c['trial_build']:.3f}) | "
        f"{m['prune_analysis']:.3f} ({c['prune_analysis']:.3f}) | {result['trial_build_over_prune_analysis']:.2f}x |",
        f"| one per-epoch trial decision (`grad`, polarized gammas) | {m['trial_decision']:.3f} ({c['trial_decision']:.3f}) | "
        f"0.3 (budget) | {m['trial_decision'] / 0.3:.2f}x |",
        "",
        f"`prune_model`'s own split (last run): {result['prune_report_seconds']}.",
    ]) + "\n"
    json_path, _ = write_results(args.stem, result, md)
    print(md)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
