"""The provenance table of BENCHMARKS.md: where, when and with what each result file was made."""

from __future__ import annotations

from typing import Any

from .engine import RenderError, Results, renderer, span, table


def provenance_of(data: dict[str, Any]) -> dict[str, Any]:
    """The provenance record of a result (older files keep machine/versions at the top level)."""
    prov = data.get("provenance") or {}
    machine = prov.get("machine") or data.get("machine") or {}
    versions = prov.get("versions") or data.get("versions") or {}
    return {"date": prov.get("date_utc") or data.get("date_utc") or "-", "machine": machine, "versions": versions,
            "command": prov.get("command") or data.get("command") or "-", "git": prov.get("git") or data.get("git"),
            "data": prov.get("data"), "load": prov.get("load") or {}}


def recorded_load(data: dict[str, Any]) -> list[float]:
    """Every 1-minute load average a result recorded."""
    loads = [values[0] for values in provenance_of(data)["load"].values() if values]  # common.provenance's start and end
    for key in ("load_average", "load_start", "load_end"):
        if isinstance(data.get(key), list) and data[key]:
            loads.append(data[key][0])
    for model in data.get("models", []) if isinstance(data.get("models"), list) else []:
        if isinstance(model, dict) and "load_average_1min" in model:
            loads.append(model["load_average_1min"])
    return loads


def machine_cell(machine: dict[str, Any]) -> str:
    """A ``machine_info()`` record in a few words: CPU model, usable CPUs, GPU, native bf16 or not."""
    return (f"{machine.get('processor') or '-'}, {machine.get('cpus_usable', machine.get('cpu_count', '-'))} CPUs, "
            f"GPU {machine.get('cuda') or 'none'}"
            + {True: ", native bf16", False: ", no native bf16"}.get(machine.get("cpu_native_bf16"), ""))


@renderer("provenance-table")
def provenance_table(results: Results) -> str:
    """Where and with what each result file of BENCHMARKS.md was produced."""
    rows = []
    for path in sorted(results.folder.glob("*.json")):
        data = results.load(path.stem)
        prov = provenance_of(data)
        machine, versions = prov["machine"], prov["versions"]
        loads = recorded_load(data)
        rows.append([
            f"`{path.name}`", prov["date"][:10], machine_cell(machine),
            versions.get("torch", "-"), machine.get("torch_threads", "-"),
            span(loads, ".2f") if loads else "not recorded", prov["git"] or "not recorded", images_cell(prov["data"]),
        ])
    return table(["result file", "date (UTC)", "machine", "torch", "torch threads", "1-min load average recorded", "git",
                  "images (train / test)"], rows)


def images_cell(data: dict[str, Any] | None) -> str:
    """The training and test images a result used (``common.data_sizes``), or that it did not record them."""
    if not data:
        return "not recorded"
    return f"{data['train_images']:,} / {data['test_images']:,}" + (" (random)" if "random" in data.get("source", "") else "")


@renderer("torch-threads")
def torch_threads(results: Results, stem: str) -> str:
    """The torch threads a result ran with, wherever its file keeps the machine record."""
    threads = provenance_of(results.load(stem))["machine"].get("torch_threads")
    if threads is None:
        raise RenderError(f"{stem}: no torch_threads recorded")
    return str(threads)


@renderer("load-range")
def load_range(results: Results, stem: str, spec: str = ".2f") -> str:
    """``min-max`` of every 1-minute load average a result recorded."""
    loads = recorded_load(results.load(stem))
    if not loads:
        raise RenderError(f"{stem}: no load average recorded")
    return span(loads, spec)


@renderer("load-start-end")
def load_start_end(results: Results, stem: str, spec: str = ".2f") -> str:
    """``min-max`` of the 1-minute load averages a timing run recorded just before and after its timings."""
    data = results.load(stem)
    return span([data["load_start"][0], data["load_end"][0]], spec)
