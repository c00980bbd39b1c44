"""``polarprune latency MODEL [MODEL ...] --runtime R``: models timed side by side, interleaved."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .common import add_model_name_arguments, check_at_least, check_forward, command_parser

RUNTIMES = ("eager", "eager-channels-last", "eager-bf16", "onnxruntime")  # a copy so --help stays torch-free (deploy.RUNTIMES)


def int_list(text: str) -> list[int]:
    """``"1,64"`` -> ``[1, 64]`` (positive integers), for argparse."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


DESCRIPTION = """Time one forward of each MODEL (model file or model name) side by side: interleaved rounds, medians,
and per-round ratios against the first MODEL. By default the measurement runs in a child process with glibc told
to keep freed memory, so that page faults do not blur the times. --round-to 1,8,16 adds copies of every model with
each channel group cut to a multiple (for timing width choices; docs/deploy.md)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "latency", "time models side by side in one runtime (interleaved rounds, medians)",
                       DESCRIPTION, run)
    p.add_argument("models", nargs="+", metavar="MODEL", help="model files written by polarprune or model names")
    p.add_argument("--runtime", choices=RUNTIMES, default="eager", help="where to run (default eager)")
    p.add_argument("--batch", type=int_list, default=[1, 64], metavar="B[,B...]", help="batch sizes (default 1,64)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: torch's default)")
    p.add_argument("--rounds", type=int, default=7, metavar="R", help="interleaved timed rounds (default 7)")
    p.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed rounds first (default 1)")
    p.add_argument("--round-to", type=int_list, metavar="K[,K...]", help="also time each model with widths cut to multiples of K")
    add_model_name_arguments(p)
    p.add_argument("--json", metavar="OUT", help="also write the full result (every round) to this JSON file")
    p.add_argument("--default-malloc", action="store_true", help="time in this process with glibc's default allocator settings")


def child_argv(args: argparse.Namespace) -> list[str]:
    """The same command line, for the child process that runs with the steady allocator."""
    argv = ["-m", "polarprune", "latency", *args.models, "--runtime", args.runtime,
            "--batch", ",".join(map(str, args.batch)), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
            "--num-classes", str(args.num_classes), "--default-malloc"]
    for option, value in (("--threads", args.threads), ("--input-size", args.input_size), ("--json", args.json)):
        if value is not None:
            argv += [option, str(value)]
    if args.round_to:
        argv += ["--round-to", ",".join(map(str, args.round_to))]
    if args.trust_code:
        argv.append("--trust-code")
    return argv


def unique_labels(texts: list[str]) -> list[str]:
    """The MODEL arguments as table labels, a repeated one numbered."""
    labels: list[str] = []
    for text in texts:
        label, n = text, 2
        while label in labels:
            label, n = f"{text} #{n}", n + 1
        labels.append(label)
    return labels


def format_table(result: dict[str, Any], macs: dict[str, int]) -> str:
    """One row per model and batch: median ms, ratio to the first model, latency cut vs MACs cut."""
    names = result["models"]
    ref = names[0]
    width = max(len(n) for n in names)
    lines = [f"runtime {result['runtime']}, input {'x'.join(map(str, result['input_shape']))}, threads {result['threads']}, "
             f"{result['rounds']} interleaved rounds, allocator {'steady' if result['steady_malloc'] else 'glibc default'}"]
    lines.append(f"{'model':<{width}}  {'batch':>5}  {'median ms':>10}  {'x first':>7}  {'latency cut':>11}  {'MACs cut':>8}  {'cut ratio':>9}")
    for entry in result["batches"]:
        for name in names:
            ratio = entry["ratio_to_first"][name]
            macs_cut = 1 - macs[name] / macs[ref] if macs[ref] else 0.0
            cut_ratio = f"{(1 - ratio) / macs_cut:.2f}" if name != ref and macs_cut > 0 else "-"
            lines.append(f"{name:<{width}}  {entry['batch']:>5}  {entry['median_ms'][name]:>10.3f}  {ratio:>7.3f}  "
                         f"{1 - ratio:>11.1%}  {macs_cut:>8.1%}  {cut_ratio:>9}")
    lines.append("(x first: median of the per-round ratios to the first model; cut ratio: latency cut / MACs cut)")
    return "\n".join(lines)


def common_input_shape(models: dict[str, Any], input_size: int | None) -> tuple[int, int, int]:
    """The one input every model is timed on: each model's own (``input_shape_of``); models that take
    different inputs are a one-line error instead of a shape mismatch deep inside torch."""
    from ..errors import PolarpruneError
    from ..models import input_shape_of

    shapes = {label: input_shape_of(model, input_size) for label, model in models.items()}
    first, *_ = shapes.values()
    other = next((label for label, shape in shapes.items() if shape != first), None)
    if other is not None:
        raise PolarpruneError(f"the models take different inputs ({next(iter(shapes))}: {'x'.join(map(str, first))}, "
                              f"{other}: {'x'.join(map(str, shapes[other]))}); time models that take the same input (--input-size S sets the size)")
    return first


def run(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.latency import measure_latency, run_with_steady_malloc, steady_malloc
    from ..deploy.widths import round_widths
    from ..fileio import atomic_write_json
    from ..flops import count_model
    from ..serialization import read_model

    check_at_least({"--rounds": (args.rounds, 1), "--warmup": (args.warmup, 0), "--threads": (args.threads, 1),
                    "--input-size": (args.input_size, 1), "--num-classes": (args.num_classes, 1)})
    if not args.default_malloc and not steady_malloc():
        return run_with_steady_malloc(child_argv(args))
    loaded = {label: read_model(text, num_classes=args.num_classes, trust_code=args.trust_code)
              for label, text in zip(unique_labels(args.models), args.models)}
    shape = common_input_shape(loaded, args.input_size)
    for label, model in loaded.items():
        check_forward(label, model, shape, "set --input-size")
    models = loaded
    if args.round_to:
        example = torch.randn(1, *shape)
        models = {f"{label} @{k}": round_widths(model, k, example) for label, model in loaded.items() for k in args.round_to}
    result = measure_latency(models, shape, runtime=args.runtime, batches=args.batch, rounds=args.rounds,
                             warmup=args.warmup, threads=args.threads).as_dict()
    macs = {name: count_model(model, shape).macs for name, model in models.items()}
    result["macs"] = macs
    result["command"] = shlex.join(["polarprune", *child_argv(args)[2:]])
    print(format_table(result, macs))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
