"""``polarprune demo``: the whole pipeline of one method on the bundled digits, in minutes on a CPU."""

from __future__ import annotations

import argparse

METHODS = ("polarization", "l1", "masksparsity")

HELP = """Run a complete pruning pipeline on scikit-learn's bundled handwritten digits (no
download): sparsity training with the chosen method, pruning, fine-tuning, then a summary of
accuracy, MACs, parameters and CPU latency per stage. It is `polarprune run demo-<method>`;
running it again with the same --out resumes or just reports."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the bundled digits (a few minutes on a CPU)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="polarization", help="sparsity method (default: polarization)")
    p.add_argument("--out", help="run folder (default: runs/demo-<method>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .run import run_recipe

    return run_recipe(f"demo-{args.method}", list(args.overrides), args.out)
