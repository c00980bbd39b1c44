"""Latency of models side by side in one process, per runtime (``runtimes.RUNTIME_RECORDS``).

The candidates run round-robin (``interleaved``), so a shared machine's drifts hit all of them alike
and the per-round ratios against the first model are paired measurements; figures are medians.
glibc hands large freed blocks back to the kernel, so every forward page-faults its activations in
again: ``STEADY_MALLOC_ENV`` tells glibc to keep freed memory (``polarprune latency``'s default).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import PolarpruneError
from .runtimes import RUNTIME_RECORDS, TIMING_EXPORT_TOLERANCE, build_runner

RUNTIMES = tuple(RUNTIME_RECORDS)  # the built-in runtimes' names (runtimes.py holds the records)
MIN_ROUND_SECONDS = 0.02  # a timed round repeats small forwards until it lasts about this long
MAX_CALLS_PER_ROUND = 64

# ----------------------------------------------------------------------------- allocator

STEADY_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}


def steady_malloc() -> bool:
    """True when this process runs with ``STEADY_MALLOC_ENV`` (glibc reads it at start-up)."""
    return all(os.environ.get(k) == v for k, v in STEADY_MALLOC_ENV.items())


def reexec_with_steady_malloc() -> None:
    """Restart this script (``sys.argv``) with ``STEADY_MALLOC_ENV`` set, unless it already runs with it."""
    if not steady_malloc():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC_ENV})


def run_with_steady_malloc(argv: Sequence[str]) -> int:
    """Run ``python ARGV...`` in a child process with ``STEADY_MALLOC_ENV``; its exit code.
    (A command cannot restart its own process: it may run inside a caller's, e.g. a test.)"""
    return subprocess.run([sys.executable, *argv], env={**os.environ, **STEADY_MALLOC_ENV}, check=False).returncode


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems (32 MiB)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
# What steady_malloc_here leaves behind. glibc cannot be given its dynamic thresholds back: any mallopt of them
# turns the adjustment off for good. Setting back the start values (128 KiB) then left every later allocation
# above 128 KiB to mmap and page-fault afresh: training after a latency table (e.g. a sparsity stage with a
# latency target) ran 2.4x slower, half of it in the kernel. These are the values glibc's own adjustment reaches
# in a process that frees tensors of 32 MiB or more (mmap threshold, and trim threshold twice that).
RESTORED_MMAP_THRESHOLD, RESTORED_TRIM_THRESHOLD = MAX_MMAP_THRESHOLD, 2 * MAX_MMAP_THRESHOLD


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt``; False where it is not available (not glibc) or refuses the value."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except (OSError, AttributeError):
        return False


@contextmanager
def steady_malloc_here() -> Iterator[bool]:
    """Inside, glibc keeps freed memory in this process (``mallopt``: no trimming, mmap only above
    ``MAX_MMAP_THRESHOLD``), as ``STEADY_MALLOC_ENV`` does for a process from its start; afterwards
    the thresholds glibc's own adjustment would reach (``RESTORED_*``), never its small start values.
    Yields whether it took effect (False off glibc, or when the process already runs with
    ``STEADY_MALLOC_ENV``, which stays)."""
    if steady_malloc():
        yield False
        return
    applied = _mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and _mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
    try:
        yield applied
    finally:
        if applied:
            _mallopt(M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD)
            _mallopt(M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD)


def minor_page_faults() -> int:
    """Minor page faults of this process so far (a fresh page touched for the first time)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(candidates: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, called round-robin ``rounds`` times after
    ``warmup`` untimed rounds: ``{name: [seconds of round 1, round 2, ...]}``."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    return times


def paired_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Ratio of each round's pair (round k of one candidate over round k of the other)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"unpaired rounds: {len(numerators)} vs {len(denominators)}")
    return [a / b for a, b in zip(numerators, denominators)]


def _repeated(fn: Callable[[], Any], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def median_forward_ms(runs: Sequence[Callable[[], Any]], rounds: int = 5, min_round_seconds: float = MIN_ROUND_SECONDS) -> list[float]:
    """Median ms of one call of each of ``runs``, called side by side in ``rounds`` interleaved rounds after
    one warm-up round; each repeats its call (up to ``MAX_CALLS_PER_ROUND``) to last about ``min_round_seconds``."""
    calls = [max(1, min(MAX_CALLS_PER_ROUND, math.ceil(min_round_seconds / max(timed(run), 1e-9)))) for run in runs]
    seconds = interleaved({str(k): _repeated(run, n) for k, (run, n) in enumerate(zip(runs, calls))}, rounds=rounds, warmup=1)
    return [statistics.median(seconds[str(k)]) * 1000.0 / n for k, n in enumerate(calls)]


# ----------------------------------------------------------------------------- runtimes


def forward_runner(model: nn.Module, runtime: str, input_shape: Sequence[int], batch: int, *,
                   threads: int | None = None, workdir: str | os.PathLike[str] | None = None, seed: int = 0,
                   probe: bool = False) -> Callable[[], Any]:
    """A no-argument callable running one forward of a copy of ``model`` at ``batch`` in ``runtime`` (its
    record in ``runtimes.RUNTIME_RECORDS``); ``onnxruntime`` exports it into ``workdir`` (a new temporary
    folder, left to the caller, when None); ``probe``: the record's quicker builder (no artifact check)."""
    return build_runner(model, runtime, input_shape, batch, threads=threads, workdir=workdir, seed=seed, probe=probe)


@dataclass
class BatchLatency:
    """One batch size: per-forward milliseconds of every model, and ratios against the first."""

    batch: int
    calls_per_round: int
    ms: dict[str, list[float]]  # per round
    median_ms: dict[str, float]
    ratio_to_first: dict[str, float]  # median of the per-round ratios
    round_ratios: dict[str, list[float]]
    page_faults_per_forward: dict[str, int]


@dataclass
class LatencyResult:
    """``measure_latency``'s answer (``as_dict()`` is its JSON form)."""

    runtime: str
    input_shape: tuple[int, ...]
    threads: int
    rounds: int
    steady_malloc: bool
    models: list[str]
    batches: list[BatchLatency] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(models: Mapping[str, nn.Module], input_shape: Sequence[int], *, runtime: str = "eager",
                    batches: Sequence[int] = (1, 64), rounds: int = 7, warmup: int = 1, threads: int | None = None,
                    min_round_seconds: float = MIN_ROUND_SECONDS, seed: int = 0, probe: bool = False) -> LatencyResult:
    """Median per-forward latency of each model at each batch size in interleaved rounds, with the per-round
    ratios against the first model; a round repeats forwards (the same count for every model) to last
    ``min_round_seconds`` (``probe``: the runtime's quicker builder, ``forward_runner``)."""
    if not models:
        raise PolarpruneError("measure_latency needs at least one model")
    if rounds < 1 or warmup < 0:
        raise PolarpruneError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    if any(int(b) < 1 for b in batches):
        raise PolarpruneError(f"batch sizes must be >= 1, got {list(batches)}")
    if threads is not None and threads < 1:
        raise PolarpruneError(f"threads must be >= 1, got {threads}")
    names = list(models)
    result = LatencyResult(runtime, tuple(int(s) for s in input_shape), threads or torch.get_num_threads(), rounds,
                           steady_malloc(), names)
    with tempfile.TemporaryDirectory(prefix="polarprune-latency-") as workdir, pinned_threads(threads):
        for batch in batches:
            runners = {n: forward_runner(models[n], runtime, input_shape, int(batch), threads=threads, workdir=workdir, seed=seed,
                                         probe=probe) for n in names}
            first = runners[names[0]]
            first()  # warm the reference once before sizing the rounds
            calls = max(1, min(MAX_CALLS_PER_ROUND, math.ceil(min_round_seconds / max(timed(first), 1e-9))))
            seconds = interleaved({n: _repeated(r, calls) for n, r in runners.items()}, rounds=rounds, warmup=warmup)
            ms = {n: [s * 1000.0 / calls for s in seconds[n]] for n in names}
            ratios = {n: paired_ratios(ms[n], ms[names[0]]) for n in names}
            faults = {}
            for n, r in runners.items():
                before = minor_page_faults()
                r()
                faults[n] = minor_page_faults() - before
            result.batches.append(BatchLatency(
                batch=int(batch), calls_per_round=calls, ms=ms, median_ms={n: statistics.median(v) for n, v in ms.items()},
                ratio_to_first={n: statistics.median(v) for n, v in ratios.items()}, round_ratios=ratios,
                page_faults_per_forward=faults,
            ))
            del runners
    return result


@contextmanager
def pinned_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (when given) inside, put back afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


NOISE_LIMIT = 0.2  # a figure whose spread (IQR over median) is above this is reported as noisy
SUMMARY_THREADS = 1  # the thread count of the latency in run summaries and ``eval``


@dataclass(frozen=True)
class LatencyFigure:
    """One latency figure with how it was measured: median ms of the rounds, their spread (interquartile
    range over the median), the number of rounds, torch's pinned thread count, the runtime and whether
    glibc kept freed memory (``allocator``: ``steady`` or ``default``)."""

    median_ms: float
    spread: float
    rounds: int
    threads: int
    runtime: str
    allocator: str


def relative_spread(values: Sequence[float]) -> float:
    """Interquartile range of ``values`` over their median (0.0 for fewer than two values or a zero median)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (q3 - q1) / middle if middle > 0 else 0.0


def spread_too_wide(spread: float, limit: float = NOISE_LIMIT) -> bool:
    """True when a relative spread is above ``limit`` (the figure is noise rather than a measurement)."""
    return spread > limit


def is_noisy(figure: LatencyFigure, limit: float = NOISE_LIMIT) -> bool:
    """True when ``figure``'s rounds spread more than ``limit`` around their median."""
    return spread_too_wide(figure.spread, limit)


def latency_figure(model: nn.Module, input_shape: Sequence[int], *, batch: int = 1, runtime: str = "eager",
                   rounds: int = 30, warmup: int = 5, threads: int | None = SUMMARY_THREADS, probe: bool = False) -> LatencyFigure:
    """One forward of ``model`` measured with torch's threads pinned to ``threads`` (None: torch's current
    count) and glibc keeping freed memory: the median and spread of ``rounds`` rounds after ``warmup``
    (``probe``: the runtime's quicker builder, ``forward_runner``)."""
    with steady_malloc_here() as applied:
        result = measure_latency({"model": model}, input_shape, runtime=runtime, batches=(batch,), rounds=rounds,
                                 warmup=warmup, threads=threads, min_round_seconds=0.0, probe=probe)
    ms = result.batches[0].ms["model"]
    allocator = "steady" if applied or result.steady_malloc else "default"
    return LatencyFigure(statistics.median(ms), relative_spread(ms), rounds, result.threads, runtime, allocator)


def latency_ms(model: nn.Module, input_shape: Sequence[int], *, batch: int = 1, runtime: str = "eager",
               rounds: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one forward of ``model`` at torch's current thread count."""
    return latency_figure(model, input_shape, batch=batch, runtime=runtime, rounds=rounds, warmup=warmup,
                          threads=None).median_ms


__all__ = [
    "NOISE_LIMIT", "RUNTIMES", "STEADY_MALLOC_ENV", "SUMMARY_THREADS", "TIMING_EXPORT_TOLERANCE", "BatchLatency", "LatencyFigure",
    "LatencyResult", "forward_runner", "interleaved", "is_noisy", "latency_figure", "latency_ms", "relative_spread", "spread_too_wide",
    "measure_latency", "median_forward_ms", "pinned_threads", "steady_malloc_here", "minor_page_faults", "paired_ratios", "reexec_with_steady_malloc", "run_with_steady_malloc",
    "steady_malloc", "timed",
]
