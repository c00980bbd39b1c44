"""Progress of a training epoch: a tqdm bar on a terminal; elsewhere (stderr redirected to a file, a batch
job's log) a plain line at a steady pace, every ``interval`` seconds or every tenth of the epoch, whichever
comes first, with the throughput and an ETA. Without it an epoch of minutes prints nothing to a log file;
a line never follows the previous one within a sixth of the interval, so epochs of seconds stay quiet."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Protocol, TextIO

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 30.0  # a log line at least this often ...
LOG_FRACTION = 0.1  # ... and at every tenth of the epoch
MIN_GAP_FRACTION = 1 / 6  # but no two lines closer than this share of the interval (5 s of 30 s)
BAR_REFRESH_STEPS = 10  # the bar's numbers (which cost a device sync) every this many steps
Stats = Callable[[], dict[str, str]]  # the numbers to show, computed only when they are shown


class Progress(Protocol):
    """What the training loop calls: one ``step`` per optimisation step, ``close`` at the epoch's end."""

    def step(self, stats: Stats) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """Progress turned off (``train.progress: false``, or not the main process)."""

    def step(self, stats: Stats) -> None:
        pass

    def close(self) -> None:
        pass


def format_duration(seconds: float) -> str:
    """``"18s"``, ``"3m05s"``, ``"1h02m"``: a short duration for an ETA."""
    whole = max(int(round(seconds)), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(desc: str, done: int, total: int, elapsed: float, stats: dict[str, str]) -> str:
    """One log line: steps done, percent, steps per second, ETA and the loop's numbers."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = format_duration((total - done) / rate) if rate > 0 else "?"
    numbers = "".join(f", {key} {value}" for key, value in stats.items())
    return f"{desc}: step {done}/{total} ({100 * done / max(total, 1):.0f}%), {rate:.2f} steps/s, ETA {eta}{numbers}"


class LogProgress:
    """A line (through ``write``, default the ``polarprune`` logger) every ``interval`` seconds or at every
    ``LOG_FRACTION`` of the steps, whichever comes first, but not within ``MIN_GAP_FRACTION * interval`` of
    the previous line; none for the last step (the epoch line follows)."""

    def __init__(self, total: int, desc: str, *, interval: float = DEFAULT_INTERVAL_S,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.interval = total, desc, interval
        self.write = write or log.info
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.every = max(1, round(total * LOG_FRACTION))
        self.next_mark = self.every  # the step count of the next tenth of the epoch

    def step(self, stats: Stats) -> None:
        self.done += 1
        now = self.clock()
        gap = now - self.last
        at_mark = self.done >= self.next_mark and gap >= self.interval * MIN_GAP_FRACTION
        if self.done >= self.total or not (at_mark or gap >= self.interval):
            return
        self.last = now
        self.next_mark = (self.done // self.every + 1) * self.every
        self.write(progress_line(self.desc, self.done, self.total, now - self.start, stats()))

    def close(self) -> None:
        pass


class BarProgress:
    """tqdm's bar on a terminal, its numbers refreshed every ``BAR_REFRESH_STEPS`` steps."""

    def __init__(self, total: int, desc: str, stream: TextIO) -> None:
        from tqdm import tqdm

        self.total, self.done = total, 0
        self.bar: Any = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)

    def step(self, stats: Stats) -> None:
        self.done += 1
        self.bar.update(1)
        if self.done % BAR_REFRESH_STEPS == 1 or self.done == self.total:
            self.bar.set_postfix(stats())

    def close(self) -> None:
        self.bar.close()


def epoch_progress(total: int, desc: str, *, interval: float = DEFAULT_INTERVAL_S, stream: TextIO | None = None,
                   write: Callable[[str], None] | None = None) -> Progress:
    """The bar when ``stream`` (default stderr) is a terminal, else the steady log lines."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(total, desc, stream)
    return LogProgress(total, desc, interval=interval, write=write)
