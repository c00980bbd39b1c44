"""User-facing errors: the CLI prints them as one line, ``polarprune: error: ...``."""


class PolarpruneError(Exception):
    """An error caused by the user's input (a file, a key, a layer, a shape), not by a bug.

    The command-line tool prints the message on one line and exits non-zero without a
    traceback; Python callers can catch it like any exception.
    """
