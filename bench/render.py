"""Fill the measured numbers of the documents from the committed result files.

Nobody types a measured number by hand: BENCHMARKS.md, README.md and docs/*.md mark every
table and every figure taken from ``bench/results/*.json`` and this script writes them.

Markers (HTML comments, invisible in rendered Markdown)::

    <!-- render: NAME ARG ... -->
    ...block content, written by this script...
    <!-- /render -->

or inline, inside a sentence: ``cut by <!-- render: value pruned_latency models[model=resnet56,round_to=16]/acceptance/nchw/latency_cut .1% -->37.9%<!-- /render -->``.
A marker followed by a line break is a block (its content sits on the lines in between); one
followed by text is inline. ``NAME`` is a key of ``RENDERERS``; the words after it are passed
to the renderer as string arguments.

Generic inline renderers (no code needed for a number that is in a file):

- ``value STEM PATH [FORMAT]``: one value of ``bench/results/STEM.json``;
- ``range STEM PATH [FORMAT]``: ``min-max`` of the values a wildcard path selects;
- ``max STEM PATH [FORMAT]``: the largest of them.

``PATH`` is ``/``-separated keys (keys may contain dots); a list step is ``[3]`` (index),
``[*]`` (every element) or ``[key=value,key2=v1|v2]`` (the elements whose fields match; one
element for ``value``); ``*`` as a dict key takes every value. ``FORMAT`` is a Python format
spec (``.1%`` -> ``53.6%``, ``.2f``, ``,d``, ``+.1f``); default ``g``.

**Adding a result file** (e.g. ``bench/results/deploy_latency.json``): write a function
``def deploy_latency_table(results: Results) -> str`` that calls
``results.load("deploy_latency")`` and returns Markdown (``table(headers, rows)`` builds a
table), add ``"deploy-latency": deploy_latency_table`` to ``RENDERERS``, put an empty
``<!-- render: deploy-latency -->`` / ``<!-- /render -->`` pair where the table goes and run
``python bench/render.py``. ``tests/test_claims.py`` then keeps the document and the file
in step.

    python bench/render.py            # rewrite the documents in place (atomically)
    python bench/render.py --check    # exit 1 listing the blocks that differ (CI)

Only the standard library and ``polarprune.fileio`` are used, so rendering takes well under a
second.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from polarprune.fileio import atomic_write_text  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCUMENTS = ("BENCHMARKS.md", "README.md", "docs/*.md")

MARKER = re.compile(r"<!-- render: (?P<spec>[^>]*?) -->(?P<body>.*?)<!-- /render -->", re.DOTALL)
CITED_PATH = re.compile(r"bench/results/[A-Za-z0-9_.{},-]+")
CITED_SUFFIXES = (".json", ".md", ".png")


class RenderError(Exception):
    """A document or a result file does not allow rendering (missing file, unknown block, bad path)."""


@dataclass
class Results:
    """The result files of one folder, loaded on demand; remembers which were used."""

    folder: Path = RESULTS_DIR
    used: set[str] = field(default_factory=set)
    _cache: dict[str, Any] = field(default_factory=dict)

    def load(self, stem: str) -> Any:
        """The parsed ``<folder>/<stem>.json``; RenderError if it is missing or not JSON."""
        self.used.add(stem)
        if stem not in self._cache:
            path = self.folder / f"{stem}.json"
            if not path.is_file():
                raise RenderError(f"result file {path} is missing")
            try:
                self._cache[stem] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise RenderError(f"result file {path} is not valid JSON: {exc}") from exc
        return self._cache[stem]


Renderer = Callable[..., str]


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any, spec: str = "g") -> str:
    """``format(value, spec)``; RenderError for a value that is not a number (or, with spec ``s``, a string)."""
    if spec == "s" and isinstance(value, str):
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RenderError(f"expected a number, got {value!r}")
    return format(value, spec)


def span(values: Iterable[float], spec: str = "g", sep: str = "-") -> str:
    """``min-max`` of ``values`` (one value if they are all equal); ``14.9-23.4%`` for percents."""
    values = list(values)
    if not values:
        raise RenderError("empty range")
    low, high = fmt(min(values), spec), fmt(max(values), spec)
    if low == high:
        return low
    if low.endswith("%") and high.endswith("%"):
        low = low[:-1]
    return f"{low}{sep}{high}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column (``l`` or ``r``)."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- paths


_STEP = re.compile(r"^(?P<key>[^\[]*)(?P<selectors>(?:\[[^\]]*\])*)$")


def _select(items: list[Any], selector: str, path: str) -> list[Any]:
    if selector == "*":
        return list(items)
    if re.fullmatch(r"-?\d+", selector):
        try:
            return [items[int(selector)]]
        except IndexError as exc:
            raise RenderError(f"{path}: index {selector} out of range ({len(items)} items)") from exc
    conditions = []
    for part in selector.split(","):
        key, _, wanted = part.partition("=")
        conditions.append((key, wanted.split("|")))
    return [item for item in items if isinstance(item, dict)
            and all(str(item.get(key)) in wanted for key, wanted in conditions)]


def lookup(data: Any, path: str) -> list[Any]:
    """Every value ``path`` selects in ``data`` (see the module docstring); RenderError if none."""
    current = [data]
    for step in path.split("/"):
        match = _STEP.match(step)
        if match is None:
            raise RenderError(f"bad path step {step!r} in {path!r}")
        key, selectors = match["key"], re.findall(r"\[([^\]]*)\]", match["selectors"])
        nxt: list[Any] = []
        for node in current:
            if key == "*" and isinstance(node, dict):
                nxt.extend(node.values())
            elif key:
                if not isinstance(node, dict) or key not in node:
                    raise RenderError(f"{path!r}: no key {key!r}")
                nxt.append(node[key])
            else:
                nxt.append(node)
        for selector in selectors:
            selected: list[Any] = []
            for node in nxt:
                if not isinstance(node, list):
                    raise RenderError(f"{path!r}: [{selector}] applied to a non-list")
                selected.extend(_select(node, selector, path))
            nxt = selected
        current = nxt
    if not current:
        raise RenderError(f"{path!r} selects nothing")
    return current


def value(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """One value of a result file, formatted."""
    found = lookup(results.load(stem), path)
    if len(found) != 1:
        raise RenderError(f"{stem}:{path} selects {len(found)} values, expected one")
    return fmt(found[0], spec)


def value_range(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """``min-max`` of the values a wildcard path selects."""
    return span(lookup(results.load(stem), path), spec)


def value_max(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """The largest of the values a wildcard path selects."""
    return fmt(max(lookup(results.load(stem), path)), spec)


# ----------------------------------------------------------------------------- provenance


def _provenance(data: dict[str, Any]) -> dict[str, Any]:
    """The provenance record of a result (older files keep machine/versions at the top level)."""
    prov = data.get("provenance") or {}
    machine = prov.get("machine") or data.get("machine") or {}
    versions = prov.get("versions") or data.get("versions") or {}
    return {"date": prov.get("date_utc") or data.get("date_utc") or "-", "machine": machine, "versions": versions,
            "command": prov.get("command") or data.get("command") or "-"}


def _recorded_load(data: dict[str, Any]) -> list[float]:
    """Every 1-minute load average a result recorded."""
    loads: list[float] = []
    for key in ("load_average", "load_start", "load_end"):
        if isinstance(data.get(key), list) and data[key]:
            loads.append(data[key][0])
    for model in data.get("models", []) if isinstance(data.get("models"), list) else []:
        if isinstance(model, dict) and "load_average_1min" in model:
            loads.append(model["load_average_1min"])
    return loads


def _machine_cell(machine: dict[str, Any]) -> str:
    """A ``machine_info()`` record in a few words: CPU model, usable CPUs, GPU, native bf16 or not."""
    return (f"{machine.get('processor') or '-'}, {machine.get('cpus_usable', machine.get('cpu_count', '-'))} CPUs, "
            f"GPU {machine.get('cuda') or 'none'}"
            + {True: ", native bf16", False: ", no native bf16"}.get(machine.get("cpu_native_bf16"), ""))


def provenance_table(results: Results) -> str:
    """Where and with what each result file of BENCHMARKS.md was produced."""
    rows = []
    for path in sorted(results.folder.glob("*.json")):
        data = results.load(path.stem)
        prov = _provenance(data)
        machine, versions = prov["machine"], prov["versions"]
        loads = _recorded_load(data)
        rows.append([
            f"`{path.name}`", prov["date"][:10], _machine_cell(machine),
            versions.get("torch", "-"), machine.get("torch_threads", "-"),
            span(loads, ".2f") if loads else "not recorded",
        ])
    return table(["result file", "date (UTC)", "machine", "torch", "torch threads", "1-min load average recorded"], rows)


# ----------------------------------------------------------------------------- section 1: methods


def _methods(results: Results, model: str) -> dict[str, Any]:
    return results.load(f"methods_cifar_{model}")


def _method(data: dict[str, Any], key: str) -> dict[str, Any]:
    for entry in data["methods"]:
        if entry["method"] == key:
            return entry
    raise RenderError(f"methods_cifar_{data['model']}: no method {key!r}")


def _drop(entry: dict[str, Any]) -> float:
    """Top-1 points lost right after pruning (negative: gained)."""
    return entry["prune"]["top1_before"] - entry["prune"]["top1"]


METHOD_ROWS = (
    ("polarization", "polarization + grad"),
    ("l1", "L1 + global threshold"),
    ("none", "no regularizer + global threshold"),
    ("masksparsity", "MaskSparsity"),
    ("tp-bnscale", "Torch-Pruning BNScalePruner"),
    ("tp-groupnorm", "Torch-Pruning GroupNormPruner"),
)


def _accuracy_cells(entries: list[tuple[str, dict[str, Any]]], final: Callable[[dict[str, Any]], str]) -> list[tuple[str, str]]:
    """Per entry the "right after pruning (change)" and the fine-tuned cell (``final``), the best of each column in bold."""
    best_pruned = max(e["prune"]["top1"] for _, e in entries)
    best_final = max(e["finetune"]["top1"] for _, e in entries)
    cells = []
    for _, e in entries:
        pruned = f"{e['prune']['top1']:.2f} ({-_drop(e):+.2f})"
        cells.append((f"**{pruned}**" if e["prune"]["top1"] == best_pruned else pruned,
                      f"**{final(e)}**" if e["finetune"]["top1"] == best_final else final(e)))
    return cells


def methods_table(results: Results, model: str) -> str:
    """The six methods at matched MACs; the best after pruning and after fine-tuning in bold."""
    data = _methods(results, model)
    entries = [(label, _method(data, key)) for key, label in METHOD_ROWS]
    rows = []
    for (label, e), (pruned, final) in zip(entries, _accuracy_cells(entries, lambda e: f"{e['finetune']['top1']:.2f}")):
        sparsity = f"{e['sparsity']['top1']:.2f}" + (" (after mask-L1)" if e["method"] == "masksparsity" else "")
        rows.append([
            label, sparsity, pruned, final,
            f"{e['prune']['macs_reduction']:.1%}", f"{e['prune']['params_reduction']:.1%}",
            f"{e['latency_ms']['b1_ratio']:.2f} / {e['latency_ms']['b64_ratio']:.2f}",
        ])
    return table(["method", "top-1 after sparsity training", "right after pruning", "after fine-tuning",
                  "MACs red.", "params red.", "latency b1 / b64 vs unpruned"], rows)


def methods_unpruned(results: Results, model: str) -> str:
    """One sentence on the unpruned reference model."""
    u = _methods(results, model)["unpruned"]
    return (f"top-1 {u['top1']:.2f}%, {u['macs'] / 1e6:.2f} M MACs, {u['params'] / 1e3:.1f} k params, "
            f"CPU latency {u['latency_ms']['b1']:.2f} ms (batch 1) / {u['latency_ms']['b64']:.1f} ms (batch 64)")


def methods_protocol(results: Results, model: str) -> str:
    """The CPU protocol's settings, as the result file records them."""
    s = _methods(results, model)["protocol_settings"]
    p = s["polarization"]
    return (
        f"Fixed stratified subsets of the shared JPEG archive: **{s['train_subset']:,} training and "
        f"{s['eval_subset']:,} test images**; batch {s['batch_size']}; sparsity training **{s['sparsity_epochs']} epochs** "
        f"(SGD momentum 0.9, lr {s['lr']:g} {s['schedule']['type']}, weight decay {s['weight_decay']:g} on all parameters "
        f"incl. BN); fine-tuning **{s['finetune_epochs']} epochs** (lr {s['finetune_lr']:g} {s['finetune_schedule']['type']}); "
        f"MaskSparsity's global-L1 and mask-L1 stages {s['ms_stage_epochs']} epochs each, both from the "
        f"{s['sparsity_epochs']}-epoch no-regularizer run. Regularizer strengths: polarization lambda {p['lbd']:g}, "
        f"t {p['t']:g}, clamp 1, with the paper's `--target-flops` option at {p['target_macs_ratio']:g} (lambda goes to 0 "
        f"once `grad` would remove that share of the MACs); L1 {s['l1_lbd']:g}; MaskSparsity L1 {s['ms_l1_lbd']:g} and "
        f"mask-L1 {s['ms_mask_lbd']:g}; Torch-Pruning BNScale reg {s['tp_bnscale_reg']:g}, GroupNorm reg "
        f"{s['tp_groupnorm_reg']:g}."
    )


