"""``polarprune eval MODEL --data NAME``: accuracy, MACs, params and CPU latency of a model."""

from __future__ import annotations

import argparse
import json

from .common import check_at_least, check_forward, command_parser, data_image_size

DESCRIPTION = """Top-1/top-5 of a training checkpoint (.pt) or polarprune model file (.safetensors) on a data set's
evaluation split, with MACs, params and CPU latency at batch 1. Only the evaluation split is read (an ImageFolder
tree may hold just val/ or test/)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "eval", "evaluate a checkpoint or pruned model", DESCRIPTION, run)
    p.add_argument("model", help="checkpoint (.pt) or model file (.safetensors)")
    p.add_argument("--data", required=True, metavar="NAME", help="data set (as data.name of a config, see docs/data.md)")
    p.add_argument("--data-root", help="data folder (cifar: parent of cifar-10-batches-py; imagefolder: has val/ or test/)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--subset", type=int, help="evaluate on this many images only")
    p.add_argument("--image-size", type=int, help="imagefolder crop size / fake image side (default: the size the model "
                                                  "file records it was trained or pruned at, else the data's: 224 / 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..data import build_data
    from ..report import latency_text, stage_row, threads_text
    from ..serialization import read_model
    from ..training.engine import evaluate
    from ..workflows.train import resolve_device

    check_at_least({"--batch-size": (args.batch_size, 1), "--subset": (args.subset, 1), "--image-size": (args.image_size, 1)})
    model = read_model(args.model)
    data = build_data(DataConfig(name=args.data, root=args.data_root, eval_batch_size=args.batch_size,
                                 eval_subset=args.subset, image_size=data_image_size(model, args.image_size),
                                 train_subset=None), eval_only=True)
    check_forward(args.model, model, (data.in_channels, *data.input_size), f"the {args.data} images do not fit this model")
    device = resolve_device(args.device)
    metrics = evaluate(model.to(device), data.eval_loader, device)
    row = stage_row(str(args.model), model, metrics["top1"], (data.in_channels, *data.input_size))
    result = {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "images": data.eval_size,
              "macs": row["macs"], "flops": row["flops"], "params": row["params"], "latency_ms": row["latency_ms"],
              "latency_spread": row["latency_spread"], "latency_threads": row["latency_threads"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  on {result['images']} images")
        print(f"MACs {result['macs']:,}  FLOPs {result['flops']:,}  params {result['params']:,}  "
              f"CPU latency (batch 1, {threads_text(result['latency_threads'])}) "
              f"{latency_text(result['latency_ms'], result['latency_spread'])}")
    return 0
