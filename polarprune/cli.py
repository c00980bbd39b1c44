"""The ``polarprune`` command: a thin dispatcher over ``polarprune.commands.<name>`` modules, whose
``register(subparsers)`` adds a sub-parser with ``func`` (parsed ``argparse.Namespace`` -> exit code)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from typing import NoReturn

from . import __version__
from .errors import PolarpruneError

# The order is the order of `polarprune --help`.
COMMAND_MODULES = ["demo", "run", "train", "prune", "mask", "eval", "inspect", "flops", "export", "latency", "recipes",
                   "models", "yolo", "detection_data"]

DESCRIPTION = (
    "Structured channel pruning of CNNs through sparsity training: the polarization "
    "regularizer (NeurIPS 2020), Network Slimming (L1) and MaskSparsity."
)


DEBUG_HELP = "show full Python tracebacks on errors"


class Parser(argparse.ArgumentParser):
    """argparse with the README's error form: ``polarprune: error: ...`` and one hint line naming the
    help of the command that failed, instead of the usage block; exit status 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        usage_error(message, self.prog)


def usage_error(message: str, prog: str = "polarprune") -> NoReturn:
    """Print a usage error in two lines (the error, where to read the help) and exit 2."""
    print(f"polarprune: error: {message}\nsee '{prog} --help'", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="polarprune", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"polarprune {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"polarprune.commands.{name}").register(sub)
    for command in sub.choices.values():  # `polarprune prune --debug ...` works as `polarprune --debug prune ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def error_line(exc: BaseException) -> str:
    """The one line printed for an error (first line of its message)."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if isinstance(exc, (PolarpruneError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"polarprune: error: {message}"
    return f"polarprune: error: {type(exc).__name__}: {message} (run with --debug for the traceback)"


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; with ``--trust-code`` inside ``trusting_code()`` (import paths allowed)."""
    if not getattr(args, "trust_code", False):
        return int(args.func(args) or 0)
    from .models.imports import trusting_code  # imports torch: only for commands that asked for it

    with trusting_code():
        return int(args.func(args) or 0)


def configure_logging(debug: bool) -> None:
    """The one logging set-up: ``polarprune.*`` loggers print bare messages on stderr, INFO and
    up on rank 0, warnings and errors only on the other ranks of a torchrun launch."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("polarprune")
    logger.handlers[:] = [handler]
    logger.propagate = False
    main_rank = os.environ.get("RANK", "0") in ("", "0")
    logger.setLevel(logging.DEBUG if debug else logging.INFO if main_rank else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    configure_logging(debug)
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
        if extras:
            # `polarprune run RECIPE --out DIR key=value`: overrides may also follow the options
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extras):
                args.overrides = list(args.overrides) + extras
            else:
                usage_error(f"unrecognized arguments: {' '.join(extras)}", f"polarprune {args.command or ''}".strip())
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return run_command(args)
    except KeyboardInterrupt:
        print("polarprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except SystemExit as exc:  # argparse
        return int(exc.code) if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - the one place where errors become one line
        if debug:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
