"""``polarprune yolo DATA.yaml [key=value ...]``: baseline -> sparsity -> prune -> fine-tune of a YOLO model in
ultralytics' own trainer (``polarprune.integrations.ultralytics.run_yolo``; the ultralytics extra)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import command_parser

DESCRIPTION = """Train a YOLO model (ultralytics), sparsity-train it with a polarprune regularizer inside ultralytics'
trainer, prune it and fine-tune the pruned network with ultralytics' trainer again. Every stage writes OUT/<stage>/
result.json; run the same command again to resume (finished stages are reused). Any key of the pipeline can be set
as key=value (dotted), e.g. sparsity.t=1.2 prune.strategy=percent prune.percent=0.4 train_args.lr0=0.005.
docs/yolo.md describes it. ultralytics is AGPL-3.0: pip install 'polarprune[ultralytics]'."""

# flag -> the pipeline key it sets (None: not given)
FLAG_KEYS = {"model": "model", "method": "sparsity.regularizer", "lbd": "sparsity.lbd", "epochs": "epochs",
             "sparsity_epochs": "sparsity_epochs", "finetune_epochs": "finetune_epochs",
             "target_macs_ratio": "sparsity.target_macs_ratio", "imgsz": "imgsz", "batch": "batch", "device": "device",
             "out": "out", "strategy": "prune.strategy"}


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "yolo", "baseline -> sparsity -> prune -> fine-tune a YOLO model in ultralytics' trainer",
                       DESCRIPTION, run, trust_code=True)
    p.add_argument("data", metavar="DATA.yaml", help="a YOLO data set YAML (train, val, names)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="pipeline keys (dotted), e.g. sparsity.t=1.2")
    p.add_argument("--model", help="a model YAML such as yolov8n.yaml (random start) or a local .pt (default yolov8n.yaml)")
    p.add_argument("--method", choices=("polarization", "l1", "mask-l1"), help="the regularizer (default polarization)")
    p.add_argument("--lbd", type=float, metavar="X", help="the regularizer's lambda (default 5e-3 for polarization, 1e-3 for l1 and mask-l1; docs/yolo.md says why)")
    p.add_argument("--epochs", type=int, metavar="N", help="baseline epochs; 0: the model as given (default 100)")
    p.add_argument("--sparsity-epochs", type=int, metavar="N", help="sparsity epochs (default 50)")
    p.add_argument("--finetune-epochs", type=int, metavar="N", help="fine-tuning epochs; 0: none (default 50)")
    p.add_argument("--target-macs-ratio", type=float, metavar="R", help="end the sparsity stage once a trial prune leaves "
                   "at most this fraction of the MACs")
    p.add_argument("--strategy", help="the prune strategy (default grad; its options as prune.KEY=VALUE)")
    p.add_argument("--imgsz", type=int, metavar="N", help="image size (default 640)")
    p.add_argument("--batch", type=int, metavar="N", help="batch size (default 16)")
    p.add_argument("--device", help="ultralytics' device string, e.g. cpu, 0")
    p.add_argument("--out", help="the run folder (default runs/yolo)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def pipeline_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's keys from the flags given, then the key=value overrides."""
    from ..config import apply_overrides

    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    return apply_overrides({"data": args.data}, flags + list(args.overrides))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per stage: its weights and its mAP; the prune step's MACs and parameters."""
    lines = []
    for stage in ("baseline", "sparsity", "finetune"):
        result = summary[stage]
        metrics = result.get("metrics", {})
        maps = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items() if "mAP" in k)
        lines.append(f"{stage:<9} {result.get('best') or result.get('last') or '-'}  {maps or '(no validation)'}")
    report = summary["prune"]["report"]
    lines.append(f"{'prune':<9} {summary['prune']['weights']}  MACs {report['macs_before']:,} -> {report['macs_after']:,}, "
                 f"params {report['params_before']:,} -> {report['params_after']:,}")
    return lines


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics download behind the user's back
    from ..integrations.ultralytics import run_yolo

    summary = run_yolo(pipeline_settings(args))
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    else:
        print("\n".join(summary_lines(summary)))
    return 0
