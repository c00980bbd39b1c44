"""``polarprune models``: list the model names."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model names", description="List every model name that configs and commands accept.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import list_models

    for name in list_models():
        print(name)
    return 0
