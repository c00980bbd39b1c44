"""``polarprune demo``: the whole pipeline of one method on the bundled digits, in minutes on a CPU."""

from __future__ import annotations

import argparse

from .common import command_parser

METHODS = ("polarization", "l1", "masksparsity")

HELP = """Run a complete pruning pipeline on scikit-learn's bundled handwritten digits (no
download): sparsity training with the chosen method, pruning, fine-tuning, then a summary of
accuracy, MACs, parameters and CPU latency per stage. It is `polarprune run demo-<method>`;
running it again with the same --out resumes or just reports."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "demo", "the whole pipeline on the bundled digits (a few minutes on a CPU)", HELP, run,
                       raw=True, trust_code=False)
    p.add_argument("--method", choices=METHODS, default="polarization", help="sparsity method (default: polarization)")
    p.add_argument("--out", help="run folder (default: runs/demo-<method>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")


def run(args: argparse.Namespace) -> int:
    from .run import run_recipe

    return run_recipe(f"demo-{args.method}", list(args.overrides), args.out)
