"""How long the latency cost model's profiling takes, and how close its prediction is to a measurement.

For each CIFAR ResNet (32x32 input, random weights): build ``deploy.latency_cost_model`` in a fresh cache
folder (timed: the profiling), build it again (timed: a cache hit), then prune with ``uniform`` at
ratio 0.5 and compare the predicted latency ratio (pruned / unpruned) with the measured one
(``measure_latency``: interleaved rounds, medians). Runtime ``--runtime`` (default eager), one thread.

Run: ``python bench/bench_latency_profile.py [--models resnet20,resnet56] [--batches 1,64]``; results in
``bench/results/latency_profile.{json,md}`` (``latency_profile_RUNTIME`` for ``--runtime`` other than eager).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RANDOM_INPUTS, add_provenance_options, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.deploy.latency import measure_latency, steady_malloc_here  # noqa: E402
from polarprune.deploy.latency_cost import latency_cost_model  # noqa: E402
from polarprune.models import create  # noqa: E402
from polarprune.pruning import prune_model  # noqa: E402
from polarprune.pruning.graph import analysed_copy  # noqa: E402


def profile_model(name: str, runtime: str, batch: int, threads: int) -> dict[str, Any]:
    """Profiling time (fresh and cached) and predicted vs measured ratio of a uniform-0.5 pruning."""
    torch.manual_seed(0)
    model = create(name, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cost = latency_cost_model(model, x, runtime, batch, threads, cache_dir=cache)
        fresh = time.perf_counter() - start
        start = time.perf_counter()
        latency_cost_model(model, x, runtime, batch, threads, cache_dir=cache)
        cached = time.perf_counter() - start
        files = len(list(Path(cache).glob("*.json")))
    pruned, _ = prune_model(model, x, "uniform", ratio=0.5)
    before, after = cost.cost(analysed_copy(model, x), {}, ()), cost.cost(analysed_copy(pruned, x), {}, ())
    with steady_malloc_here():  # as prune_to_latency's end-to-end check (and the tables) run
        measured = measure_latency({"unpruned": model, "pruned": pruned}, (3, 32, 32), runtime=runtime, batches=(batch,),
                                   rounds=7, threads=threads).batches[0]
    return {"model": name, "runtime": runtime, "batch": batch, "threads": threads, "layers": len(cost.tables),
            "cache_files": files, "profile_seconds": round(fresh, 2), "cached_seconds": round(cached, 3),
            "predicted_ms_unpruned": round(before, 4), "predicted_ms_pruned": round(after, 4),
            "measured_ms_unpruned": round(measured.median_ms["unpruned"], 4), "measured_ms_pruned": round(measured.median_ms["pruned"], 4),
            "predicted_ratio": round(after / before, 3), "measured_ratio": round(measured.ratio_to_first["pruned"], 3),
            "load_average_1min": os.getloadavg()[0]}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Latency cost model: profiling time and prediction (CPU)", "", provenance_markdown(result["provenance"]), "",
             "CIFAR ResNets, random weights, 32x32 input. Profiling: every conv (with BN and ReLU) and the linear "
             "layer timed alone over a grid of widths (1, multiples of 8 or of width/4 when narrower, the full width; "
             "at most 9 per side), all points of a layer side by side in interleaved rounds; then the whole model with "
             "its full-width layers once. Prediction vs measurement: `uniform` ratio 0.5, ratio pruned / unpruned "
             "(measured: median of the per-round ratios of 7 interleaved rounds). Tables and measurement with glibc "
             "keeping freed memory (`steady_malloc_here`).", "",
             "| model | runtime | batch | threads | layers | cache files | profiling (s) | cached (s) | predicted ratio | measured ratio | predicted ms (unpruned) | measured ms (unpruned) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['threads']} | {r['layers']} | {r['cache_files']} | "
                     f"{r['profile_seconds']:.1f} | {r['cached_seconds']:.2f} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{r['predicted_ms_unpruned']:.3f} | {r['measured_ms_unpruned']:.3f} | {r['load_average_1min']:.1f} |")
    lines += ["", "Shared 2-core machine: profiling times taken under load are upper bounds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--runtime", default="eager")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=1)
    add_provenance_options(parser)
    args = parser.parse_args(argv)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(profile_model(name, args.runtime, batch, args.threads))
            print(rows[-1], flush=True)
    result = {"benchmark": "latency_profile", "provenance": provenance(0, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty),
              "models": rows}
    write_results("latency_profile" if args.runtime == "eager" else f"latency_profile_{args.runtime}", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