def methods_target(results: Results, model: str) -> str:
    """Whether polarization's MACs target switched lambda off within the run (last epoch's record)."""
    last = _method(_methods(results, model), "polarization")["sparsity"]["last_epoch"]
    if last.get("sparsity_target_reached"):
        return "reached within the run: lambda was 0 in its last epoch"
    return f"not reached within the run: lambda was still {last['lambda']:g} in its last epoch"


def methods_max_deviation(results: Results) -> str:
    """The largest distance (in points, rounded up to 0.1) of any method's MACs reduction from R."""
    worst = 0.0
    for model in ("resnet20", "resnet56"):
        data = _methods(results, model)
        target = data["target_macs_reduction"]
        worst = max(worst, *(abs(e["prune"]["macs_reduction"] - target) for e in data["methods"]))
    return f"{math.ceil(1000 * worst - 1e-9) / 10:.1f}"


def methods_latency_rounds(results: Results, model: str) -> str:
    """The latency rounds and threads of the methods benchmark (from its command and machine)."""
    prov = _provenance(_methods(results, model))
    match = re.search(r"--latency-rounds (\d+)", prov["command"])
    rounds = match.group(1) if match else "the default number of"
    return f"{rounds} round-robin rounds over all seven models, median of the per-round ratios to the unpruned model (torch threads {prov['machine'].get('torch_threads')}"


