"""User-facing errors: the CLI prints them as one line, ``polarprune: error: ...``."""


class PolarpruneError(Exception):
    """An error caused by the user's input (a file, a key, a layer, a shape), not by a bug: the command-line
    tool prints the message on one line and exits non-zero without a traceback."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error's message (its type name when there is none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
