"""Gamma distributions after sparsity training on the digits: polarization is bimodal, L1 is not.

The runs of docs/sparsity.md ("Bimodality on the digits") and of the slow test
``tests/e2e/test_sparsity_training.py``: small_cnn, BN gammas initialised to 0.5, SGD lr 0.1 cosine,
momentum 0.9, weight decay 5e-4, batch 64, 10 epochs, seed 0, one torch thread; polarization
lambda 2e-2, t 1.2, clamp 1; L1 with the same lambda; no regularizer. For each run, over the
regularized BNs' |gamma|: the share below 0.05, the share in [0.05, 0.15), the median of the
gammas at or above 0.05, the smallest gamma, and the final top-1.

    .venv/bin/python bench/bench_bimodality.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, configured_sizes, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.config import TrainConfig, validate  # noqa: E402
from polarprune.sparsity.selection import regularized_bn_names  # noqa: E402
from polarprune.workflows.train import run_training  # noqa: E402

NEAR_ZERO = 0.05
GAP = (0.05, 0.15)
DATA = {"name": "digits", "batch_size": 64, "workers": 0}
RUNS = {
    "polarization": {"regularizer": "polarization", "lbd": 2e-2, "t": 1.2, "clamp": 1.0},
    "l1": {"regularizer": "l1", "lbd": 2e-2, "monitor": False},
    "none": {"regularizer": "none"},
}


def train(out: Path, epochs: int, seed: int, sparsity: dict[str, Any]) -> dict[str, Any]:
    """One training run; the shares of its regularized |gamma| and its top-1."""
    cfg = validate(TrainConfig, {
        "seed": seed, "device": "cpu", "out": str(out),
        "model": {"name": "small_cnn", "bn_init": 0.5},
        "data": DATA,
        "train": {"epochs": epochs, "lr": 0.1, "weight_decay": 5e-4, "progress": False, "schedule": {"type": "cosine"}},
        "sparsity": sparsity,
    })
    result = run_training(cfg)
    names = regularized_bn_names(result.model)
    g = torch.cat([result.model.get_submodule(n).weight.detach().abs().flatten() for n in names])
    low = g < NEAR_ZERO
    return {
        "sparsity": sparsity,
        "gammas": int(g.numel()),
        "near_zero": float(low.float().mean()),
        "in_gap": float(((g >= GAP[0]) & (g < GAP[1])).float().mean()),
        "median_others": float(g[~low].median()),
        "min_gamma": float(g.min()),
        "top1": float(result.final_top1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Gamma bimodality on the digits (small_cnn)", "",
             "| run | |gamma| < 0.05 | |gamma| in [0.05, 0.15) | median of the others | smallest | top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["runs"].items():
        lines.append(f"| {name} | {r['near_zero']:.1%} | {r['in_gap']:.1%} | {r['median_others']:.2f} | "
                     f"{r['min_gamma']:.3f} | {r['top1']:.2f} |")
    return "\n".join(lines + ["", provenance_markdown(result["provenance"])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    add_provenance_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="polarprune-bimodality-") as tmp:
        runs = {name: train(Path(tmp) / name, args.epochs, args.seed, sparsity) for name, sparsity in RUNS.items()}
    result = {"benchmark": "bimodality_digits", "epochs": args.epochs, "near_zero": NEAR_ZERO, "gap": list(GAP),
              "runs": runs, "provenance": provenance(args.seed, data=configured_sizes(DATA, args.seed), allow_dirty=args.allow_dirty)}
    json_path, md_path = write_results("bimodality_digits", result, markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