def _frac_below(gammas: list[float], limit: float = 0.01) -> float:
    return sum(abs(g) < limit for g in gammas) / len(gammas)


def methods_gammas(results: Results, model: str) -> str:
    """Share of BN gammas below 0.01 after sparsity training, per method."""
    data = _methods(results, model)
    parts = []
    for key, label in METHOD_ROWS:
        share = _frac_below(_method(data, key)["gammas"])
        parts.append(f"{label} {share:.0%}")
    return "; ".join(parts)


def methods_run(results: Results, model: str) -> str:
    """Throughput and total stage wall time of a methods run."""
    data = _methods(results, model)
    stages = [e[stage] for e in data["methods"] for stage in ("sparsity", "finetune", "global_l1") if stage in e]
    rates = [e["sparsity"]["images_per_s"] for e in data["methods"]]
    minutes = sum(s["wall_s"] for s in stages) / 60
    return (f"{span(rates, '.0f')} images/s in sparsity training, {minutes:.0f} minutes of training and fine-tuning "
            f"wall time in all (the stages' `wall_s`)")


def methods_drop(results: Results, model: str, methods: str) -> str:
    """Top-1 points lost right after pruning by one method, or the range over several (``a,b,c``)."""
    data = _methods(results, model)
    return span([_drop(_method(data, key)) for key in methods.split(",")], ".2f")


def methods_final(results: Results, model: str, methods: str) -> str:
    """Top-1 after fine-tuning of one method or the range over several."""
    data = _methods(results, model)
    return span([_method(data, key)["finetune"]["top1"] for key in methods.split(",")], ".2f")


def methods_final_gap(results: Results, model: str) -> str:
    """Points between the unpruned reference and the fine-tuned methods (range)."""
    data = _methods(results, model)
    return span([data["unpruned"]["top1"] - e["finetune"]["top1"] for e in data["methods"]], ".2f")


def methods_final_spread(results: Results, model: str) -> str:
    """Points between the best and the worst method after fine-tuning."""
    finals = [e["finetune"]["top1"] for e in _methods(results, model)["methods"]]
    return f"{max(finals) - min(finals):.2f}"


def methods_standard_error(results: Results, model: str) -> str:
    """Binomial standard error (points) of a top-1 on the evaluation subset at the mean top-1, and of a difference."""
    data = _methods(results, model)
    p = statistics.mean(e["finetune"]["top1"] for e in data["methods"]) / 100
    se = _se(100 * p, data["protocol_settings"]["eval_subset"])
    return (f"a top-1 on {data['protocol_settings']['eval_subset']:,} test images at {100 * p:.0f}% has a binomial "
            f"standard error of {se:.1f} points, so the difference of two methods has {math.sqrt(2) * se:.1f} points")


def methods_latency_ranges(results: Results, model: str) -> str:
    """Latency ratios of the pruned models to the unpruned one, batch 1 and 64."""
    methods = _methods(results, model)["methods"]
    return (f"{span([e['latency_ms']['b1_ratio'] for e in methods], '.2f')}x at batch 1 and "
            f"{span([e['latency_ms']['b64_ratio'] for e in methods], '.2f')}x at batch 64")


# ----------------------------------------------------------------------------- section 1: methods on all of CIFAR-10


FULL_STEM = "methods_full_resnet20"
FULL_ROWS = (
    ("polarization", "polarization + grad"),
    ("polarization-distill", "polarization + grad, distilled fine-tuning"),
    ("masksparsity", "MaskSparsity"),
    ("l1", "L1 + global threshold"),
    ("none", "no regularizer + global threshold"),
    ("tp-bnscale", "Torch-Pruning BNScalePruner"),
    ("tp-groupnorm", "Torch-Pruning GroupNormPruner"),
)


def _full_rows(results: Results, level: str, stem: str = FULL_STEM) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of every method run at ``level``, in the table's order."""
    by_key = {e["method"]: e for e in results.load(stem)["methods"] if e["level"] == level}
    if not by_key:
        raise RenderError(f"{stem}: no method at level {level!r}")
    return [(label, by_key[key]) for key, label in FULL_ROWS if key in by_key]


def _full_entry(results: Results, level: str, key: str) -> dict[str, Any]:
    for _, entry in _full_rows(results, level):
        if entry["method"] == key:
            return entry
    raise RenderError(f"{FULL_STEM}: no method {key!r} at level {level!r}")


def _se(top1: float, n: int = 10_000) -> float:
    """Binomial standard error (points) of a top-1 on ``n`` test images."""
    return 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / n)


def full_protocol(results: Results) -> str:
    """The full-data protocol's settings, as the result file records them."""
    p = results.load(FULL_STEM)["protocol"]
    pa, pb = p["polarization"]["a"], p["polarization"]["b"]
    checks = {level["target_check_every"] for level in (pa, pb) if level.get("target_check_every")}
    checked = f" (the target checked every {', '.join(map(str, sorted(checks)))} steps)" if checks else " (the target checked at epoch ends)"
    return (
        f"All **50,000 training and 10,000 test images** of the shared JPEG archive; batch {p['batch_size']}; bf16 autocast, "
        f"channels_last for the unpruned stages (section 4: the fastest CPU setting on a CPU with native bf16, as this one had) and NCHW for fine-tuning the pruned "
        f"models (chosen after a quick, uncommitted check that their uneven widths trained faster so); SGD momentum 0.9, weight decay {p['weight_decay']:g} on "
        f"all parameters incl. BN; BN gammas initialised to 0.5. **Baseline**: {p['baseline_epochs']} epochs without "
        f"regularizer (lr {p['baseline_lr']:g}, cosine, 1 warm-up epoch). **Sparsity stage** of every method: "
        f"{p['sparsity_epochs']} epochs from the baseline's weights (lr {p['sparsity_lr']:g}, cosine, 1 warm-up epoch). "
        f"**Fine-tuning** of every pruned model: {p['finetune_epochs']} epochs (lr {p['finetune_lr']:g}, cosine, 1 warm-up "
        f"epoch). Strengths: polarization lambda {pa['lbd']:g}, t {pa['t']:g}, stopped once `grad` would leave "
        f"{pa['target_macs_ratio']:g} of the MACs (level a) and lambda {pb['lbd']:g}, t {pb['t']:g}, stopped at "
        f"{pb['target_macs_ratio']:g} (level b){checked}; L1 {p['l1_lbd']:g}; mask-L1 {p['ms_mask_lbd']:g}; Torch-Pruning BNScale "
        f"reg {p['tp_bnscale_reg']:g}, GroupNorm reg {p['tp_groupnorm_reg']:g}; distillation T {p['distill']['temperature']:g}, "
        f"alpha {p['distill']['alpha']:g}, teacher: the unpruned baseline."
    )


