"""``polarprune prune CHECKPOINT --strategy S --out PRUNED``: remove channels for real (``prune_model``),
write the pruned model file and optionally the report JSON, print a short table."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any, Sequence

from ..errors import PolarpruneError
from ..fileio import atomic_write_json
from ..pruning.options import GROUP_RULES, STRATEGIES, STRATEGY_NEEDS, PruneOptions, parse_options
from .common import add_checkpoint_arguments, check_at_least, check_output_folders, command_parser, data_image_size
from .latency import RUNTIMES as RUNTIME_CHOICES

STRATEGY_CHOICES = STRATEGIES
# PruneOptions fields that are not flags of the prune command: masks come from --mask FILE, bn_names from the patterns
NOT_FLAGS = ("masks", "bn_names")
# the prune command's options: every other PruneOptions field, in the model's order
PRUNE_FIELDS = tuple(name for name in PruneOptions.model_fields if name not in NOT_FLAGS)


def flag_of(field: str) -> str:
    """The command-line flag of a ``PruneOptions`` field (a default-on option's flag turns it off and is
    named by the field, ``off_flag``)."""
    extra = dict(PruneOptions.model_fields[field].json_schema_extra or {})  # type: ignore[arg-type]
    return str(extra.get("off_flag", "--" + field.replace("_", "-")))


def add_prune_options(p: argparse.ArgumentParser, fields: Sequence[str], helps: dict[str, str] | None = None,
                      choices: dict[str, Sequence[str]] | None = None) -> None:
    """argparse options for ``PruneOptions`` fields: flags, types, choices and defaults from the model."""
    helps, choices = helps or {}, choices or {}
    for name in fields:
        info = PruneOptions.model_fields[name]
        text = helps.get(name, info.description or name)
        kwargs: dict[str, Any] = {"dest": name}
        default = info.get_default(call_default_factory=True)
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
            if default and name not in helps:  # the flag turns the option off: say what it does
                text = dict(info.json_schema_extra or {}).get("off_help", text)  # type: ignore[arg-type]
        elif isinstance(default, list):
            kwargs.update(action="append", default=[], metavar="PATTERN")
            text += " (repeatable)"
        else:
            literal = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
            options = choices.get(name) or literal
            kwargs["default"] = default
            metavar = dict(info.json_schema_extra or {}).get("metavar")  # type: ignore[arg-type]
            if options:
                kwargs["choices"] = tuple(options)
            elif metavar:  # a value of its own syntax (round_to: auto or N), checked by PruneOptions
                kwargs["metavar"] = metavar
            else:
                kwargs["type"] = int if isinstance(default, int) else float
                kwargs["metavar"] = "N" if isinstance(default, int) else "X"
            if default is not None:
                text += f" (default {default})"
        p.add_argument(flag_of(name), help=text, **kwargs)


def options_from_args(args: argparse.Namespace, fields: Sequence[str], **extra: Any) -> PruneOptions:
    """``PruneOptions`` from parsed arguments; errors name the flags (``--ratio``), not the fields."""
    values = {name: getattr(args, name) for name in fields}
    values.update(extra)
    try:
        return parse_options(**values)
    except PolarpruneError as exc:
        message = str(exc)
        need = STRATEGY_NEEDS.get(values.get("strategy", ""))
        if need:
            message = message.replace(f"strategy {values['strategy']!r} needs {need}", f"--strategy {values['strategy']} needs {'--mask FILE' if need == 'masks' else flag_of(need)}")
        for name in fields:
            message = message.replace(f"prune option {name}:", f"{flag_of(name)}:")
        raise PolarpruneError(message) from None


DESCRIPTION = """Remove BN channels for real (weights sliced, residual groups pruned together, shift compensation)
and write a self-describing pruned model file. docs/pruning.md describes the strategies and rules."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "prune", "remove channels of a trained model", DESCRIPTION, run)
    add_checkpoint_arguments(p)
    add_prune_options(p, PRUNE_FIELDS, choices={"strategy": STRATEGY_CHOICES, "group_rule": GROUP_RULES,
                                                "runtime": RUNTIME_CHOICES})
    p.add_argument("--mask", metavar="FILE", help="mask: mask file (BN name -> 0/1 keep string)")
    p.add_argument("--data", choices=("digits", "cifar10", "cifar100", "imagefolder", "fake"), help="also report top-1 before/after on this data set")
    p.add_argument("--data-root", help="data folder for --data")
    p.add_argument("--subset", type=int, help="evaluate --data on this many images only")
    p.add_argument("--plot", metavar="PNG", help="bar chart of channels kept/removed per group")
    p.add_argument("--out", required=True, metavar="PRUNED", help="pruned model file to write (.safetensors)")
    p.add_argument("--report", metavar="REPORT.json", help="write the prune report as JSON")


def _top1(model: Any, args: argparse.Namespace) -> float:
    from ..config import DataConfig
    from ..data import build_data
    from ..training.engine import evaluate

    import torch

    data = build_data(DataConfig(name=args.data, root=args.data_root, eval_subset=args.subset, train_subset=None, workers=0,
                                 image_size=data_image_size(model, args.input_size)))
    return float(evaluate(model, data.eval_loader, torch.device("cpu"))["top1"])


def _check_args(args: argparse.Namespace) -> PruneOptions:
    check_at_least({"--input-size": (args.input_size, 1), "--subset": (args.subset, 1)})
    if not str(args.out).endswith(".safetensors"):
        raise PolarpruneError(f"--out {args.out}: the pruned model file must end in .safetensors")
    check_output_folders({"--out": args.out, "--report": args.report, "--plot": args.plot})
    if args.strategy == "mask" and not args.mask:
        raise PolarpruneError("--strategy mask needs --mask FILE")
    return options_from_args(args, PRUNE_FIELDS, masks={} if args.strategy == "mask" else None)


def run(args: argparse.Namespace) -> int:
    from .. import serialization
    from ..deploy.latency_cost import prune_with_cost_model
    from ..flops import example_input, image_shape
    from ..serialization import read_model

    options = _check_args(args)
    model = read_model(args.checkpoint)
    x = example_input(model, input_size=args.input_size)
    if args.strategy == "mask":
        from ..sparsity.masks import load_mask

        options = options.model_copy(update={"masks": load_mask(args.mask, model)})
    top1_before = _top1(model, args) if args.data else None
    pruned, report, latency = prune_with_cost_model(model, x, options)
    top1_after = _top1(pruned, args) if args.data else None
    result = {**report.to_dict(), **(latency.as_dict() if latency else {})}
    result.update({"source": str(args.checkpoint), "out": str(args.out), "input_shape": image_shape(x)})
    if args.data:
        result["top1_before"], result["top1_after"] = top1_before, top1_after
    serialization.save(pruned, args.out, extra={"report": report.summary(), "source": str(args.checkpoint)})
    if args.report:
        atomic_write_json(args.report, result)
    if args.plot:
        from ..plots import channels_per_layer

        rows = [{"name": r.group, "before": r.channels_before, "after": r.channels_after} for r in report.rows]
        channels_per_layer(rows, Path(args.plot), title=f"Channels kept per group ({args.strategy})")
    print(report.table(max_rows=60))
    if args.data:
        print(f"top-1 {top1_before:.2f}% -> {top1_after:.2f}% on the {args.data} evaluation split (before fine-tuning)")
    warnings = [note for note in report.notes if note.startswith("warning:")]  # always shown (a slower model)
    for note in [note for note in report.notes if note not in warnings][:10]:
        print(f"note: {note}")
    for note in warnings:
        print(note)
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""))
    return 0
