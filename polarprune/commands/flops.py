"""``polarprune flops``: per-image MACs, FLOPs and parameters of a model name or a model file."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from ..errors import PolarpruneError
from .common import add_model_name_arguments, check_at_least, check_forward, command_parser

if TYPE_CHECKING:  # torch only for the annotations: `--help` must not import it
    from torch import nn

MODEL_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
FORWARD_HINT = "set --input-size and --in-channels"
DESCRIPTION = """Count the per-image conv+linear multiply-accumulates (MACs, the papers' headline metric), the FLOPs of
all layers (one MAC = one FLOP) and the parameters of a model name or of a pruned model file. docs/flops.md
describes the conventions."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "flops", "count a model's MACs, FLOPs and parameters", DESCRIPTION, run)
    p.add_argument("model", metavar="MODEL", help="a model name (`polarprune models`) or a model file written by polarprune")
    add_model_name_arguments(p, channels=True)
    p.add_argument("--json", action="store_true", help='print one JSON object {"macs", "flops", "params"} and nothing else')


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

    check_at_least({"--num-classes": (args.num_classes, 1), "--input-size": (args.input_size, 1),
                    "--in-channels": (args.in_channels, 1)})
    model, description = resolve_model(args)
    input_shape = input_shape_of(model, args.input_size, args.in_channels)
    check_forward(args.model, model, input_shape, FORWARD_HINT)
    cost = count_model(model, input_shape).as_dict()
    if args.json:
        print(json.dumps(cost))
    else:
        print(format_table(description, input_shape, cost))
    return 0