def full_baseline(results: Results) -> str:
    """One sentence on the shared baseline (and the no-regularizer model after its sparsity stage)."""
    data = results.load(FULL_STEM)
    b = data["baseline"]
    text = (f"top-1 **{b['top1']:.2f}%** after {b['epochs']} epochs (standard error {_se(b['top1']):.2f} points), "
            f"{b['macs'] / 1e6:.2f} M MACs, {b['params'] / 1e3:.1f} k params")
    if b.get("latency"):
        text += f", {b['latency']['b1_ms']:.2f} ms at batch 1 and {b['latency']['b64_ms']:.1f} ms at batch 64"
    none = [e for e in data["methods"] if e["method"] == "none"]
    if none:
        text += (f"; after the no-regularizer method's own {data['protocol']['sparsity_epochs']}-epoch sparsity stage "
                 f"(the same schedule as every other method's, without a regularizer) the unpruned network is at "
                 f"**{none[0]['sparsity']['top1']:.2f}%**")
    return text


def full_table(results: Results, level: str) -> str:
    """Every method at one level; the best right after pruning and after fine-tuning in bold."""
    base = results.load(FULL_STEM)["baseline"]["top1"]
    entries = _full_rows(results, level)
    cells = _accuracy_cells(entries, lambda e: f"{e['finetune']['top1']:.2f} ({e['finetune']['top1'] - base:+.2f})")
    rows = []
    for (label, e), (pruned, final) in zip(entries, cells):
        lat = e.get("latency") or {}
        rows.append([
            label, f"{e['sparsity']['top1']:.2f}", pruned, final,
            f"{e['prune']['macs_reduction']:.1%}", f"{e['prune']['params_reduction']:.1%}",
            f"{lat['b1_ratio']:.2f} / {lat['b64_ratio']:.2f}" if lat else "-",
        ])
    return table(["method", "top-1 after sparsity stage", "right after pruning (change)", "after fine-tuning (vs baseline)",
                  "MACs red.", "params red.", "latency b1 / b64 vs baseline"], rows)


def full_target(results: Results, level: str) -> str:
    """A level's MACs reduction and how far the methods are from it."""
    data = results.load(FULL_STEM)
    target = data["level_targets"][level]
    worst = max(abs(e["prune"]["macs_reduction"] - target) for _, e in _full_rows(results, level))
    return f"{target:.1%} (every method within {100 * worst:.1f} point of it)"


def full_drop(results: Results, level: str, methods: str) -> str:
    """Top-1 points lost right after pruning at a level: one method, or the range over several."""
    return span([_drop(_full_entry(results, level, key)) for key in methods.split(",")], ".2f")


def full_final(results: Results, level: str, methods: str) -> str:
    """Top-1 after fine-tuning at a level: one method, or the range over several."""
    return span([_full_entry(results, level, key)["finetune"]["top1"] for key in methods.split(",")], ".2f")


def full_final_pruned(results: Results, level: str, methods: str) -> str:
    """Top-1 right after pruning at a level: one method, or the range over several."""
    return span([_full_entry(results, level, key)["prune"]["top1"] for key in methods.split(",")], ".2f")


def _beyond_noise(ref: float, top1: float) -> bool:
    """Whether two top-1s (10,000 test images each) differ by more than two standard errors of their difference."""
    return abs(top1 - ref) > 2 * math.sqrt(_se(ref) ** 2 + _se(top1) ** 2)


def full_noise(results: Results, level: str) -> str:
    """Which fine-tuned differences to polarization exceed two standard errors of a difference."""
    ref = _full_entry(results, level, "polarization")["finetune"]["top1"]
    beyond, within = [], []
    for label, e in _full_rows(results, level):
        if e["method"] == "polarization":
            continue
        top1 = e["finetune"]["top1"]
        (beyond if _beyond_noise(ref, top1) else within).append(f"{label} {top1 - ref:+.2f}")
    parts = []
    if beyond:
        parts.append("beyond noise: " + "; ".join(beyond))
    if within:
        parts.append("within noise: " + "; ".join(within))
    return " — ".join(parts)


def full_diff(results: Results, level: str, method: str, reference: str) -> str:
    """One method's fine-tuned top-1 against another's at a level: the difference and whether it exceeds the noise."""
    ref = _full_entry(results, level, reference)["finetune"]["top1"]
    top1 = _full_entry(results, level, method)["finetune"]["top1"]
    return f"{top1 - ref:+.2f} points, {'beyond' if _beyond_noise(ref, top1) else 'within'} noise"


def full_se(results: Results) -> str:
    """The sampling noise of the fine-tuned top-1s: standard error at their mean, of a difference, twice that."""
    finals = [e["finetune"]["top1"] for e in results.load(FULL_STEM)["methods"]]
    mean = statistics.mean(finals)
    se = _se(mean)
    return (f"a top-1 of {mean:.0f}% (the mean of the fine-tuned models) has a binomial standard error of {se:.2f} points, "
            f"the difference of two models {math.sqrt(2) * se:.2f} points, and two standard errors of a difference are "
            f"{2 * math.sqrt(2) * se:.2f} points")


def full_gammas(results: Results) -> str:
    """Share of the regularized BN gammas below 0.01 after each sparsity stage."""
    seen: dict[str, float] = {}
    for e in results.load(FULL_STEM)["methods"]:
        if e["method"] == "polarization-distill":
            continue
        name = f"{e['method']} ({e['level']})" if e["method"] in ("polarization", "masksparsity") else e["method"]
        seen.setdefault(name, _frac_below(e["gammas"]))
    return "; ".join(f"{name} {share:.0%}" for name, share in seen.items())


def full_gap(results: Results) -> str:
    """Points between the baseline and the fine-tuned models (range)."""
    data = results.load(FULL_STEM)
    return span([data["baseline"]["top1"] - e["finetune"]["top1"] for e in data["methods"]], ".1f")


def full_gammas_of(results: Results, method: str) -> str:
    """Share of a method's regularized gammas below 0.01 after its sparsity stage (per level where it differs)."""
    shares = {e["level"]: _frac_below(e["gammas"]) for e in results.load(FULL_STEM)["methods"] if e["method"] == method}
    if not shares:
        raise RenderError(f"{FULL_STEM}: no method {method!r}")
    if len({round(v, 2) for v in shares.values()}) == 1:
        return f"{next(iter(shares.values())):.0%}"
    return " and ".join(f"{v:.0%} (level {lv})" for lv, v in sorted(shares.items()))


def full_run(results: Results, stem: str = FULL_STEM) -> str:
    """Training throughput and the machine time of all stages of a run (the main one, or a repeat's ``stem``)."""
    data = results.load(stem)
    stages = [data["baseline"]]
    seen: set[str] = set()
    for e in data["methods"]:
        key = e["method"] if e["method"] not in ("polarization", "masksparsity", "polarization-distill") else f"{e['method']}-{e['level']}"
        if key not in seen and e["method"] != "polarization-distill":
            stages.append(e["sparsity"])
        seen.add(key)
        stages.append(e["finetune"])
    rates = [s["images_per_s"] for s in stages if s.get("images_per_s")]
    hours = sum(s["wall_s"] for s in stages) / 3600
    text = f"{span(rates, '.0f')} training images/s, {hours:.1f} hours of training in all (the stages' `wall_s`)"
    machines = collections.Counter(_machine_cell(s["machine"]) if s.get("machine") else "machine not recorded" for s in stages)
    if set(machines) != {"machine not recorded"}:  # stage records name their machine since the runs of 2026-12-06
        text += "; stages per machine: " + "; ".join(f"{name} ({n})" for name, n in machines.items())
    return text


