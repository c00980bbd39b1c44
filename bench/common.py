"""Shared helpers of the benchmark scripts: what every result must record, and timing.

Every result file records where and from what it came (``provenance``: git revision, refusing
a dirty tree unless ``--allow-dirty`` and then marked ``+dirty``; date; machine; the 1-minute
load at start and end; the training and test images used; command, seed, library versions), and
is written atomically by ``write_results``, which refuses a result without it. Timings are taken side
by side in one process: ``interleaved`` runs the candidates round-robin so that drifts of a
shared machine hit all of them alike, and ``summary`` reports medians.

Scripts in ``bench/`` import this as ``from common import ...`` (the script's folder is on
``sys.path`` when it runs as ``python bench/NAME.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

# The allocator settings (glibc keeps freed memory, so page faults do not blur latency) and the
# interleaved timing live in polarprune.deploy.latency, shared with `polarprune latency`.
from polarprune.deploy.latency import (  # noqa: F401  (re-exported for the scripts)
    STEADY_MALLOC_ENV,
    interleaved,
    minor_page_faults,
    paired_ratios,
    reexec_with_steady_malloc,
    steady_malloc,
    timed,
)
from polarprune.hardware import cpu_model, cpu_native_bf16

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

DEFAULT_LIBRARIES = ("polarprune", "torch", "torchvision", "numpy", "torch-pruning")

# The load when the script started (it imports this module first): provenance records it beside the load at the end.
LOAD_AT_START = [round(v, 2) for v in os.getloadavg()]
PROVENANCE_FIELDS = ("git", "date_utc", "machine", "load", "data")


# ----------------------------------------------------------------------------- provenance


def machine_info() -> dict[str, Any]:
    """Platform, CPU counts (machine and usable by this process), torch threads, GPU if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "cpu_native_bf16": cpu_native_bf16(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def library_versions(names: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, str | None]:
    """Installed distribution versions (None for a library that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_line() -> str:
    """The command that ran this script, as one shell line relative to the repository root."""
    argv = list(sys.argv)
    if argv:
        script = Path(argv[0]).resolve()
        try:
            argv[0] = str(script.relative_to(REPO_ROOT))
        except ValueError:
            argv[0] = str(script)
    return shlex.join(["python", *argv])


def git_revision() -> str | None:
    """``<commit>`` or ``<commit>+dirty`` of the repository, None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


_RUN_REVISION: dict[str, str | None] = {}  # the revision this process started from, once checked


def checked_revision(allow_dirty: bool) -> str | None:
    """The git revision a result may record: a tree with uncommitted changes stops the script
    (one line) unless ``allow_dirty``, and is then marked ``+dirty``. Checked once per process: a
    script that writes its own result files as it goes keeps the revision it started from."""
    if "git" in _RUN_REVISION:
        return _RUN_REVISION["git"]
    revision = git_revision()
    if revision is not None and revision.endswith("+dirty") and not allow_dirty:
        raise SystemExit("bench: the git tree has uncommitted changes; commit them first, or pass --allow-dirty "
                         "(the result is then marked +dirty)")
    _RUN_REVISION["git"] = revision
    return revision


def add_provenance_options(parser: argparse.ArgumentParser) -> None:
    """The option every bench script takes for its provenance: ``--allow-dirty``."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run from a git tree with uncommitted changes (the result's git revision is marked +dirty)")


def data_sizes(train_images: int, test_images: int, source: str) -> dict[str, Any]:
    """The images a result used: how many for training and for testing, and from where
    (``source``; 0 images for benchmarks on random tensors)."""
    return {"train_images": int(train_images), "test_images": int(test_images), "source": source}


def loader_images(loader: Any) -> int:
    """How many images a polarprune loader holds (in memory or as files)."""
    images = getattr(loader, "images", None)
    return int(images.shape[0]) if images is not None else int(loader.dataset_size)


def bundle_sizes(bundle: Any, source: str) -> dict[str, Any]:
    """``data_sizes`` of a ``polarprune.data`` bundle (its training and evaluation loaders)."""
    return data_sizes(loader_images(bundle.train_loader), loader_images(bundle.eval_loader), source)


RANDOM_INPUTS = data_sizes(0, 0, "random tensors (no dataset)")


def configured_sizes(data: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """``data_sizes`` of a ``data:`` config section (as a recipe or a stage has it), counted by
    building its loaders; for scripts that run the library in a subprocess."""
    from polarprune.config import TrainConfig
    from polarprune.data import build_data

    cfg = TrainConfig.model_validate({"data": dict(data), "seed": seed})
    return bundle_sizes(build_data(cfg.data, seed=seed), str(data.get("root") or data.get("name")))


def provenance(seed: int, libraries: Iterable[str] = DEFAULT_LIBRARIES, *, data: Mapping[str, Any] | None = None,
               allow_dirty: bool = False) -> dict[str, Any]:
    """Everything a result must record about how it was produced (``write_results`` checks it)."""
    return {
        "command": command_line(),
        "seed": seed,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": checked_revision(allow_dirty),
        "machine": machine_info(),
        "versions": library_versions(libraries),
        "load": {"start": LOAD_AT_START, "end": [round(v, 2) for v in os.getloadavg()]},
        "data": dict(data) if data is not None else None,
    }


def check_provenance(stem: str, result: Mapping[str, Any]) -> None:
    """Refuse a result without a complete ``provenance`` record (see ``provenance``)."""
    prov = result.get("provenance")
    missing = [key for key in PROVENANCE_FIELDS if not isinstance(prov, Mapping) or prov.get(key) is None]
    if missing:
        raise ValueError(f"result {stem!r}: provenance lacks {', '.join(missing)} (build it with common.provenance(..., data=...))")


# ----------------------------------------------------------------------------- timing


def clock() -> tuple[float, float]:
    """``(wall-clock seconds, CPU seconds of this process)``; a trial costs the difference of two.
    CPU time leaves out the time other processes held the CPU (a shared machine), but sums
    over threads: compare CPU times only between runs with the same thread count."""
    return time.perf_counter(), time.process_time()


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (in the given unit)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "all": list(values),
    }


# ----------------------------------------------------------------------------- output


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(stem: str, result: Mapping[str, Any], markdown: str, folder: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<folder>/<stem>.json`` and ``<folder>/<stem>.md`` atomically (after checking the
    result's provenance); return both paths."""
    check_provenance(stem, result)
    json_path = folder / f"{stem}.json"
    md_path = folder / f"{stem}.md"
    _write_atomic(json_path, json.dumps(result, indent=2) + "\n")
    _write_atomic(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path


def provenance_markdown(prov: Mapping[str, Any]) -> str:
    """A short Markdown paragraph of a ``provenance()`` record."""
    machine = prov["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v)
    return (
        f"Command: `{prov['command']}` (seed {prov['seed']}, git {prov['git']}, {prov['date_utc']}).\n\n"
        f"Machine: {machine['platform']}, {machine.get('processor') or machine['machine']}, "
        f"{machine['cpus_usable']} of {machine['cpu_count']} CPUs usable, "
        f"torch threads {machine.get('torch_threads')}, GPU {machine.get('cuda') or 'none'}"
        + {True: ", native bf16", False: ", no native bf16 (bf16 emulated)"}.get(machine.get("cpu_native_bf16"), "") + ". "
        f"Python {machine['python']}; {versions}.\n" + _load_and_data_markdown(prov)
    )


def _load_and_data_markdown(prov: Mapping[str, Any]) -> str:
    """The load and data sentence of a provenance record (empty for records made before they were kept)."""
    load, data = prov.get("load"), prov.get("data")
    if not load or not data:
        return ""
    return (f"\nLoad average (1 min): {load['start'][0]} at start, {load['end'][0]} at end. Images: "
            f"{data['train_images']:,} training, {data['test_images']:,} test ({data['source']}).\n")
