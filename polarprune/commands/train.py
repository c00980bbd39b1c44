"""``polarprune train CONFIG [key=value ...]``: one training run from a YAML config."""

from __future__ import annotations

import argparse
import json

from .common import add_config_arguments, command_parser

HELP = """Train one model from a YAML training config (sections: model, data, train, sparsity).
Any key can be overridden on the command line as section.key=value, e.g.
  polarprune train cfg.yaml train.epochs=5 sparsity.regularizer=polarization sparsity.lbd=1e-4
Checkpoints (last.pt every epoch, best.pt), metrics.jsonl, config.yaml and TensorBoard logs go
to the output folder; running the same command again resumes from last.pt.
Under torchrun (torchrun --nproc_per_node N -m polarprune train ...) it trains with DDP."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "train", "train a model from a YAML config", HELP, run, raw=True)
    add_config_arguments(p, "config", "YAML training config file", "output folder (overrides the config's `out`)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the output folder has last.pt")
    p.add_argument("--json", action="store_true", help="print the final result as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from .. import distributed as dist
    from ..workflows.train import load_train_config, run_training

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_train_config(args.config, overrides)
    result = run_training(cfg, resume=not args.no_resume)
    if dist.is_main():
        summary = {"out": str(result.out_dir), "top1": round(result.final_top1, 4), "top5": round(result.final_top5, 4),
                   "best_top1": round(result.best_top1, 4), "epochs": len(result.history)}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"done: top-1 {result.final_top1:.2f}% (best {result.best_top1:.2f}%), checkpoints in {result.out_dir}")
    dist.destroy()
    return 0