def _seed_pairs(results: Results, level: str, seed: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """The main run, the repeat with ``seed``, and (label, main entry, repeat entry) of the methods both ran at ``level``."""
    stem = f"{FULL_STEM}_seed{seed}"
    main, repeat = results.load(FULL_STEM), results.load(stem)
    again = {e["method"]: e for _, e in _full_rows(results, level, stem)}
    pairs = [(label, e, again[e["method"]]) for label, e in _full_rows(results, level) if e["method"] in again]
    if not pairs:
        raise RenderError(f"{stem}: no method of the main run at level {level!r}")
    return main, repeat, pairs


def full_seeds(results: Results, level: str, seed: str) -> str:
    """The main run (seed 0) beside its repeat with another seed: baseline, level, the rows both ran and their
    differences to L1, each seed-to-seed change marked when it exceeds the sampling noise."""
    main, repeat, pairs = _seed_pairs(results, level, seed)

    def row(name: str, a: float, b: float, noisy: bool = True) -> list[str]:
        mark = (" (beyond noise)" if _beyond_noise(a, b) else " (within noise)") if noisy else ""
        return [name, f"{a:.2f}", f"{b:.2f}", f"{b - a:+.2f}{mark}"]

    rows = [row("unpruned baseline", main["baseline"]["top1"], repeat["baseline"]["top1"]),
            [f"level {level}: MACs reduction", f"{main['level_targets'][level]:.1%}", f"{repeat['level_targets'][level]:.1%}",
             f"{100 * (repeat['level_targets'][level] - main['level_targets'][level]):+.1f} points"]]
    rows += [row(f"{label}, after fine-tuning", a["finetune"]["top1"], b["finetune"]["top1"]) for label, a, b in pairs]
    l1 = next(((a, b) for _, a, b in pairs if a["method"] == "l1"), None)
    if l1 is not None:
        rows += [row(f"{label} minus L1", a["finetune"]["top1"] - l1[0]["finetune"]["top1"],
                     b["finetune"]["top1"] - l1[1]["finetune"]["top1"], noisy=False)
                 for label, a, b in pairs if a["method"] != "l1"]
    return table(["top-1 (%)", "seed 0", f"seed {seed}", f"seed {seed} minus seed 0"], rows)


def full_seed_change(results: Results, level: str, seed: str) -> str:
    """How far the fine-tuned top-1 of the same rows moved between the seeds (range of the absolute changes)."""
    _, _, pairs = _seed_pairs(results, level, seed)
    return span([abs(b["finetune"]["top1"] - a["finetune"]["top1"]) for _, a, b in pairs], ".2f")


# ----------------------------------------------------------------------------- section 2: pruning time


def pruning_time_table(results: Results) -> str:
    """``prune_model`` time per torchvision model, with its phases."""
    rows = []
    for m in results.load("pruning_time")["models"]:
        s = m["report_seconds"]
        rows.append([
            m["model"], f"{m['seconds_median']:.2f}",
            " / ".join(f"{s[k]:.2f}" for k in ("graph", "decide", "compensation", "surgery")),
            f"{m['macs_before'] / 1e9:.3f} -> {m['macs_after'] / 1e9:.3f}", f"{m['macs_reduction']:.1%}",
            f"{m['params_before'] / 1e6:.2f} -> {m['params_after'] / 1e6:.2f}", f"{m['params_reduction']:.1%}",
        ])
    return table(["model", "time (s)", "graph / decide / compensation / surgery (s)", "MACs before -> after (G)",
                  "MACs red.", "params before -> after (M)", "params red."], rows)


def pruning_time_settings(results: Results) -> str:
    """The settings sentence of the pruning-time benchmark."""
    data = results.load("pruning_time")
    prov = _provenance(data)
    return (f"median of {data['repeats']} runs each on a fresh deep copy, torch threads "
            f"{prov['machine'].get('torch_threads')}, load average {span(_recorded_load(data), '.1f')}")


# ----------------------------------------------------------------------------- section 3: pruned latency


def _latency_models(results: Results) -> list[dict[str, Any]]:
    return results.load("pruned_latency")["models"]


MODEL_LABELS = {"resnet56": "CIFAR ResNet-56", "resnet50": "ResNet-50 (224 px)"}


def pruned_latency_table(results: Results) -> str:
    """Batch-64 MACs and latency cuts, pruned vs ChannelExpand, both layouts; a pass in bold."""
    rows = []
    for m in _latency_models(results):
        cells = []
        for layout in ("nchw", "channels_last"):
            cut = m["latency"][layout]["64"]["latency_cut"]
            pruned = f"{cut['pruned']:.1%}"
            if m["acceptance"][layout]["passed"]:
                pruned = f"**{pruned}**"
            cells.append(f"{pruned} / {cut['expand']:.1%}")
        rows.append([MODEL_LABELS.get(m["model"], m["model"]), m["round_to"],
                     f"{m['macs_reduction']['pruned']:.1%} / {m['macs_reduction']['expand']:.1%}", *cells])
    return table(["model", "round_to", "MACs cut (pruned / expand)", "latency cut NCHW (pruned / expand)",
                  "latency cut channels_last (pruned / expand)"], rows, align="lrlll")


def pruned_latency_batch1(results: Results) -> str:
    """Batch-1 latency cuts of the pruned models."""
    parts = []
    for model in ("resnet56", "resnet50"):
        cells = []
        for m in (m for m in _latency_models(results) if m["model"] == model):
            cuts = [m["latency"][layout]["1"]["latency_cut"]["pruned"] for layout in ("nchw", "channels_last")]
            cells.append(f"{cuts[0]:.1%} / {cuts[1]:.1%} (`round_to={m['round_to']}`)")
        parts.append(f"{MODEL_LABELS[model]} " + " and ".join(cells))
    return "Batch 1 (NCHW / channels_last): " + "; ".join(parts) + "."


def _page_faults(data: dict[str, Any]) -> list[tuple[str, int, str, str, str, int]]:
    """(model, round_to, layout, batch, variant, faults) of every cell."""
    cells = []
    for m in data["models"]:
        for layout, per_batch in m["latency"].items():
            for batch, lat in per_batch.items():
                for variant, faults in lat["page_faults_per_forward"].items():
                    cells.append((m["model"], m["round_to"], layout, batch, variant, faults))
    return cells


def pruned_latency_faults(results: Results, stem: str = "pruned_latency") -> str:
    """The page faults per forward of a latency run: zero everywhere, or where they are not."""
    cells = _page_faults(results.load(stem))
    nonzero = [c for c in cells if c[5]]
    if not nonzero:
        return f"0 in all {len(cells)} cells"
    listed = "; ".join(f"{n:,} for the {variant} {model} (`round_to={r}`, {layout}, batch {b})"
                       for model, r, layout, b, variant, n in nonzero)
    return f"0 in {len(cells) - len(nonzero)} of {len(cells)} cells, {listed}"


def pruned_latency_settings(results: Results) -> str:
    """Threads, rounds and load of the latency run."""
    data = results.load("pruned_latency")
    rounds = {m["model"]: m["latency"]["nchw"]["64"]["seconds"]["unpruned"]["n"] for m in data["models"]}
    return (f"torch threads {data['threads']}, "
            + ", ".join(f"{n} interleaved rounds for {MODEL_LABELS[k]}" for k, n in rounds.items())
            + f"; load average {span(data['load_start'][:1] + data['load_end'][:1], '.2f')} (1 min, start and end)")


def pruned_latency_required(results: Results) -> str:
    """The acceptance line at batch 64 (0.7 x the MACs cut of each model)."""
    return span([m["acceptance"]["nchw"]["required"] for m in _latency_models(results)], ".1%")


def _round_cuts(m: dict[str, Any], layout: str, batch: str = "64") -> list[float]:
    seconds = m["latency"][layout][batch]["seconds"]
    return [1 - p / u for p, u in zip(seconds["pruned"]["all"], seconds["unpruned"]["all"])]


def pruned_latency_rounds(results: Results) -> str:
    """How many per-round cuts of the round_to=16 models fall under the acceptance line, with the range."""
    parts = []
    for m in (m for m in _latency_models(results) if m["round_to"] == 16):
        for layout in ("nchw", "channels_last"):
            cuts = _round_cuts(m, layout)
            below = sum(c < m["acceptance"][layout]["required"] for c in cuts)
            parts.append(f"{MODEL_LABELS[m['model']]} {layout}: {span(cuts, '.1%', ' .. ')}, "
                         f"{below} of {len(cuts)} rounds under the line")
    return "; ".join(parts)


def pruned_latency_default_malloc(results: Results) -> str:
    """What the default-allocator run of ResNet-56 measured."""
    data = results.load("pruned_latency_resnet56_default_malloc")
    steady = results.load("pruned_latency")
    faults = [c[5] for c in _page_faults(data) if c[3] == "64"]
    cut = {m["round_to"]: [m["latency"][lay]["64"]["latency_cut"]["pruned"] for lay in ("nchw", "channels_last")]
           for m in data["models"]}
    unpruned = data["models"][0]["latency"]["nchw"]["64"]["seconds"]["unpruned"]["median"]
    unpruned_steady = next(m for m in steady["models"] if m["model"] == "resnet56")["latency"]["nchw"]["64"]["seconds"]["unpruned"]["median"]
    return (f"counts {span(faults, ',d', ' to ')} page faults per batch-64 forward depending on the model and layout, "
            f"and the ranking follows the page faults: there, unrounded widths \"win\" with {span(cut[1], '.1%')} and "
            f"`round_to=16` \"loses\" with {span(cut[16], '.1%')}. (The unpruned ResNet-56 took {1000 * unpruned:.0f} ms "
            f"at batch 64 (NCHW) in that run and {1000 * unpruned_steady:.0f} ms in the steady one; two runs, so only indicative.)")


def pruned_latency_phases(results: Results) -> str:
    """The phases of ``prune_model`` on ResNet-50 at 224 px (computed from the phases, not the file's sum key)."""
    entry = next(t for t in results.load("pruned_latency")["pruning_time"] if t["example_input"][-1] == 224)
    s = entry["seconds"]
    return (f"graph {s['graph']:.2f} s, decide {s['decide']:.2f} s, surgery {s['surgery']:.2f} s "
            f"(**{s['graph'] + s['surgery']:.2f} s for graph + surgery**, {s['graph'] + s['decide'] + s['surgery']:.2f} s "
            f"with the decision), compensation {s['compensation']:.2f} s, {s['total']:.2f} s in total with probes and report "
            f"(medians of {len(entry['runs'])} runs)")


# ----------------------------------------------------------------------------- sections 3b-6


def cifar_recipe_table(results: Results) -> str:
    """The stages of the CIFAR-10 recipe run."""
    rows = []
    for s in results.load("cifar_recipe_resnet20")["summary"]["stages"]:
        label = "prune (`grad`)" if s["name"] == "prune" else s["name"]
        reduce = ["-", "-"] if s["name"] == "sparsity" else [f"{s['macs_reduction']:.1%}", f"{s['params_reduction']:.1%}"]
        rows.append([label, f"{s['top1']:.2f}", f"{s['macs']:,}", f"{s['params']:,}", *reduce])
    return table(["stage", "top-1 (%)", "MACs", "params", "MACs reduction", "params reduction"], rows, align="lrrrrr")


def _engine_images_per_s(settings: dict[str, Any], name: str) -> float:
    """The engine's median throughput (CPU time) in one CPU setting."""
    return settings[name]["cpu_time"]["engine_images_per_s"]["median"]


def engine_table(results: Results, stem: str = "engine_throughput") -> str:
    """Engine vs bare-loop throughput in every CPU setting, and each setting's speed against fp32 NCHW."""
    settings = results.load(stem)["cpu_settings"]
    reference = _engine_images_per_s(settings, "fp32-nchw") if "fp32-nchw" in settings else None
    rows = []
    for name, m in settings.items():
        engine = _engine_images_per_s(settings, name)
        rows.append([f"`{name}`", f"{engine:.1f}", f"{m['cpu_time']['bare_images_per_s']['median']:.1f}",
                     f"{100 * m['wall_clock']['ratio_of_medians']:.1f} %", f"{100 * m['cpu_time']['ratio_of_medians']:.1f} %",
                     f"{engine / reference:.2f}x" if reference else "-"])
    return table(["setting", "engine img/s", "bare img/s", "engine / bare (wall clock)", "engine / bare (CPU time)",
                  "engine speed vs `fp32-nchw`"], rows)


def engine_speed(results: Results, stem: str, setting: str) -> str:
    """One setting's engine throughput against ``fp32-nchw`` in the same run (CPU time)."""
    settings = results.load(stem)["cpu_settings"]
    if setting not in settings or "fp32-nchw" not in settings:
        raise RenderError(f"{stem}: no setting {setting!r} beside fp32-nchw")
    return f"{_engine_images_per_s(settings, setting) / _engine_images_per_s(settings, 'fp32-nchw'):.2f}x"


def engine_notes(results: Results, stem: str = "engine_throughput") -> str:
    """The acceptance and the spread of the engine benchmark."""
    data = results.load(stem)
    settings = data["cpu_settings"]
    rounds = [r for m in settings.values() for r in m["wall_clock"]["per_round_ratios"]["all"]]
    ratios = [m[k]["ratio_of_medians"] for m in settings.values() for k in ("wall_clock", "cpu_time")]
    verdict = "keeps" if data["acceptance"]["passed"] else "does NOT keep"
    return (f"The engine {verdict} >= {data['acceptance']['min_ratio']:.0%} of a bare loop's throughput in every setting "
            f"(the acceptance line; {span([100 * r for r in ratios], '.1f')} %). Per-round wall-clock ratios range from "
            f"{min(rounds):.0%} to {max(rounds):.0%} because of the other jobs on the machine; CPU time, which leaves out the "
            f"time other processes held the CPU, is the steadier measure. Checkpoint + logs: "
            f"{1000 * data['engine_checkpoint_log_s_per_epoch']['median']:.0f} ms per epoch.")


REGULARIZER_LABELS = {"none": "none", "l1": "L1", "polarization": "polarization", "mask-l1": "mask-L1"}


def regularizer_table(results: Results) -> str:
    """Median step, paired ratio and isolated hook time per regularizer."""
    variants = results.load("regularizer_overhead")["variants"]
    rows = []
    for key, label in REGULARIZER_LABELS.items():
        v = variants[key]
        if key == "none":
            rows.append([label, f"{v['step_seconds']['median']:.3f}", "1", "-", "-"])
        else:
            rows.append([label, f"{v['step_seconds']['median']:.3f}", f"{v['paired_ratio_median']:.4f}",
                         f"{v['hook_ms']:.3f}", f"{v['hook_overhead_fraction']:.3%}"])
    return table(["regularizer", "median step (s)", "paired ratio to `none`", "hook work alone (ms)", "hook / step"], rows)


def regularizer_notes(results: Results) -> str:
    """The verdict and the one-off costs of the regularizer benchmark."""
    data = results.load("regularizer_overhead")
    variants = [v for k, v in data["variants"].items() if k != "none"]
    verdict = "All within" if all(v["pass"] for v in variants) else "NOT all within"
    return (f"{verdict} the {data['limit_ratio'] - 1:.0%} acceptance line; the isolated hook time "
            f"({span([v['hook_ms'] for v in variants], '.2f')} ms against a "
            f"{1000 * data['variants']['none']['step_seconds']['median']:.0f} ms step) is the precise measure, the "
            f"end-to-end ratios carry a few percent of machine noise. Building the hooks with the trial-prune monitor "
            f"costs {data['build_hooks_with_monitor_seconds']:.2f} s once per run; the per-epoch trial prune "
            f"{1000 * data['monitor_epoch_end_seconds']['median']:.0f} ms.")


def data_loader_notes(results: Results) -> str:
    """Loader cost against a training step."""
    data = results.load("data_loader")
    return (f"The in-memory loader (gather, 4-px crop + flip, normalise) takes {data['loader_ms_per_batch_median']:.2f} ms "
            f"per batch of {data['batch_size']} against {data['train_step_ms_median']:.0f} ms for a ResNet-56 training step "
            f"({data['machine']['torch_threads']} threads, median of {data['repeats']}): "
            f"{data['loader_over_step_median_ratio']:.2%} of a step, so CIFAR training on the CPU is never loader-bound.")


def bimodality_table(results: Results) -> str:
    """|gamma| shares after sparsity training on the digits, per regularizer."""
    data = results.load("bimodality_digits")
    labels = {"polarization": "polarization, lambda {lbd:g}, t {t:g}, clamp {clamp:g}", "l1": "L1, lambda {lbd:g}",
              "none": "no regularizer"}
    rows = []
    for name, r in data["runs"].items():
        rows.append([labels.get(name, name).format(**r["sparsity"]), f"{r['near_zero']:.0%}", f"{r['in_gap']:.0%}",
                     f"{r['median_others']:.2f}", f"{r['min_gamma']:.3f}", f"{r['top1']:.1f}%"])
    low, (gap_low, gap_high) = data["near_zero"], data["gap"]
    return table(["run", f"\\|gamma\\| < {low:g}", f"\\|gamma\\| in [{gap_low:g}, {gap_high:g})", "median of the others",
                  "smallest \\|gamma\\|", "top-1"], rows, align="lrrrrr")


# ----------------------------------------------------------------------------- README: demo


DEMO_STAGE_LABELS = {"sparsity": "sparsity (polarization, {epochs} epochs)", "prune": "prune (`grad`)",
                     "finetune": "fine-tune ({epochs} epochs)"}


def demo_table(results: Results, method: str = "polarization") -> str:
    """The stages of ``polarprune demo``."""
    data = results.load(f"demo_{method}")
    rows = []
    for s in data["stages"]:
        label = DEMO_STAGE_LABELS.get(s["name"], s["name"]).format(epochs=data["stage_epochs"].get(s["name"], "?"))
        macs, params = f"{s['macs'] / 1e6:.2f} M", f"{s['params'] / 1e3:.1f} K"
        if s["name"] == "prune":
            macs += f" (-{s['macs_reduction']:.1%})"
            params += f" (-{s['params_reduction']:.1%})"
        rows.append([label, f"{s['top1']:.2f}%", macs, params])
    return table(["stage", "top-1 (digits test split)", "MACs", "params"], rows, align="lrrr")


def demo_seconds(results: Results, method: str = "polarization") -> str:
    """Wall-clock seconds of the whole demo command."""
    return f"{results.load(f'demo_{method}')['wall_seconds']:.0f}"


# ----------------------------------------------------------------------------- registry


def deploy_latency_table(results: Results) -> str:
    """Latency cut / MACs cut per runtime and batch for every pruned variant (polarprune with
    round_to 16 first, then the Torch-Pruning ones), with the MACs cut in the header; polarprune's
    figure in bold where it reaches the goal (at the goal's batch size)."""
    data = results.load("deploy_latency")
    rows, headers = [], None
    for m in data["models"]:
        variants = m.get("variants", list(m["macs"]))
        pruned = variants[1:]
        headers = headers or ["model", "runtime", "batch", "unpruned ms", "polarprune ms",
                              *[f"{v} cut / MACs cut" for v in pruned]]
        label = MODEL_LABELS.get(m["model"], m["model"])
        for runtime, per_runtime in m["runtimes"].items():
            for batch, b in per_runtime["batches"].items():
                ratios = []
                for v in pruned:
                    cell = f"{b['cut_over_macs_cut'][v]:.2f} ({m['macs_cut'][v]:.1%})"
                    goal = m["goal"]
                    met = v == "polarprune" and batch == str(goal["batch"]) and b["cut_over_macs_cut"][v] >= goal["required"]
                    ratios.append(f"**{cell}**" if met else cell)
                rows.append([label, runtime, batch, f"{b['median_ms']['unpruned']:.2f}", f"{b['median_ms']['polarprune']:.2f}", *ratios])
    if headers is None:
        raise RenderError("deploy_latency: no models measured")
    return table(headers, rows, align="lllrr" + "r" * (len(headers) - 5))


def deploy_latency_settings(results: Results) -> str:
    """Threads, rounds, allocator and load of the deploy-latency run."""
    data = results.load("deploy_latency")
    rounds = ", ".join(f"{r['rounds']} interleaved rounds for {MODEL_LABELS.get(r['model'], r['model'])}" for r in data["models"])
    load = [data["load_start"][0], data["load_end"][0]]
    allocator = "glibc keeping freed memory" if data["steady_malloc"] else "glibc's default allocator"
    done = "" if data.get("complete", True) else " (incomplete run: only the models listed were measured)"
    return (f"threads {data['threads']} (torch and onnxruntime), {rounds}, {allocator}; load average "
            f"{min(load):.1f}-{max(load):.1f} (1 min, start and end), {data['wall_seconds'] / 60:.0f} min{done}")


def deploy_latency_goal(results: Results) -> str:
    """Per model: the best batch-64 latency cut / MACs cut of polarprune, and where it is below Torch-Pruning."""
    parts = []
    for m in results.load("deploy_latency")["models"]:
        g = m["goal"]
        below = [f"{rt} vs {k}" for rt, v in g["not_below_torch_pruning"].items() for k, ok in v.items() if not ok]
        parts.append(f"{MODEL_LABELS.get(m['model'], m['model'])}: best {g['best']:.2f} ({g['best_runtime']}), "
                     f"goal {'met' if g['met'] else 'not met'}; below Torch-Pruning at equal MACs "
                     f"({', '.join(g['equal_macs']) or 'none at equal MACs'}): {', '.join(below) if below else 'never'}")
    return "; ".join(parts)


RENDERERS: dict[str, Renderer] = {
    "value": value,
    "range": value_range,
    "max": value_max,
    "provenance-table": provenance_table,
    "full-protocol": full_protocol,
    "full-baseline": full_baseline,
    "full-table": full_table,
    "full-target": full_target,
    "full-drop": full_drop,
    "full-final": full_final,
    "full-noise": full_noise,
    "full-diff": full_diff,
    "full-final-pruned": full_final_pruned,
    "full-gammas": full_gammas,
    "full-se": full_se,
    "full-gap": full_gap,
    "full-gammas-of": full_gammas_of,
    "full-run": full_run,
    "full-seeds": full_seeds,
    "full-seed-change": full_seed_change,
    "methods-table": methods_table,
    "methods-unpruned": methods_unpruned,
    "methods-protocol": methods_protocol,
    "methods-target": methods_target,
    "methods-max-deviation": methods_max_deviation,
    "methods-latency-rounds": methods_latency_rounds,
    "methods-gammas": methods_gammas,
    "methods-run": methods_run,
    "methods-drop": methods_drop,
    "methods-final": methods_final,
    "methods-final-gap": methods_final_gap,
    "methods-final-spread": methods_final_spread,
    "methods-standard-error": methods_standard_error,
    "methods-latency-ranges": methods_latency_ranges,
    "pruning-time-table": pruning_time_table,
    "pruning-time-settings": pruning_time_settings,
    "pruned-latency-table": pruned_latency_table,
    "pruned-latency-batch1": pruned_latency_batch1,
    "pruned-latency-faults": pruned_latency_faults,
    "pruned-latency-settings": pruned_latency_settings,
    "pruned-latency-required": pruned_latency_required,
    "pruned-latency-rounds": pruned_latency_rounds,
    "pruned-latency-default-malloc": pruned_latency_default_malloc,
    "pruned-latency-phases": pruned_latency_phases,
    "cifar-recipe-table": cifar_recipe_table,
    "engine-table": engine_table,
    "engine-notes": engine_notes,
    "engine-speed": engine_speed,
    "regularizer-table": regularizer_table,
    "regularizer-notes": regularizer_notes,
    "data-loader-notes": data_loader_notes,
    "bimodality-table": bimodality_table,
    "demo-table": demo_table,
    "demo-seconds": demo_seconds,
    "deploy-latency-table": deploy_latency_table,
    "deploy-latency-settings": deploy_latency_settings,
    "deploy-latency-goal": deploy_latency_goal,
}


# ----------------------------------------------------------------------------- rendering


@dataclass
class Block:
    """One marked block of a document and what rendering gives for it."""

    document: str
    spec: str
    current: str
    rendered: str


def render_spec(spec: str, results: Results) -> str:
    """The text of one block: ``RENDERERS[name](results, *args)``."""
    name, *args = spec.split()
    if name not in RENDERERS:
        raise RenderError(f"unknown block {name!r} (known: {', '.join(sorted(RENDERERS))})")
    try:
        return RENDERERS[name](results, *args)
    except RenderError as exc:
        raise RenderError(f"block '{spec}': {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError, StopIteration) as exc:
        raise RenderError(f"block '{spec}': {type(exc).__name__}: {exc}") from exc


def render_text(text: str, results: Results, document: str = "<text>") -> tuple[str, list[Block]]:
    """``text`` with every marked block filled in, and the blocks."""
    if text.count("<!-- render:") != text.count("<!-- /render -->"):
        raise RenderError(f"{document}: unbalanced render markers")
    blocks: list[Block] = []

    def fill(match: re.Match[str]) -> str:
        spec, body = match["spec"].strip(), match["body"]
        rendered = render_spec(spec, results)
        if body.startswith("\n"):
            rendered = "\n" + rendered.strip("\n") + "\n"
        blocks.append(Block(document, spec, body, rendered))
        return f"<!-- render: {spec} -->{rendered}<!-- /render -->"

    return MARKER.sub(fill, text), blocks


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [p for option in match.group(1).split(",")
            for p in _expand_braces(path[:match.start()] + option + path[match.end():])]


def cited_files(text: str) -> list[str]:
    """Every ``bench/results/...`` file a text names (brace lists such as ``a{1,2}.json`` expanded)."""
    paths = [p.rstrip(".,") for cited in CITED_PATH.findall(text) for p in _expand_braces(cited)]
    return [p for p in paths if p.endswith(CITED_SUFFIXES)]


def document_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The documents that carry rendered blocks or cite result files."""
    paths: list[Path] = []
    for pattern in DOCUMENTS:
        paths.extend(sorted(root.glob(pattern)))
    return paths


@dataclass
class Outcome:
    """What rendering a set of documents gives: new texts, differing blocks, missing cited files."""

    texts: dict[Path, str]
    differing: list[Block]
    missing: list[str]


def render_documents(root: Path = REPO_ROOT, results_dir: Path | None = None) -> Outcome:
    """Render every document under ``root`` from ``results_dir`` (default ``root/bench/results``)."""
    results = Results(results_dir or root / "bench" / "results")
    texts: dict[Path, str] = {}
    differing: list[Block] = []
    missing: list[str] = []
    for path in document_paths(root):
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(root))
        new_text, blocks = render_text(text, results, rel)
        texts[path] = new_text
        differing += [b for b in blocks if b.current != b.rendered]
        for cited in cited_files(text):
            if not (results.folder / Path(cited).name).is_file():
                missing.append(f"{rel}: {cited}")
    return Outcome(texts, differing, missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs or a cited file is missing")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--results", type=Path, help="result folder (default ROOT/bench/results)")
    args = parser.parse_args(argv)
    try:
        outcome = render_documents(args.root, args.results)
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    for cited in outcome.missing:
        print(f"missing result file cited by {cited}", file=sys.stderr)
    if args.check:
        for block in outcome.differing:
            print(f"{block.document}: block '{block.spec}' differs from its result file", file=sys.stderr)
        return 1 if outcome.differing or outcome.missing else 0
    for path, text in outcome.texts.items():
        if text != path.read_text(encoding="utf-8"):
            atomic_write_text(path, text)
            print(f"rendered {path.relative_to(args.root)}")
    return 1 if outcome.missing else 0


if __name__ == "__main__":
    sys.exit(main())
