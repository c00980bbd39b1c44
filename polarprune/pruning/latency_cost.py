"""``LatencyCost``: a model's latency at any widths, predicted from per-layer measurements.

Every conv (timed with a BatchNorm and a ReLU after it, as CNNs use it) and every linear layer is
timed alone on its own input shape over a small grid of input and output widths; a prediction is
the sum of the layers' times at the decision's widths (bilinear interpolation between grid
points) plus the fixed rest (the whole model minus its layers at full width, measured once).

Nothing here knows a runtime: the caller hands in ``measure([(module, input_shape), ...]) -> [ms, ...]``
(one forward of each at the caller's batch, runtime and threads, timed side by side in interleaved
rounds so a loaded machine's drifts hit every grid point alike; ``polarprune.deploy.latency_cost``
builds it, tests pass a fake whose costs are known exactly) and the cache ``key`` that names what
``measure`` depends on (machine, runtime, versions, threads, batch). Tables are cached as JSON,
one file per layer shape and key, under ``cache_dir``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import PolarpruneError
from ..fileio import atomic_write_json
from ..modes import restored_modes
from .base import CONV_TYPES, IN, OUT, Removals, as_input_tuple, deleted_with_block, is_depthwise, kept_width

if TYPE_CHECKING:
    from .graph import ChannelGroup, ModelAnalysis

log = logging.getLogger(__name__)

# ms of one forward of each ``module`` on an input of shape (batch, *input_shape), batch fixed by the caller
Measure = Callable[[Sequence[tuple[nn.Module, Sequence[int]]]], Sequence[float]]
PROGRESS_SECONDS = 5.0  # a progress line at least this often while measuring
TABLE_VERSION = 5  # bump when the table's meaning changes (old cache files are then ignored)


@dataclass(frozen=True)
class LayerProbe:
    """One conv/linear layer as it is timed: its hyper-parameters, input shape (without the batch)
    and how often one forward calls it."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = False
    calls: int = 1

    def shape_key(self) -> dict[str, Any]:
        """What the layer's time depends on (``calls`` excluded: it multiplies the table)."""
        key = asdict(self)
        key.pop("calls")
        return key


def _probe_of(module: nn.Module, input_shape: tuple[int, ...]) -> LayerProbe:
    if isinstance(module, CONV_TYPES):
        return LayerProbe("conv", module.in_channels, module.out_channels, input_shape, tuple(module.kernel_size),
                          tuple(module.stride), module.padding if isinstance(module.padding, str) else tuple(module.padding),
                          tuple(module.dilation), module.groups, is_depthwise(module), module.bias is not None)
    return LayerProbe("linear", module.in_features, module.out_features, input_shape, bias=module.bias is not None)


