"""BENCHMARKS section 7: the scripted first hour of a new user (``bench/first_hour.py``)."""

from __future__ import annotations

import re
from typing import Any

from .engine import Results, renderer, table


def _value_cell(value: Any) -> str:
    """A MACs count with thousands separators, an input shape as ``3x32x32``, table rows
    (lists of lists) as ``name value value, ...``."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return ", ".join(" ".join(_value_cell(x) for x in row) for row in value)
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def short_command(command: str) -> str:
    """A session command without its temporary folder: the clone venv's ``polarprune`` as
    ``polarprune``, the rest of the folder as ``TMP/``."""
    command = re.sub(r"\S*/clone/\.venv/bin/polarprune\b", "polarprune", command)
    return re.sub(r"\S*/polarprune-first-hour-[^/\s]+/", "TMP/", command)


@renderer("first-hour-steps")
def first_hour_steps(results: Results) -> str:
    """Each command of the session: its exit status against the expected one, time, traceback seen."""
    rows = [[f"{s['step']}", f"`{short_command(s['command'])}`", f"{s['rc']} ({s['expected_rc']})", f"{s['seconds']:.0f}",
             "yes" if s["traceback"] else "no"] for s in results.load("first_hour")["steps"]]
    return table(["step", "command", "exit (expected)", "seconds", "traceback"], rows, align="llrrl")


@renderer("first-hour-figures")
def first_hour_figures(results: Results) -> str:
    """The MACs and input shape as each command reported them."""
    figures = results.load("first_hour")["figures"]
    rows = [[what, "; ".join(f"{cmd} {_value_cell(v)}" for cmd, v in values.items()),
             "yes" if len({repr(v) for v in values.values()}) == 1 else "**no**"] for what, values in figures.items()]
    return table(["figure", "as each command reported it", "all equal"], rows)


@renderer("first-hour-verdict")
def first_hour_verdict(results: Results) -> str:
    """``no problem found`` or the problems the run found."""
    problems = results.load("first_hour")["problems"]
    return "no problem found" if not problems else "problems found: " + "; ".join(problems)
