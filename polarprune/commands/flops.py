"""``polarprune flops``: per-image MACs, FLOPs and parameters of a model name or a model file."""

from __future__ import annotations

import argparse
import json
import os

from torch import nn

from ..errors import PolarpruneError
from . import add_trust_code_argument
from .inputs import add_input_size_argument

MODEL_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="count a model's MACs, FLOPs and parameters",
        description=(
            "Count the per-image conv+linear multiply-accumulates (MACs, the papers' headline "
            "metric), the FLOPs of all layers (one MAC = one FLOP) and the parameters of a model "
            "name or of a pruned model file. docs/flops.md describes the conventions."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a model name (`polarprune models`) or a model file written by polarprune")
    p.add_argument("--num-classes", type=int, default=10, metavar="N", help="classes of a named model (default 10; a file knows its own)")
    add_input_size_argument(p, channels=True)
    p.add_argument("--json", action="store_true", help='print one JSON object {"macs", "flops", "params"} and nothing else')
    add_trust_code_argument(p)
    p.set_defaults(func=run)


def looks_like_path(text: str) -> bool:
    """True when MODEL was meant as a file (a folder separator or a model-file suffix)."""
    return os.sep in text or "/" in text or text.lower().endswith(MODEL_FILE_SUFFIXES)


def resolve_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The model to count and a short description of it for the table."""
    from ..models.imports import is_import_path
    from ..serialization import read_model

    if os.path.isfile(args.model):
        return read_model(args.model), args.model
    if looks_like_path(args.model) and not is_import_path(args.model):
        raise PolarpruneError(f"model file not found: {args.model}")
    model = read_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels)
    return model, f"{args.model} ({args.num_classes} classes)"


def format_table(description: str, input_shape: tuple[int, ...], cost: dict[str, int]) -> str:
    """Small aligned table: counts with thousands separators and a G/M/K form."""
    from ..flops import format_units

    rows = [("MACs", cost["macs"]), ("FLOPs", cost["flops"]), ("params", cost["params"])]
    width = max(len(f"{value:,}") for _, value in rows)
    lines = [f"{description}, input {'x'.join(map(str, input_shape))}, per image"]
    lines += [f"  {label:<7}{value:>{width},}  ({format_units(value)})" for label, value in rows]
    lines.append("  (MACs: conv + linear multiply-accumulates; FLOPs: all layers, 1 MAC = 1 FLOP)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..flops import count_model
    from ..models import input_shape_of

    for option, value in (("--num-classes", args.num_classes), ("--input-size", args.input_size), ("--in-channels", args.in_channels)):
        if value is not None and value < 1:
            raise PolarpruneError(f"{option} must be >= 1, got {value}")
    model, description = resolve_model(args)
    input_shape = input_shape_of(model, args.input_size, args.in_channels)
    cost = count_model(model, input_shape).as_dict()
    if args.json:
        print(json.dumps(cost))
    else:
        print(format_table(description, input_shape, cost))
    return 0
