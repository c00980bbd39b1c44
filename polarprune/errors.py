"""User-facing errors: the CLI prints them as one line, ``polarprune: error: ...``."""

from __future__ import annotations

import importlib
from types import ModuleType


class PolarpruneError(Exception):
    """An error caused by the user's input (a file, a key, a layer, a shape), not by a bug: the command-line
    tool prints the message on one line and exits non-zero without a traceback."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error's message (its type name when there is none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` of the optional dependency group ``extra``; when it (or a module it needs) is
    missing, a one-line error that says what to install instead of an exporter's or loader's own failure.
    ``purpose`` starts the message, e.g. ``"onnx export"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise PolarpruneError(f"{purpose} needs the {extra} extra: pip install 'polarprune[{extra}]' "
                              f"(missing module {missing})") from None
