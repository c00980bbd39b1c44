"""``polarprune mask CHECKPOINT --strategy S --out MASK``: write a MaskSparsity mask file.

The mask says which channels of each regularized BN are kept (``1``), decided as ``polarprune prune``
would; ``mask-l1`` sparsity training then pushes the ``0`` channels to zero. See docs/sparsity.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import PolarpruneError
from ..pruning.options import GROUP_RULES, SCORE_STRATEGIES
from .common import add_checkpoint_arguments, check_at_least, check_output_folders, command_parser
from .prune import add_prune_options, options_from_args

STRATEGY_CHOICES = SCORE_STRATEGIES
MASK_FIELDS = ("strategy", "threshold", "percent", "ratio", "group_rule", "min_channels", "seed")


DESCRIPTION = """Decide which channels of the regularized BNs a pruning would keep and write them to a mask file
(JSON, 1 = keep) for mask-l1 sparsity training. Default: |gamma| <= 0.01 goes (MaskSparsity's threshold on a
global-L1 checkpoint), at least one channel per layer."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "mask", "write a channel mask file (MaskSparsity)", DESCRIPTION, run)
    add_checkpoint_arguments(p)
    add_prune_options(p, MASK_FIELDS, choices={"strategy": STRATEGY_CHOICES, "group_rule": GROUP_RULES},
                      helps={"threshold": "fixed: |gamma| threshold, channels at or below it go"})
    p.add_argument("--per-layer", action="store_true", help="uniform: decide every BN alone (residual-coupled BNs may differ)")
    p.add_argument("--bn-include", action="append", default=[], metavar="PATTERN", help="mask only BNs matching this fnmatch pattern (repeatable; default: the BNs sparsity training regularizes)")
    p.add_argument("--bn-exclude", action="append", default=[], metavar="PATTERN", help="leave out BNs matching this pattern (repeatable)")
    p.add_argument("--out", required=True, metavar="MASK", help="mask file to write (.json)")


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for option combinations that cannot work."""
    options_from_args(args, MASK_FIELDS)
    if args.per_layer and args.strategy != "uniform":
        raise PolarpruneError("--per-layer only applies to --strategy uniform")
    check_at_least({"--input-size": (args.input_size, 1)})
    check_output_folders({"--out": args.out})


def format_summary(masks: dict[str, Any]) -> str:
    """Per-layer kept/total table with a total line."""
    from ..sparsity.masks import summarize_masks

    rows = summarize_masks(masks)
    width = max([len("layer")] + [len(name) for name, _, _ in rows])
    totals = ("total", sum(k for _, k, _ in rows), sum(t for _, _, t in rows))
    lines = [f"{'layer':<{width}}  {'kept':>6}  {'total':>6}  {'removed':>8}"]
    for name, kept, total in [*rows, totals]:
        lines.append(f"{name:<{width}}  {kept:>6}  {total:>6}  {100.0 * (total - kept) / max(total, 1):>7.1f}%")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..pruning import TrialAnalysis
    from ..sparsity.masks import save_mask, uniform_mask
    from ..sparsity.selection import regularized_bn_names
    from ..serialization import read_model
    from ..flops import example_input

    check_args(args)
    model = read_model(args.checkpoint)
    x = example_input(model, input_size=args.input_size)
    names = regularized_bn_names(model, x, args.bn_include, args.bn_exclude, option="--bn")
    trial = TrialAnalysis(model, x)  # one analysis: the decision and its cost
    options = options_from_args(args, MASK_FIELDS)
    recorded: dict[str, Any] = {"strategy": args.strategy}
    if args.strategy == "uniform" and args.per_layer:
        plan = uniform_mask(model, names, args.ratio)
        recorded.update(ratio=args.ratio, per_layer=True)
    else:
        plan = trial.keep_masks(model, options=options.model_copy(update={"bn_names": names}))
        used = {"threshold": "fixed", "percent": "percent", "ratio": ("uniform", "l1-norm", "random")}
        recorded.update({k: v for k, v in options.model_dump(include={"group_rule", "min_channels", "seed", *used}).items()
                         if k not in used or args.strategy in used[k]})
    masks = {name: plan[name] for name in names if name in plan}
    missing = [name for name in names if name not in plan]
    if not masks:
        raise PolarpruneError(f"{args.checkpoint}: none of the {len(names)} selected BNs is in a prunable group")
    macs_ratio, params_ratio = trial.ratios(model, "mask", masks=masks, group_rule=args.group_rule)
    spec = getattr(model, "polarprune_spec", {}) or {}
    recorded.update(source=str(args.checkpoint), estimated_macs_ratio=round(macs_ratio, 6), estimated_params_ratio=round(params_ratio, 6))
    save_mask(masks, args.out, spec.get("name"), source=recorded)
    print(format_summary(masks))
    for name in missing:
        print(f"note: {name}: its group cannot be pruned, left out of the mask")
    print(f"pruning with this mask would leave {100 * macs_ratio:.1f}% of the MACs and {100 * params_ratio:.1f}% of the parameters")
    print(f"wrote {args.out}")
    return 0
