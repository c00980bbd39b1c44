"""The latency cost model for a runtime, and ``prune_to_latency`` (the ``latency-target`` strategy's entry point).

``latency_cost_model`` builds a ``pruning.latency_cost.LatencyCost`` from per-layer timings in a runtime
record (``runtimes.py``) at a batch and thread count, cached under ``cache_folder()``, keyed by the
CPU model, the runtime, the library versions, the threads and the batch. ``prune_to_latency`` prunes
with it, then measures the pruned model against the unpruned one end to end (interleaved rounds)
and, while the measured cut misses the target by more than ``TOLERANCE``, re-aims (``next_aim``: first by
the measured/predicted ratio, then by interpolating between the tries that bracket the target), at most
``REFINEMENTS`` times; a miss after the last is a one-line error. This is the seam: pruning asks for a cost model,
the caller (this module, the prune command) builds it; pruning never imports deploy.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import PolarpruneError
from ..hardware import cpu_model
from ..pruning.api import prune_model
from ..pruning.base import as_input_tuple
from ..pruning.graph import analysed_copy
from ..pruning.latency_cost import LatencyCost, Measure, profile_latency
from ..pruning.options import PruneOptions, parse_options
from ..pruning.report import PruneReport
from .latency import measure_latency, median_forward_ms, pinned_threads, steady_malloc_here
from .runtimes import build_runner, runtime

log = logging.getLogger(__name__)

TABLE_ROUND_SECONDS = 0.005  # a table point's timed round repeats the forward to last about this long
CHECK_ROUNDS = 5  # interleaved rounds of the slower-model check (cheap: it only has to tell faster from slower)
TOLERANCE = 0.05  # the measured cut may miss the target by this much before prune_to_latency re-aims
REFINEMENTS = 4  # re-aims after the first pruning before prune_to_latency gives up (each prunes and measures once)
MIN_AIM_STEP = 0.01  # a re-aim moves the aim by at least this much (noise must not make it try the same aim again)
# the layer probes timed side by side at once hold at most about this many bytes: ResNet-50's 81 probes of one
# layer at batch 64 all built at once took more than 24 GB in onnxruntime (an out-of-memory kill)
PROBE_MEMORY_BUDGET = 2 << 30
# a probe's runner holds about this many times its float32 input and output: measured 2.4-2.7 for onnxruntime
# sessions of ResNet-50's 56 px convs at batch 64 (the arena keeps the output and the op's buffers)
PROBE_MEMORY_FACTOR = 3
# (unpruned model, pruned model) -> measured latency ratio pruned / unpruned
Compare = Callable[[nn.Module, nn.Module], float]


def cache_folder(folder: str | os.PathLike[str] | None = None) -> Path:
    """Where latency tables are cached: ``folder``, else ``$XDG_CACHE_HOME/polarprune/latency``
    (``~/.cache/polarprune/latency``)."""
    if folder is not None:
        return Path(folder).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polarprune" / "latency"


def cache_key(runtime_name: str, batch: int, threads: int) -> dict[str, Any]:
    """What a latency table depends on besides the layer's shape."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    package = runtime(runtime_name).package
    if package is not None:
        versions[package] = getattr(sys.modules.get(package) or __import__(package), "__version__", "?")
    return {"cpu": cpu_model() or platform.processor() or platform.machine(), "runtime": runtime_name, "versions": versions, "threads": threads, "batch": batch}


def runtime_measure(runtime_name: str, batch: int, threads: int, workdir: str | os.PathLike[str],
                    rounds: int = 5) -> Measure:
    """``measure([(module, input_shape), ...]) -> [ms, ...]``: one forward of each at ``batch`` in the runtime,
    side by side (median of ``rounds`` interleaved rounds of about ``TABLE_ROUND_SECONDS`` each)."""

    def measure(items: Sequence[tuple[nn.Module, Sequence[int]]]) -> list[float]:
        sizes = [probe_bytes(shape, output_shape(module, shape), batch) for module, shape in items]
        ms: list[float] = []
        for chunk in memory_chunks(sizes, PROBE_MEMORY_BUDGET):  # the runners of one chunk alive at a time
            runs = [build_runner(items[i][0], runtime_name, items[i][1], batch, threads=threads, workdir=workdir, probe=True)
                    for i in chunk]
            ms += median_forward_ms(runs, rounds=rounds, min_round_seconds=TABLE_ROUND_SECONDS)
            del runs
        return ms

    return measure


