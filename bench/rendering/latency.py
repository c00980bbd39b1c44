"""Sections 2-3 of BENCHMARKS.md: pruning time, pruned-model latency, deployed latency."""

from __future__ import annotations

from typing import Any

from .engine import RenderError, Results, renderer, span, table


MODEL_LABELS = {"resnet56": "CIFAR ResNet-56", "resnet50": "ResNet-50 (224 px)"}


@renderer("pruning-time-table")
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


def _latency_models(results: Results) -> list[dict[str, Any]]:
    return results.load("pruned_latency")["models"]


@renderer("pruned-latency-table")
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


def _page_faults(data: dict[str, Any]) -> list[tuple[str, int, str, str, str, int]]:
    """(model, round_to, layout, batch, variant, faults) of every cell."""
    cells = []
    for m in data["models"]:
        for layout, per_batch in m["latency"].items():
            for batch, lat in per_batch.items():
                for variant, faults in lat["page_faults_per_forward"].items():
                    cells.append((m["model"], m["round_to"], layout, batch, variant, faults))
    return cells


@renderer("pruned-latency-faults")
def pruned_latency_faults(results: Results, stem: str = "pruned_latency") -> str:
    """The page faults per forward of a latency run: zero everywhere, or where they are not."""
    cells = _page_faults(results.load(stem))
    nonzero = [c for c in cells if c[5]]
    if not nonzero:
        return f"0 in all {len(cells)} cells"
    listed = "; ".join(f"{n:,} for the {variant} {model} (`round_to={r}`, {layout}, batch {b})"
                       for model, r, layout, b, variant, n in nonzero)
    return f"0 in {len(cells) - len(nonzero)} of {len(cells)} cells, {listed}"


@renderer("pruned-latency-required")
def pruned_latency_required(results: Results) -> str:
    """The acceptance line at batch 64 (0.7 x the MACs cut of each model)."""
    return span([m["acceptance"]["nchw"]["required"] for m in _latency_models(results)], ".1%")


def _round_cuts(m: dict[str, Any], layout: str, batch: str = "64") -> list[float]:
    seconds = m["latency"][layout][batch]["seconds"]
    return [1 - p / u for p, u in zip(seconds["pruned"]["all"], seconds["unpruned"]["all"])]


@renderer("pruned-latency-rounds")
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


@renderer("pruning-phases")
def pruning_phases(results: Results, phases: str) -> str:
    """Seconds of ``prune_model`` on ResNet-50 at 224 px in the phases named (``graph+surgery``: their sum,
    computed from the phases, not the file's sum key), or ``runs``: how many runs the medians are of."""
    entry = next(t for t in results.load("pruned_latency")["pruning_time"] if t["example_input"][-1] == 224)
    if phases == "runs":
        return str(len(entry["runs"]))
    return f"{sum(entry['seconds'][phase] for phase in phases.split('+')):.2f}"


@renderer("deploy-latency-table")
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


@renderer("deploy-latency-settings")
def deploy_latency_settings(results: Results) -> str:
    """Threads, rounds, allocator and load of the deploy-latency run."""
    data = results.load("deploy_latency")
    rounds = ", ".join(f"{r['rounds']} interleaved rounds for {MODEL_LABELS.get(r['model'], r['model'])}" for r in data["models"])
    load = [data["load_start"][0], data["load_end"][0]]
    allocator = "glibc keeping freed memory" if data["steady_malloc"] else "glibc's default allocator"
    done = "" if data.get("complete", True) else " (incomplete run: only the models listed were measured)"
    return (f"threads {data['threads']} (torch and onnxruntime), {rounds}, {allocator}; load average "
            f"{min(load):.1f}-{max(load):.1f} (1 min, start and end), {data['wall_seconds'] / 60:.0f} min{done}")


@renderer("deploy-latency-goal")
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


@renderer("page-faults-range")
def page_faults_range(results: Results, stem: str, batch: str = "64") -> str:
    """``A to B``: the fewest and most page faults per forward over a latency run's cells at ``batch``."""
    return span([cell[5] for cell in _page_faults(results.load(stem)) if cell[3] == batch], ",d", " to ")