def layer_probes(model: nn.Module, example_inputs: Any) -> dict[str, LayerProbe]:
    """Every conv/linear layer of ``model`` called by one forward on ``example_inputs``, in call order."""
    probes: dict[str, LayerProbe] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        name = names[module]
        if name in probes:
            probes[name] = LayerProbe(**{**asdict(probes[name]), "calls": probes[name].calls + 1})
        else:
            probes[name] = _probe_of(module, tuple(int(s) for s in inputs[0].shape[1:]))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES + (nn.Linear,))]
    try:
        with torch.no_grad():
            model(*as_input_tuple(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    return probes


def width_grid(full: int, step: int, max_points: int = 9) -> list[int]:
    """Widths a table is measured at: 1, multiples of the step and ``full``, thinned evenly to at most
    ``max_points`` (1 and ``full`` always stay). The step shrinks to ``full // 4`` for narrow layers, so
    a layer of 8 or 16 channels still has a few widths to choose from."""
    step = max(1, min(step, full // 4))
    points = sorted({1, full, *range(step, full, step)})
    if len(points) <= max_points:
        return points
    picks = {round(i * (len(points) - 1) / (max_points - 1)) for i in range(max_points)}
    return [points[i] for i in sorted(picks)]


def probe_module(probe: LayerProbe, in_width: int, out_width: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A module timing ``probe`` at the given widths, and its input shape (without the batch)."""
    if probe.kind == "linear" and len(probe.input_shape) == 1:  # fed as (batch, C, 1, 1): every runtime takes images
        return nn.Sequential(nn.Flatten(), nn.Linear(in_width, out_width, bias=probe.bias)).eval(), (in_width, 1, 1)
    if probe.kind == "linear":
        return nn.Linear(in_width, out_width, bias=probe.bias).eval(), (*probe.input_shape[:-1], in_width)
    shape = (in_width, *probe.input_shape[1:])
    conv_type = CONV_TYPES[len(probe.kernel_size) - 1]
    bn_type = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[len(probe.kernel_size) - 1]
    groups = out_width if probe.depthwise else probe.groups
    conv = conv_type(in_width, out_width, probe.kernel_size, probe.stride, probe.padding or 0, probe.dilation, groups,
                     bias=probe.bias)
    return nn.Sequential(conv, bn_type(out_width), nn.ReLU()).eval(), shape


@dataclass
class LayerTable:
    """Measured ms of one layer over a grid of widths (``ms[i][j]`` at ``in_widths[i]``, ``out_widths[j]``;
    a depthwise conv has one width: ``in_widths == [0]``)."""

    in_widths: list[int]
    out_widths: list[int]
    ms: list[list[float]]

    def at(self, in_width: int, out_width: int) -> float:
        """Bilinear interpolation between the grid points (clamped to the grid)."""
        i, a = _bracket(self.in_widths, in_width)
        j, b = _bracket(self.out_widths, out_width)

        def row(k: int) -> float:
            values = self.ms[k]
            return values[j] * (1 - b) + values[j + 1] * b if b else values[j]

        return row(i) * (1 - a) + row(i + 1) * a if a else row(i)


def _bracket(grid: Sequence[int], value: int) -> tuple[int, float]:
    """Index of the grid point at or below ``value`` and the fraction towards the next one."""
    if len(grid) == 1 or value <= grid[0]:
        return 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 1, 0.0
    i = bisect.bisect_right(grid, value) - 1
    return i, (value - grid[i]) / (grid[i + 1] - grid[i])


def measure_table(probe: LayerProbe, measure: Measure, step: int) -> LayerTable:
    """Time ``probe`` at every point of its width grid side by side (one width for depthwise convs), less
    the runner's own cost per call (``NULL_PROBE``, timed with them)."""
    outs = width_grid(probe.out_channels, step)
    ins = [0] if probe.depthwise else width_grid(probe.in_channels, step)
    ms = net_of_null(measure([NULL_PROBE, *(probe_module(probe, i or o, o) for i in ins for o in outs)]))
    return LayerTable(ins, outs, [ms[k * len(outs):(k + 1) * len(outs)] for k in range(len(ins))])


# What a runner costs per call without a layer (an identity on a 1x1x1 input): a whole model pays it
# once, a table point every time, so the tables leave it out and the fixed rest keeps it.
NULL_PROBE: tuple[nn.Module, tuple[int, ...]] = (nn.Identity(), (1, 1, 1))


def net_of_null(ms: Sequence[float]) -> list[float]:
    """``ms[1:]`` less ``ms[0]`` (the null probe's time), at least 0."""
    return [max(0.0, value - ms[0]) for value in ms[1:]]


class TableCache:
    """JSON files under ``folder``, one per (key, layer shape); a file of another key or version is a miss."""

    def __init__(self, folder: str | Path, key: Mapping[str, Any]) -> None:
        self.folder = Path(folder).expanduser()
        self.key = {**key, "table_version": TABLE_VERSION}

    def path(self, shape: Mapping[str, Any]) -> Path:
        text = json.dumps({"key": self.key, "shape": shape}, sort_keys=True)
        return self.folder / f"{hashlib.sha1(text.encode()).hexdigest()[:20]}.json"

    def load(self, shape: Mapping[str, Any]) -> dict[str, Any] | None:
        path = self.path(shape)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("key") == self.key and data.get("shape") == json.loads(json.dumps(shape)) else None

    def save(self, shape: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path(shape), {"key": self.key, "shape": shape, **payload})
        except OSError as exc:
            raise PolarpruneError(f"cannot write the latency cache {self.folder}: {exc.strerror or exc}") from None


def cached_table(probe: LayerProbe, measure: Measure, cache: TableCache, step: int) -> tuple[LayerTable, bool]:
    """The table of ``probe`` from the cache, else measured and cached; and whether it was measured."""
    shape = {**probe.shape_key(), "step": step}
    found = cache.load(shape)
    if found is not None:
        return LayerTable(found["in_widths"], found["out_widths"], found["ms"]), False
    table = measure_table(probe, measure, step)
    cache.save(shape, asdict(table))
    return table, True


def model_signature(probes: Mapping[str, LayerProbe], model: nn.Module) -> dict[str, Any]:
    """What the fixed rest of a model is cached under: its class and every layer's shape."""
    layers = [[name, p.shape_key(), p.calls] for name, p in probes.items()]
    digest = hashlib.sha1(json.dumps(layers, sort_keys=True).encode()).hexdigest()
    return {"model": type(model).__name__, "layers": digest}


def profile_latency(model: nn.Module, example_inputs: Any, measure: Measure, key: Mapping[str, Any],
                    cache_dir: str | Path, step: int = 8) -> "LatencyCost":
    """A ``LatencyCost`` for ``model`` (timed in eval mode; its modes are restored) from per-layer tables
    (cached) and its measured fixed rest."""
    with restored_modes(model):
        return _profile(model.eval(), example_inputs, measure, key, cache_dir, step)


def _profile(model: nn.Module, example_inputs: Any, measure: Measure, key: Mapping[str, Any], cache_dir: str | Path,
             step: int) -> "LatencyCost":
    probes = layer_probes(model, example_inputs)
    if not probes:
        raise PolarpruneError("the model has no conv or linear layer to time")
    cache = TableCache(cache_dir, key)
    missing = sum(cache.load({**p.shape_key(), "step": step}) is None for p in probes.values())
    if missing:
        log.info("measuring the latency of %d layer shapes in %s at batch %s, %s thread(s) (once; cached in %s)", missing,
                 key.get("runtime", "the runtime"), key.get("batch", "?"), key.get("threads", "?"), cache.folder)
    tables: dict[str, LayerTable] = {}
    started = last = time.perf_counter()
    measured = 0
    for done, (name, probe) in enumerate(probes.items(), 1):
        tables[name], fresh = cached_table(probe, measure, cache, step)
        measured += fresh
        if fresh and time.perf_counter() - last >= PROGRESS_SECONDS or done == len(probes):
            last = time.perf_counter()
            log.info("latency tables: %d/%d layers (%d measured, %.1f s)", done, len(probes), measured, last - started)
    rest = _fixed_rest(model, example_inputs, probes, measure, cache)
    return LatencyCost({n: tables[n] for n in probes}, {n: p.calls for n, p in probes.items()}, rest)


def _fixed_rest(model: nn.Module, example_inputs: Any, probes: Mapping[str, LayerProbe], measure: Measure,
                cache: TableCache) -> float:
    """Whole model (with the runner's own cost, paid once) minus the sum of its layers at full width (each
    shape timed once, less the null probe), timed side by side (cached per model signature); at least 0 (a larger sum is logged: the layers timed alone cost more than in the model)."""
    shape = {**model_signature(probes, model), "input": list(as_input_tuple(example_inputs)[0].shape[1:])}
    found = cache.load(shape)
    if found is None:
        unique = {json.dumps(p.shape_key(), sort_keys=True): p for p in probes.values()}
        ms = list(measure([NULL_PROBE, (model, shape["input"]),
                           *(probe_module(p, p.in_channels, p.out_channels) for p in unique.values())]))
        calls: dict[str, int] = {}
        for p in probes.values():
            key = json.dumps(p.shape_key(), sort_keys=True)
            calls[key] = calls.get(key, 0) + p.calls
        layers = net_of_null([ms[0], *ms[2:]])
        found = {"whole_ms": ms[1], "layers_ms": sum(t * calls[k] for t, k in zip(layers, unique))}
        cache.save(shape, found)
    whole, layers = float(found["whole_ms"]), float(found["layers_ms"])
    if layers > 1.1 * whole:
        log.info("latency tables: the layers timed alone sum to %.3g ms, the whole model takes %.3g ms", layers, whole)
    return max(0.0, whole - layers)


class LatencyCost:
    """Predicted ms of the analysed model after a decision (``CostModel``): the layers' tables at the
    kept widths, times their calls, plus the fixed rest."""

    name = "latency (ms)"

    def __init__(self, tables: Mapping[str, LayerTable], calls: Mapping[str, int], rest_ms: float) -> None:
        self.tables, self.calls, self.rest_ms = dict(tables), dict(calls), float(rest_ms)

    def layer_ms(self, name: str, in_width: int, out_width: int) -> float:
        """Predicted ms of one layer (all its calls) at the given widths; 0 for a layer without a table."""
        table = self.tables.get(name)
        return 0.0 if table is None else table.at(in_width, out_width) * self.calls.get(name, 1)

    def cost(self, analysis: ModelAnalysis, removed: Removals, removed_modules: Sequence[str] = ()) -> float:
        gone = list(removed_modules)
        return self.rest_ms + sum(
            self.layer_ms(name, kept_width(c.in_channels, removed, name, IN), kept_width(c.out_channels, removed, name, OUT))
            for name, c in analysis.layer_costs.items() if not deleted_with_block(name, gone))

    def steps(self, analysis: ModelAnalysis, group: ChannelGroup) -> Sequence[int]:
        """Widths of ``group`` (the rest at full width) where every layer it touches was measured, whose
        predicted latency is below every wider one's: the widths worth keeping."""
        curve = group_curve(self, analysis, group)
        kept, best = [], math.inf
        for width in range(group.num_channels, 0, -1):
            if curve[width] is not None and curve[width] < best - 1e-12:
                kept.append(width)
                best = curve[width]
        return sorted(kept)

    def measured_at(self, name: str, in_width: int | None, out_width: int | None) -> bool:
        """Whether the layer's table has a grid point at the given widths (None: that side is not asked)."""
        table = self.tables.get(name)
        if table is None:
            return True
        tied = table.in_widths == [0]
        return ((in_width is None or tied or in_width in table.in_widths)
                and (out_width is None or out_width in table.out_widths))


def group_curve(cost: LatencyCost, analysis: ModelAnalysis, group: ChannelGroup) -> list[float | None]:
    """Predicted ms of the layers ``group`` touches, per width of the group (index = width; 0 unused);
    None at widths where one of those layers was not measured."""
    sides: dict[str, dict[str, int]] = {}
    for item in group.items:
        if item.side in (IN, OUT):
            sides.setdefault(item.module_name, {})[item.side] = len(item.idxs)
    curve: list[float | None] = [None] + [0.0] * group.num_channels
    for name, touched in sides.items():
        layer = analysis.layer_costs.get(name)
        if layer is None:
            continue
        for width in range(1, group.num_channels + 1):
            gone = group.num_channels - width
            in_w = layer.in_channels - min(gone, touched.get(IN, 0))
            out_w = layer.out_channels - min(gone, touched.get(OUT, 0))
            value = curve[width]
            if value is not None and cost.measured_at(name, in_w if IN in touched else None, out_w if OUT in touched else None):
                curve[width] = value + cost.layer_ms(name, in_w, out_w)
            else:
                curve[width] = None
    return curve


__all__ = ["LatencyCost", "LayerProbe", "LayerTable", "Measure", "TableCache", "cached_table", "group_curve", "layer_probes",
           "measure_table", "model_signature", "probe_module", "profile_latency", "width_grid"]