def output_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one sample of ``module``'s output on one sample of ``input_shape`` (a forward at batch 1, in
    eval mode so that no BatchNorm statistics change; the module's mode is restored)."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return tuple(module(torch.zeros(1, *input_shape)).shape[1:])
    finally:
        module.train(training)


def probe_bytes(input_shape: Sequence[int], out_shape: Sequence[int], batch: int) -> int:
    """The memory a layer probe's runner is assumed to hold: its float32 input and output at ``batch``, times
    ``PROBE_MEMORY_FACTOR`` (an expanding 1x1 conv's output is 4x its input: the output counts as much)."""
    numel = math.prod(int(dim) for dim in input_shape) + math.prod(int(dim) for dim in out_shape)
    return 4 * batch * numel * PROBE_MEMORY_FACTOR


def memory_chunks(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group's sum stays within ``budget`` (an item larger than
    the budget is a group of its own): the probes timed side by side at once."""
    chunks: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not chunks or total + size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(index)
        total += size
    return chunks


def latency_cost_model(model: nn.Module, example_inputs: Any, runtime_name: str = "eager", batch: int = 1, threads: int = 1, *,
                 cache_dir: str | os.PathLike[str] | None = None, measure: Measure | None = None, step: int = 8) -> LatencyCost:
    """The latency cost model of ``model`` in a runtime at ``batch`` and ``threads`` (tables measured
    once, then read from the cache). ``measure`` replaces the runtime's timing (tests: a fake runtime)."""
    key = cache_key(runtime_name, batch, threads)
    if measure is not None:
        return profile_latency(model, example_inputs, measure, key, cache_folder(cache_dir), step)
    with tempfile.TemporaryDirectory(prefix="polarprune-latency-") as workdir, pinned_threads(threads), steady_malloc_here():
        timed = runtime_measure(runtime_name, batch, threads, workdir)
        return profile_latency(model, example_inputs, timed, key, cache_folder(cache_dir), step)


def runtime_compare(options: PruneOptions, input_shape: Sequence[int], rounds: int = 7) -> Compare:
    """Measured latency ratio pruned / unpruned, side by side in interleaved rounds (``measure_latency``)."""

    def compare(unpruned: nn.Module, pruned: nn.Module) -> float:
        with steady_malloc_here():
            result = measure_latency({"unpruned": unpruned, "pruned": pruned}, input_shape, runtime=options.runtime,
                                     batches=(options.batch,), rounds=rounds, threads=options.threads)
        return result.batches[0].ratio_to_first["pruned"]

    return compare


@dataclass
class LatencyPrune:
    """``prune_to_latency``'s answer: the pruned model, its report, predicted and measured latency ratios."""

    pruned: nn.Module
    report: PruneReport
    target: float  # the latency reduction asked for
    aimed: float  # the reduction the last pruning aimed at (differs from target after a refinement)
    predicted_ratio: float
    measured_ratio: float
    refinements: int = 0  # re-aims after the first pruning

    @property
    def refined(self) -> bool:
        return self.refinements > 0

    def as_dict(self) -> dict[str, Any]:
        return {"target_latency_reduction": self.target, "aimed_latency_reduction": self.aimed,
                "predicted_latency_ratio": self.predicted_ratio, "measured_latency_ratio": self.measured_ratio,
                "refined": self.refined, "refinements": self.refinements}

    def summary(self) -> str:
        return (f"latency cut: predicted {1 - self.predicted_ratio:.1%}, measured {1 - self.measured_ratio:.1%} "
                f"(target {self.target:.1%}{_after(self.refinements) if self.refined else ''})")


def _after(refinements: int) -> str:
    return f", after {refinements} refinement{'s' if refinements != 1 else ''}"


