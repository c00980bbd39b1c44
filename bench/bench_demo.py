"""Run ``polarprune demo`` in a fresh temporary folder and store its numbers and wall time.

The README's demo table and its time are rendered (``bench/render.py``) from the result this
script writes, ``bench/results/demo_<method>.{json,md}``: the per-stage rows of the run's
``summary.json`` (top-1, MACs, FLOPs, params, latency, reductions), the epochs of each
training stage from the resolved recipe, and the wall-clock seconds of the whole command
(process start to exit, so including the imports), measured on whatever machine runs it.

    .venv/bin/python bench/bench_demo.py [--method polarization]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, configured_sizes, provenance, provenance_markdown, write_results  # noqa: E402

METHODS = ("polarization", "l1", "masksparsity")


def run_demo(method: str, workdir: Path) -> tuple[float, str]:
    """Run ``python -m polarprune demo`` into ``workdir``; return (wall seconds, its stdout)."""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "polarprune", "demo", "--method", method, "--out", str(workdir)],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"polarprune demo failed (exit {completed.returncode}):\n{completed.stderr}")
    return seconds, completed.stdout


def stage_epochs(run_dir: Path) -> dict[str, int]:
    """Epochs of each training stage, from the resolved recipe the run wrote (empty if absent)."""
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return {}
    recipe = yaml.safe_load(path.read_text()) or {}
    return {
        stage: cfg["train"]["epochs"]
        for stage, cfg in (recipe.get("stages") or {}).items()
        if isinstance(cfg, dict) and isinstance(cfg.get("train"), dict) and "epochs" in cfg["train"]
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a short Markdown page."""
    lines = [
        f"# `polarprune demo --method {result['method']}`",
        "",
        f"Wall time of the whole command: {result['wall_seconds']:.1f} s.",
        "",
        "| stage | top-1 | MACs | params | MACs reduction | params reduction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage in result["stages"]:
        lines.append(
            f"| {stage['name']} | {stage['top1']:.2f} | {stage['macs']:,} | {stage['params']:,} | "
            f"{100 * stage['macs_reduction']:.1f}% | {100 * stage['params_reduction']:.1f}% |"
        )
    lines += ["", provenance_markdown(result["provenance"])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=METHODS, default="polarization")
    parser.add_argument("--out-stem", help="result file stem (default demo_<method>)")
    add_provenance_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="polarprune-demo-") as tmp:
        run_dir = Path(tmp) / "run"
        seconds, stdout = run_demo(args.method, run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        epochs = stage_epochs(run_dir)
        data = configured_sizes((yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {})["data"])
    result = {
        "benchmark": "demo",
        "method": args.method,
        "command": f"polarprune demo --method {args.method}",
        "wall_seconds": seconds,
        "stage_epochs": epochs,
        "stages": summary["stages"],
        "reductions": summary.get("reductions"),
        "stdout": stdout,
        "provenance": provenance(0, data=data, allow_dirty=args.allow_dirty),
    }
    json_path, md_path = write_results(args.out_stem or f"demo_{args.method}", result, markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
