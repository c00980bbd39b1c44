"""``polarprune prune CHECKPOINT --strategy S --out PRUNED``: remove channels for real.

Reads a training checkpoint (``.pt``) or a polarprune model file (``.safetensors``), prunes it
with ``polarprune.pruning.prune_model``, writes the pruned model file and (optionally) the
report JSON atomically, and prints a short table.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path
from typing import Any

from ..errors import PolarpruneError
from ..fileio import atomic_write_text

DIGITS_INPUT_SIZE = 8  # small_cnn is sized for the 8x8 digits
STRATEGY_CHOICES = ("grad", "fixed", "percent", "uniform", "l1-norm", "random", "mask", "flops-target")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="remove channels of a trained model",
        description=(
            "Remove BN channels for real (weights sliced, residual groups pruned together, "
            "shift compensation) and write a self-describing pruned model file. docs/pruning.md "
            "describes the strategies and rules."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training checkpoint (.pt) or polarprune model file (.safetensors)")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default="fixed", help="how channels are chosen (default fixed)")
    p.add_argument("--threshold", type=float, default=0.01, help="fixed: global |gamma| threshold (default 0.01)")
    p.add_argument("--percent", type=float, help="percent: fraction of all scored channels removed (global quantile)")
    p.add_argument("--ratio", type=float, help="uniform / l1-norm / random: fraction removed per group")
    p.add_argument("--target-macs-reduction", type=float, metavar="R", help="flops-target: MACs reduction to reach, in (0, 1)")
    p.add_argument("--mask", metavar="FILE", help="mask: mask file (BN name -> 0/1 keep string)")
    p.add_argument("--bn-include", action="append", default=[], metavar="PATTERN", help="score only BNs matching this fnmatch pattern (repeatable)")
    p.add_argument("--bn-exclude", action="append", default=[], metavar="PATTERN", help="do not score BNs matching this pattern (repeatable)")
    p.add_argument("--group-rule", choices=("any", "all", "mean"), default="any", help="how a group's BNs vote (default any)")
    p.add_argument("--min-channels", type=int, default=1, help="channels every group keeps (default 1)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="round every group's kept channels up to a multiple of N; 16 for CPU inference (oneDNN blocks) (default 1)")
    p.add_argument("--keep-empty-blocks", action="store_true", help="keep min-channels in an emptied residual branch instead of removing it")
    p.add_argument("--no-compensate", action="store_true", help="do not fold removed channels' constant shift into their consumers")
    p.add_argument("--input-size", type=int, metavar="S", help="example input height/width (default 8 for small_cnn, 32 for the CIFAR models, 224 otherwise)")
    p.add_argument("--data", choices=("digits", "cifar10", "cifar100", "imagefolder", "fake"), help="also report top-1 before/after on this data set")
    p.add_argument("--data-root", help="data folder for --data")
    p.add_argument("--subset", type=int, help="evaluate --data on this many images only")
    p.add_argument("--plot", metavar="PNG", help="bar chart of channels kept/removed per group")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--out", required=True, metavar="PRUNED", help="pruned model file to write (.safetensors)")
    p.add_argument("--report", metavar="REPORT.json", help="write the prune report as JSON")
    p.set_defaults(func=run)


def example_input_for(model: Any, size: int | None) -> Any:
    """One random image shaped for ``model`` (channels from its spec)."""
    import torch

    from .flops import default_input_size

    spec = getattr(model, "polarprune_spec", {}) or {}
    channels = int(spec.get("in_channels", 3))
    side = size or (DIGITS_INPUT_SIZE if spec.get("name") == "small_cnn" else default_input_size(model))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, side, side, generator=generator)


def choose_bn_names(candidates: list[str], all_bns: list[str], include: list[str], exclude: list[str]) -> list[str] | None:
    """BN names to score from fnmatch patterns (None: the default, every prunable BN)."""
    if not include and not exclude:
        return None
    chosen = candidates
    if include:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in all_bns):
                raise PolarpruneError(f"--bn-include pattern {pattern!r} matches no BatchNorm layer")
        chosen = [n for n in all_bns if any(fnmatch.fnmatchcase(n, p) for p in include)]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise PolarpruneError("no BatchNorm layer is left to score (check --bn-include/--bn-exclude)")
    return chosen


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PolarpruneError(f"{path}: folder {folder} does not exist")
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _top1(model: Any, args: argparse.Namespace) -> float:
    from ..config import DataConfig
    from ..data import build_data
    from ..training.engine import evaluate

    import torch

    data = build_data(DataConfig(name=args.data, root=args.data_root, eval_subset=args.subset, train_subset=None, workers=0))
    return float(evaluate(model, data.eval_loader, torch.device("cpu"))["top1"])


def _check_args(args: argparse.Namespace) -> None:
    if args.strategy == "mask" and not args.mask:
        raise PolarpruneError("--strategy mask needs --mask FILE")
    if args.strategy in ("uniform", "l1-norm", "random") and args.ratio is None:
        raise PolarpruneError(f"--strategy {args.strategy} needs --ratio")
    if args.strategy == "percent" and args.percent is None:
        raise PolarpruneError("--strategy percent needs --percent")
    if args.strategy == "flops-target" and args.target_macs_reduction is None:
        raise PolarpruneError("--strategy flops-target needs --target-macs-reduction")
    if args.round_to < 1:
        raise PolarpruneError(f"--round-to must be >= 1, got {args.round_to}")
    if args.min_channels < 0:
        raise PolarpruneError(f"--min-channels must be >= 0, got {args.min_channels}")
    if args.input_size is not None and args.input_size < 1:
        raise PolarpruneError(f"--input-size must be >= 1, got {args.input_size}")
    if not str(args.out).endswith(".safetensors"):
        raise PolarpruneError(f"--out {args.out}: the pruned model file must end in .safetensors")
    for option, value in (("--out", args.out), ("--report", args.report), ("--plot", args.plot)):
        if value and not Path(value).parent.is_dir() and str(Path(value).parent):
            raise PolarpruneError(f"{option} {value}: folder {Path(value).parent} does not exist")


def run(args: argparse.Namespace) -> int:
    from .. import serialization
    from ..pruning import prunable_bn_names, prune_model
    from ..training.checkpoint import load_any_model

    _check_args(args)
    model = load_any_model(args.checkpoint)
    x = example_input_for(model, args.input_size)
    masks = None
    if args.strategy == "mask":
        from ..sparsity.masks import load_mask

        masks = load_mask(args.mask, model)
    all_bns = [n for n, m in model.named_modules() if type(m).__name__.startswith("BatchNorm")]
    bn_names = None
    if args.bn_include or args.bn_exclude:
        bn_names = choose_bn_names(prunable_bn_names(model, x), all_bns, args.bn_include, args.bn_exclude)
    top1_before = _top1(model, args) if args.data else None
    pruned, report = prune_model(
        model, x, args.strategy, threshold=args.threshold, percent=args.percent, ratio=args.ratio,
        target_macs_reduction=args.target_macs_reduction, masks=masks, bn_names=bn_names,
        group_rule=args.group_rule, min_channels=args.min_channels, remove_empty_blocks=not args.keep_empty_blocks, round_to=args.round_to,
        compensate=not args.no_compensate, seed=args.seed,
    )
    top1_after = _top1(pruned, args) if args.data else None
    result = report.to_dict()
    result.update({"source": str(args.checkpoint), "out": str(args.out), "input_shape": list(x.shape[1:])})
    if args.data:
        result["top1_before"], result["top1_after"] = top1_before, top1_after
    serialization.save(pruned, args.out, extra={"report": report.summary(), "source": str(args.checkpoint)})
    if args.report:
        write_json_atomic(result, Path(args.report))
    if args.plot:
        from ..plots import channels_per_layer

        rows = [{"name": r.group, "before": r.channels_before, "after": r.channels_after} for r in report.rows]
        channels_per_layer(rows, Path(args.plot), title=f"Channels kept per group ({args.strategy})")
    print(report.table(max_rows=60))
    if args.data:
        print(f"top-1 {top1_before:.2f}% -> {top1_after:.2f}% on the {args.data} evaluation split (before fine-tuning)")
    for note in report.notes[:10]:
        print(f"note: {note}")
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""))
    return 0