@dataclass(frozen=True)
class Try:
    """One pruning of ``prune_to_latency``: the reduction its prediction aimed at, and its ratios."""

    aim: float
    predicted_ratio: float
    measured_ratio: float

    @property
    def measured_cut(self) -> float:
        return 1.0 - self.measured_ratio


def _clamped(aim: float) -> float:
    return min(0.99, max(0.01, aim))


def reaimed(target: float, predicted_ratio: float, measured_ratio: float) -> float:
    """The reduction to aim the prediction at so the measured cut lands on ``target``, assuming the
    measured/predicted ratio stays as it was (clamped into [0.01, 0.99])."""
    return _clamped(1.0 - (1.0 - target) * predicted_ratio / max(measured_ratio, 1e-9))


def next_aim(target: float, tries: Sequence[Try]) -> float:
    """The next aim, from every try so far: between the closest tries below and above the target, the linear
    interpolation of measured cut over aim (secant); with the target not bracketed yet, the closest try re-aimed by
    its measured/predicted ratio (``reaimed``), and at least ``MIN_AIM_STEP`` beyond every aim tried (a noisy
    measurement must not send the search back to an aim that already missed on the same side)."""
    below = [t for t in tries if t.measured_cut < target]
    above = [t for t in tries if t.measured_cut >= target]
    if below and above:
        low = max(below, key=lambda t: t.measured_cut)
        high = min(above, key=lambda t: t.measured_cut)
        span = high.measured_cut - low.measured_cut
        aim = low.aim + (target - low.measured_cut) * (high.aim - low.aim) / span if span > 0 else (low.aim + high.aim) / 2
    else:
        closest = min(tries, key=lambda t: abs(t.measured_cut - target))
        aim = reaimed(target, closest.predicted_ratio, closest.measured_ratio)
    if not above:  # every cut too small so far: aim beyond the largest aim tried (a larger aim never cuts less)
        aim = max(aim, max(t.aim for t in tries) + MIN_AIM_STEP)
    elif not below:
        aim = min(aim, min(t.aim for t in tries) - MIN_AIM_STEP)
    return _clamped(aim)


def _prune_once(model: nn.Module, example_inputs: Any, options: PruneOptions, cost: LatencyCost, aim: float,
                compare: Compare, unpruned_ms: float) -> tuple[nn.Module, PruneReport, Try]:
    """Prune aiming the prediction at ``aim``; (pruned, report, the try's aim and ratios)
    (``unpruned_ms``: the unpruned model's predicted ms, analysed once by the caller)."""
    pruned, report = prune_model(model, example_inputs, options=options.model_copy(update={"target_latency_reduction": aim}),
                                 cost=cost, widths=cost if options.round_to == "auto" else None)
    predicted = cost.cost(analysed_copy(pruned, example_inputs), {}, ()) / unpruned_ms
    measured = compare(model, pruned)
    log.info("latency-target: aimed at %.1f%%, predicted cut %.1f%%, measured %.1f%%", 100 * aim, 100 * (1 - predicted),
             100 * (1 - measured))
    return pruned, report, Try(aim, predicted, measured)


def _misses(measured_ratio: float, target: float) -> bool:
    return abs((1.0 - measured_ratio) - target) > TOLERANCE


