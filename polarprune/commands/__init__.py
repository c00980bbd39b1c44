"""One module per sub-command; each defines ``register(subparsers)``. Shared argument helpers live
here (torch-free, so ``--help`` stays fast)."""

from __future__ import annotations

import argparse

TRUST_CODE_HELP = (
    "allow importing the Python module that a model name 'package.module:callable' names "
    "(on the command line, in a config or recipe, or inside a model file); without it such a model is refused"
)


def add_trust_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-code``: the command may import modules named by import paths (cli.main opens the scope)."""
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
