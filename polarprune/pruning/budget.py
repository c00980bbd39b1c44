"""A time and memory budget for the analysis and pruning stages.

Torch-Pruning's grouping can run for many minutes or grow to tens of gigabytes on a graph it was
not made for (a detector traced through its post-processing did both). A ``Guard`` watches one
pruning call from a thread: when the elapsed time or the growth of the process's resident memory
passes the ``Budget``, it raises ``BudgetExceeded`` inside the pruning thread, and the guard turns it
into one ``PolarpruneError`` line that names the model and the stage. The memory allowance is the
budget plus the model's own size (the analysis works on a copy). The check is also made between
stages (``Guard.stage``), so a stage that ends over budget stops the next one from starting.

The budget is data: ``Budget(seconds=..., memory_gb=...)``, None turns a limit off.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from torch import nn

from ..errors import PolarpruneError

GIB = 2**30


@dataclass(frozen=True)
class Budget:
    """Limits of one pruning call: wall ``seconds`` and resident-memory growth ``memory_gb`` above the
    model's own size (None: no limit); ``interval``: seconds between the watchdog's checks."""

    seconds: float | None = 300.0
    memory_gb: float | None = 4.0
    interval: float = 0.05

    def __post_init__(self) -> None:
        for name in ("seconds", "memory_gb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise PolarpruneError(f"budget {name} must be a positive number or None, got {value!r}")
        if not (isinstance(self.interval, (int, float)) and 0 < self.interval <= 10):
            raise PolarpruneError(f"budget interval must be in (0, 10] seconds, got {self.interval!r}")

    def describe(self) -> str:
        seconds = "no time limit" if self.seconds is None else f"{self.seconds:g} s"
        memory = "no memory limit" if self.memory_gb is None else f"{self.memory_gb:g} GB above the model's size"
        return f"{seconds}, {memory}"


DEFAULT_BUDGET = Budget()
UNLIMITED = Budget(seconds=None, memory_gb=None)


class BudgetExceeded(BaseException):
    """Raised asynchronously in the pruning thread; a BaseException so that no ``except Exception``
    on the way (a tracing error handler) turns it into another error."""


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux ``/proc``); None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (its own size)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def over_budget(budget: Budget, elapsed: float, growth: int | None, allowance: int) -> str:
    """Why the budget is exceeded ('' when it is not): a pure check of the measured values."""
    if budget.seconds is not None and elapsed > budget.seconds:
        return f"took more than {budget.seconds:g} s"
    if budget.memory_gb is not None and growth is not None and growth > allowance:
        return f"grew memory by {growth / GIB:.1f} GB, above the {allowance / GIB:.1f} GB allowed"
    return ""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule ``exc`` in the thread ``thread_id`` (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else ctypes.c_void_p(0))


class Guard:
    """Watches the thread that entered it; ``stage`` names what runs now (for the error line)."""

    def __init__(self, budget: Budget, model_name: str, allowance: int) -> None:
        self.budget, self.model_name, self.allowance = budget, model_name, allowance
        self.stage = "start"
        self.reason = ""
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread_id = threading.get_ident()
        self._start = time.perf_counter()
        self._base = resident_bytes()

    def check(self) -> str:
        """Why the budget is exceeded now ('' when it is not)."""
        now = resident_bytes()
        growth = None if now is None or self._base is None else now - self._base
        return over_budget(self.budget, time.perf_counter() - self._start, growth, self.allowance)

    def _watch(self) -> None:
        while not self._done.wait(self.budget.interval):
            reason = self.check()
            if reason:
                with self._lock:
                    if not self._done.is_set():
                        self.reason = reason
                        _raise_in(self._thread_id, BudgetExceeded)
                return

    @contextmanager
    def step(self, stage: str) -> Iterator[None]:
        """Run one stage under the name ``stage``; checks the budget before it starts."""
        self.stage = stage
        reason = self.check()
        if reason:
            self.reason = reason
            raise BudgetExceeded
        yield

    def error(self) -> PolarpruneError:
        return PolarpruneError(f"pruning {self.model_name} stopped in stage {self.stage!r}: it {self.reason} "
                               f"(budget: {self.budget.describe()}; pass budget=Budget(...) to change it)")


@contextmanager
def guarded(model: nn.Module, budget: Budget | None = None, name: str | None = None) -> Iterator[Guard]:
    """Run the block under ``budget`` (default ``DEFAULT_BUDGET``); a breach is one ``PolarpruneError``."""
    budget = DEFAULT_BUDGET if budget is None else budget
    guard = Guard(budget, name or type(model).__name__, int((budget.memory_gb or 0) * GIB) + model_bytes(model))
    watcher = threading.Thread(target=guard._watch, name="polarprune-budget", daemon=True)
    limited = budget.seconds is not None or budget.memory_gb is not None
    try:
        if limited:
            watcher.start()
        yield guard
    except BaseException:
        _stop(guard, watcher)
        if not guard.reason:
            raise  # not ours (or an enclosing guard's BudgetExceeded: it reports it)
        # ours; also when the code it interrupted swallowed it in a bare ``except`` and failed otherwise
        # (Torch-Pruning's tracing retries a failed forward that way)
        raise guard.error() from None
    finally:
        _stop(guard, watcher)


def _stop(guard: Guard, watcher: threading.Thread) -> None:
    """Stop the watchdog; a budget exception it scheduled but that was not raised yet is cleared."""
    try:
        with guard._lock:
            guard._done.set()
        if watcher.is_alive():
            watcher.join()
        _raise_in(guard._thread_id, None)
    except BudgetExceeded:
        pass


__all__ = ["Budget", "DEFAULT_BUDGET", "UNLIMITED", "BudgetExceeded", "Guard", "guarded", "over_budget", "resident_bytes",
           "model_bytes"]