def prune_to_latency(model: nn.Module, example_inputs: Any, options: PruneOptions | None = None, *,
                     cache_dir: str | os.PathLike[str] | None = None, measure: Measure | None = None,
                     compare: Compare | None = None, step: int = 8, refinements: int = REFINEMENTS,
                     **fields: Any) -> LatencyPrune:
    """Prune ``model`` with ``latency-target`` (``options``: ``target_latency_reduction``, ``runtime``,
    ``batch``, ``threads``), measure the result against the unpruned model and, while the measured cut
    misses the target by more than ``TOLERANCE``, re-aim (``next_aim``) up to ``refinements`` times.
    ``measure`` / ``compare`` replace the runtime's per-layer timing and end-to-end comparison (tests: a
    fake runtime); ``step``: the tables' width grid (multiples of it, 1 and the full width; the widths
    latency-target may keep)."""
    strategy = fields.pop("strategy", None) or (None if options is not None else "latency-target")
    opts = parse_options(strategy, options, **fields)
    if opts.strategy_record.cost != "latency":
        raise PolarpruneError(f"prune_to_latency needs a latency strategy, got {opts.strategy!r}")
    runtime(opts.runtime)  # unknown runtime or missing extra: one line before any work
    target = float(opts.target_latency_reduction)  # type: ignore[arg-type]
    input_shape = tuple(as_input_tuple(example_inputs)[0].shape[1:])
    cost = latency_cost_model(model, example_inputs, opts.runtime, opts.batch, opts.threads, cache_dir=cache_dir, measure=measure,
                        step=step)
    compare = compare or runtime_compare(opts, input_shape)
    unpruned_ms = cost.cost(analysed_copy(model, example_inputs), {}, ())
    pruned, report, last = _prune_once(model, example_inputs, opts, cost, target, compare, unpruned_ms)
    tries = [last]
    while _misses(last.measured_ratio, target) and len(tries) <= refinements:
        pruned, report, last = _prune_once(model, example_inputs, opts, cost, next_aim(target, tries), compare, unpruned_ms)
        tries.append(last)
    if _misses(last.measured_ratio, target):
        closest = min(tries, key=lambda t: abs(t.measured_cut - target))
        raise PolarpruneError(f"latency-target: the measured latency cut {closest.measured_cut:.1%} (the closest of {len(tries)} "
                              f"tries) misses the target {target:.1%} by more than {TOLERANCE}{_after(len(tries) - 1)} "
                              f"(predicted {1 - closest.predicted_ratio:.1%}, runtime {opts.runtime}, batch {opts.batch}, "
                              f"threads {opts.threads})")
    result = LatencyPrune(pruned, report, target, last.aim, last.predicted_ratio, last.measured_ratio, len(tries) - 1)
    report.notes.append(result.summary())
    return result


@dataclass
class LatencyCheck:
    """The pruned model timed against the unpruned one, side by side, in the runtime that chose its widths."""

    runtime: str
    batch: int
    threads: int
    measured_ratio: float  # pruned / unpruned

    @property
    def slower(self) -> bool:
        """The pruned model is not faster than the unpruned one."""
        return self.measured_ratio >= 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"latency_runtime": self.runtime, "latency_batch": self.batch, "latency_threads": self.threads,
                "measured_latency_ratio": self.measured_ratio, "slower_than_unpruned": self.slower}

    def summary(self) -> str:
        where = f"{self.runtime} (batch {self.batch}, {self.threads} thread{'s' if self.threads != 1 else ''})"
        if self.slower:
            return (f"warning: the pruned model is not faster than the unpruned one in {where}: measured "
                    f"{self.measured_ratio:.2f}x its latency (try another round_to, or --strategy latency-target)")
        return f"measured latency in {where}: {self.measured_ratio:.2f}x the unpruned model's"


def runtime_widths(model: nn.Module, example_inputs: Any, options: PruneOptions, *, cache_dir: str | os.PathLike[str] | None = None,
                   measure: Measure | None = None, step: int = 8) -> LatencyCost | None:
    """The cost model whose ``steps`` ``round_to: auto`` snaps to (the runtime's ``LatencyCost``); None where
    rounding is not auto or ``residual: scatter`` ignores it."""
    if options.round_to != "auto" or options.residual == "scatter":
        return None
    runtime(options.runtime)  # unknown runtime or missing extra: one line before any work
    inputs = as_input_tuple(example_inputs)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() != 4:
        log.warning("round_to auto: the runtime is timed on one image batch (N, C, H, W); these example inputs are "
                    "not one, so the exact widths are kept (set round_to to silence this)")
        return None
    return latency_cost_model(model, example_inputs, options.runtime, options.batch, options.threads, cache_dir=cache_dir,
                              measure=measure, step=step)


