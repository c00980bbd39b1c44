"""``polarprune models``: list the model names."""

from __future__ import annotations

import argparse

from .common import command_parser


def register(sub: argparse._SubParsersAction) -> None:
    command_parser(sub, "models", "list model names", "List every model name that configs and commands accept.", run,
                   trust_code=False)


def run(args: argparse.Namespace) -> int:
    from ..models import list_models

    for name in list_models():
        print(name)
    return 0
