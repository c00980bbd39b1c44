"""Pruning time and peak memory of every detection and segmentation family, polarprune next to
Torch-Pruning's own pruner.

The families are read from the model registry (every entry whose ``task`` is ``detection`` or
``segmentation``), so families registered later appear without a change here. Each family is
built with no weights at its entry's default input size, half of every BN's gamma and beta set
to 0, then pruned in a fresh subprocess (so that its peak resident memory is its own):

- ``polarprune``: ``prune_model(model, example, "fixed")`` on the entry's example input (a list
  of images for a detector), under the default budget (``pruning.budget``);
- ``torch-pruning``: ``tp.pruner.BNScalePruner`` with ``BNScaleImportance`` and a global ratio
  of 0.5, built on the same example input and stepped once, as its README shows; its run is
  watched by the same budget guard (``--tp-seconds``, 4 GB), and a subprocess that does not
  answer within the timeout is killed: either is recorded as its error.

Peak memory is the subprocess's peak resident memory minus its resident memory just before the
pruning call (the built model and the imports excluded).

Run: ``python bench/bench_detector_pruning.py [--names a,b] [--skip PATTERNS] [--tp-seconds 60]``; results in
``bench/results/detector_pruning.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RANDOM_INPUTS, add_provenance_options, provenance, provenance_markdown, write_results  # noqa: E402

TASKS = ("detection", "segmentation")
TOOLS = ("polarprune", "torch-pruning")


def family_names(skip: str = "") -> list[str]:
    """The registered names whose entry is a detection or segmentation family, less those matching a
    comma-separated fnmatch pattern of ``skip``."""
    import fnmatch

    import polarprune.models as models
    from polarprune.models.entry import get_entry

    models.list_models()  # loads the families that register on need
    patterns = [p for p in skip.split(",") if p]
    return [n for n in models.entry.registered_names() if (e := get_entry(n)) is not None and e.task in TASKS
            and not any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def example_for(name: str, model: Any) -> Any:
    """The entry's example input at its default size (a 4-D batch of one without an ``example_input``)."""
    import torch
    from polarprune.models.entry import get_entry

    entry = get_entry(name)
    side = entry.input_size or 224
    if entry.example_input is not None:
        return entry.example_input(model, side)
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_polarprune(model: Any, example: Any) -> dict[str, Any]:
    from polarprune.pruning import prune_model

    _, report = prune_model(model, example, "fixed")
    return {"macs_before": report.macs_before, "macs_after": report.macs_after}


def run_torch_pruning(model: Any, example: Any, seconds: float) -> dict[str, Any]:
    import torch_pruning as tp
    from polarprune.pruning.budget import Budget, guarded

    inputs = (example,) if isinstance(example, list) else example
    with guarded(model, Budget(seconds=seconds, memory_gb=4.0), "torch-pruning") as guard:
        with guard.step("build pruner"):
            macs_before, _ = tp.utils.count_ops_and_params(model, inputs)
            pruner = tp.pruner.BNScalePruner(model, inputs, importance=tp.importance.BNScaleImportance(), pruning_ratio=0.5)
        with guard.step("step"):
            pruner.step()
            macs_after, _ = tp.utils.count_ops_and_params(model, inputs)
    return {"macs_before": int(macs_before), "macs_after": int(macs_after)}


def child(name: str, tool: str, tp_seconds: float) -> dict[str, Any]:
    """One pruning run (in the subprocess): seconds, peak memory growth and the MACs, or its error."""
    import torch
    import polarprune.models as models
    from polarprune.errors import first_line

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = models.create(name, num_classes=21).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                half = module.num_features // 2
                module.weight[:half] = 0
                module.bias[:half] = 0
    example = example_for(name, model)
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    start = time.perf_counter()
    try:
        result = run_polarprune(model, example) if tool == "polarprune" else run_torch_pruning(model, example, tp_seconds)
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - the benchmark records any failure as its one line
        result = {"error": f"{type(exc).__name__}: {first_line(exc)}"[:300]}
    result["seconds"] = time.perf_counter() - start
    result["peak_memory_gb"] = max(0, peak_rss_bytes() - base) / 2**30
    return result


def measure(name: str, tool: str, tp_seconds: float, timeout: float) -> dict[str, Any]:
    """``child`` in a subprocess with a timeout; its JSON line, or the timeout as the error."""
    command = [sys.executable, __file__, "--child", name, "--tool", tool, "--tp-seconds", str(tp_seconds)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:g} s (killed)", "seconds": time.perf_counter() - start}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"[:300], "seconds": time.perf_counter() - start}
    return json.loads(lines[-1])


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Detector and segmenter pruning: time and peak memory", "", provenance_markdown(result["provenance"]), "",
             "| family | task | tool | seconds | peak memory (GB) | MACs before -> after (G) | error |",
             "|---|---|---|---:|---:|---|---|"]
    for row in result["families"]:
        for tool in TOOLS:
            r = row[tool]
            macs = f"{r['macs_before'] / 1e9:.2f} -> {r['macs_after'] / 1e9:.2f}" if r.get("macs_before") else ""
            memory = f"{r['peak_memory_gb']:.2f}" if "peak_memory_gb" in r else ""
            lines.append(f"| {row['name']} | {row['task']} | {tool} | {r['seconds']:.1f} | {memory} | {macs} | {r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default="", help="comma-separated family names (default: every registered one)")
    parser.add_argument("--skip", default="yolo*[mlx],yolo*[mlx]-seg",
                        help="comma-separated name patterns left out (default: the YOLO scales above s, which the tests do not cover)")
    parser.add_argument("--tp-seconds", type=float, default=60.0, help="Torch-Pruning's time budget per family")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tool", default="polarprune", choices=TOOLS, help=argparse.SUPPRESS)
    add_provenance_options(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tool, args.tp_seconds)), flush=True)
        return
    from polarprune.models.entry import get_entry

    names = [n for n in args.names.split(",") if n] or family_names(args.skip)
    rows = []
    for name in names:
        row = {"name": name, "task": get_entry(name).task, "input_size": get_entry(name).input_size}
        for tool in TOOLS:
            row[tool] = measure(name, tool, args.tp_seconds, timeout=args.tp_seconds + 120)
            print(name, tool, row[tool], flush=True)
        rows.append(row)
    result = {"provenance": provenance(0, data=RANDOM_INPUTS, allow_dirty=args.allow_dirty), "tp_seconds": args.tp_seconds,
              "families": rows}
    write_results("detector_pruning", result, markdown(result))


if __name__ == "__main__":
    main()