def check_latency(model: nn.Module, pruned: nn.Module, example_inputs: Any, options: PruneOptions, report: PruneReport,
                  compare: Compare | None = None, ratio: float | None = None) -> LatencyCheck:
    """Time ``pruned`` against ``model`` (or take the measured ``ratio``), note it in ``report`` and warn,
    naming the runtime, when the pruned model is not faster."""
    if ratio is None:
        input_shape = tuple(as_input_tuple(example_inputs)[0].shape[1:])
        ratio = (compare or runtime_compare(options, input_shape, rounds=CHECK_ROUNDS))(model, pruned)
    check = LatencyCheck(options.runtime, options.batch, options.threads, float(ratio))
    report.notes.append(check.summary())
    if check.slower:
        log.warning("%s", check.summary().removeprefix("warning: "))
    return check


def prune_with_cost_model(model: nn.Module, example_inputs: Any, options: PruneOptions | None = None, *,
                          cache_dir: str | os.PathLike[str] | None = None, measure: Measure | None = None,
                          compare: Compare | None = None, inplace: bool = False,
                          **fields: Any) -> tuple[nn.Module, PruneReport, LatencyPrune | LatencyCheck | None]:
    """Prune with the cost model the strategy's record asks for: ``prune_to_latency`` for ``cost="latency"``
    (its ``LatencyPrune`` third), ``prune_model`` otherwise, with the runtime's widths for ``round_to: auto``
    (a ``LatencyCheck`` third when the result was timed, else None). Where a runtime is in play the pruned
    model is timed against the unpruned one (unless ``measure_latency`` is off) and a slower one is
    reported with a warning. The prune command, the recipes' prune stage and ``polarprune.prune_model`` call this
    (``inplace``: as ``prune_model``'s; not with a latency strategy, which prunes more than once)."""
    opts = parse_options(fields.pop("strategy", None), options, **fields)
    if opts.strategy_record.cost == "latency":
        if inplace:
            raise PolarpruneError(f"strategy {opts.strategy!r} prunes copies (it may prune twice): drop inplace=True")
        result = prune_to_latency(model, example_inputs, opts, cache_dir=cache_dir, measure=measure, compare=compare)
        check_latency(model, result.pruned, example_inputs, opts, result.report, ratio=result.measured_ratio)
        return result.pruned, result.report, result
    widths = runtime_widths(model, example_inputs, opts, cache_dir=cache_dir, measure=measure)
    checked = widths is not None and opts.measure_latency
    unpruned = copy.deepcopy(model) if checked and inplace else model  # what the pruned model is timed against
    pruned, report = prune_model(model, example_inputs, options=opts, widths=widths, inplace=inplace)
    if not checked:
        return pruned, report, None
    return pruned, report, check_latency(unpruned, pruned, example_inputs, opts, report, compare)


def prune_for_runtime(model: nn.Module, example_inputs: Any, strategy: str | None = None, *,
                      options: PruneOptions | None = None, cache_dir: str | os.PathLike[str] | None = None,
                      measure: Measure | None = None, compare: Compare | None = None, inplace: bool = False,
                      **fields: Any) -> tuple[nn.Module, PruneReport]:
    """``polarprune.prune_model``: ``prune_with_cost_model`` as ``(pruned, report)``; ``round_to: auto`` (the
    default) keeps the widths that pay in ``runtime`` (default eager), and the report's notes say what was measured."""
    if strategy is not None:
        fields["strategy"] = strategy
    pruned, report, _ = prune_with_cost_model(model, example_inputs, options, cache_dir=cache_dir, measure=measure,
                                              compare=compare, inplace=inplace, **fields)
    return pruned, report


__all__ = ["CHECK_ROUNDS", "PROBE_MEMORY_BUDGET", "REFINEMENTS", "TOLERANCE", "memory_chunks", "output_shape", "probe_bytes", "Try", "next_aim", "LatencyCheck", "LatencyPrune", "check_latency", "prune_for_runtime", "prune_with_cost_model",
           "runtime_widths", "cache_folder", "cache_key", "latency_cost_model", "prune_to_latency",
           "reaimed", "runtime_compare", "runtime_measure"]
