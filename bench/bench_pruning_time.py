"""Time of ``polarprune.pruning.prune_model`` (graph analysis + surgery) on torchvision models.

Each model is pruned with the ``uniform`` strategy (the same ratio in every prunable group) at
224x224; the wall time of the whole call is the median of ``--repeats`` runs on a fresh copy
(the copy is not timed). The report's own split (analysis / decision / surgery / check) is
recorded too, with MACs and parameters before and after.

Run: ``python bench/bench_pruning_time.py [--ratio 0.5] [--repeats 3]``; results in
``bench/results/pruning_time.{json,md}``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RANDOM_INPUTS, add_provenance_options, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.pruning import prune_model  # noqa: E402

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "densenet121", "efficientnet_b0",
          "regnet_x_400mf", "resnext50_32x4d")


def load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), None where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def time_model(name: str, ratio: float, repeats: int, seed: int) -> dict[str, Any]:
    """Prune ``name`` ``repeats`` times; median wall time and the report's numbers."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    seconds: list[float] = []
    report = None
    for _ in range(repeats):
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        _, report = prune_model(candidate, example, strategy="uniform", ratio=ratio, inplace=True, seed=seed)
        seconds.append(time.perf_counter() - start)
    assert report is not None
    rep = report.to_dict()
    return {
        "model": name,
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "report_seconds": rep.get("seconds"),
        "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
        "params_before": rep["params_before"], "params_after": rep["params_after"],
        "macs_reduction": 1 - rep["macs_after"] / rep["macs_before"],
        "params_reduction": 1 - rep["params_after"] / rep["params_before"],
        "max_abs_output_diff": rep.get("max_abs_output_diff"),
        "load_average_1min": load_average(),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Pruning time of `prune_model` on torchvision models (CPU)", "",
        provenance_markdown(result["provenance"]), "",
        f"Strategy `uniform`, ratio {result['ratio']}, input 1x3x224x224, median of {result['repeats']} runs "
        "(each on a fresh deep copy, `inplace=True`; the copy is not timed). The time covers tracing the graph, "
        "grouping, deciding, surgery, constant compensation and the output check against the original.", "",
        "| model | time (s) | MACs before (G) | MACs after (G) | MACs red. | params before (M) | params after (M) | params red. | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        if "error" in row:
            lines.append(f"| {row['model']} | error: {row['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['seconds_median']:.2f} | {row['macs_before'] / 1e9:.3f} | {row['macs_after'] / 1e9:.3f} | "
            f"{100 * row['macs_reduction']:.1f}% | {row['params_before'] / 1e6:.2f} | {row['params_after'] / 1e6:.2f} | "
            f"{100 * row['params_reduction']:.1f}% | {row['load_average_1min']:.1f} |"
        )
    lines += ["", "Load avg: the machine's 1-minute load average when the model finished (2 CPUs, shared "
              "with other jobs): timings taken under load are upper bounds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    add_provenance_options(parser)
    args = parser.parse_args(argv)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            rows.append(time_model(name, args.ratio, args.repeats, args.seed))
        except Exception as exc:  # one failing model must not hide the others' numbers
            rows.append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
        print(rows[-1], flush=True)
    result = {"benchmark": "pruning_time", "provenance": provenance(args.seed, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty), "ratio": args.ratio,
              "repeats": args.repeats, "models": rows}
    write_results("pruning_time", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
