"""The runtimes latency is measured in, one record each (``RUNTIME_RECORDS``).

A record says how to build a runner (a no-argument callable doing one forward of a copy of a model
at a batch and thread count), which optional package it needs (``onnxruntime``: the ``deploy``
extra) and whether that package is installed. ``forward_runner``, ``measure_latency`` and the
latency cost model ask the records; adding a runtime is one record plus its builder.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError, require_extra
from ..pruning.registry import lookup
from .export import export_model, load_artifact

# The onnxruntime runner's export check: the artifact is for timing, so float-rounding
# differences of large random-weight models up to this are accepted (export's default is 1e-4).
TIMING_EXPORT_TOLERANCE = 1e-3

Runner = Callable[[], Any]
# (model, input batch, threads, work folder) -> runner
Builder = Callable[[nn.Module, Tensor, "int | None", Path | None], Runner]


@dataclass(frozen=True)
class Runtime:
    """One runtime: its name, its runner builder, the package it needs (None: torch only) and the
    extra that installs it; ``build_probe``: the builder the latency tables use, where a quicker one
    serves their simple layer probes."""

    name: str
    build: Builder
    package: str | None = None
    extra: str | None = None
    description: str = ""
    build_probe: Builder | None = None  # a quicker builder for the latency tables' layer probes (default: build)

    @property
    def available(self) -> bool:
        """Its package is installed."""
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def check(self) -> "Runtime":
        """This record, or a one-line error naming the extra to install (``errors.require_extra``)."""
        if self.package is not None:
            require_extra(self.package, self.extra or self.package, f"the {self.name} runtime")
        return self


def _eager(memory_format: torch.memory_format, dtype: torch.dtype) -> Builder:
    """A builder running a copy of the model in PyTorch eager mode with this layout and dtype."""

    def build(model: nn.Module, x: Tensor, threads: int | None, workdir: Path | None) -> Runner:
        work = copy.deepcopy(model).cpu().eval()
        if memory_format != torch.contiguous_format or dtype != torch.float32:
            work = work.to(dtype=dtype, memory_format=memory_format)
            x = x.to(dtype)
            x = x.contiguous(memory_format=memory_format) if x.dim() == 4 else x

        def run() -> Any:
            with torch.inference_mode():
                return work(x)

        return run

    return build


def _onnx_file(workdir: Path | None) -> str:
    """A new ``.onnx`` file name in ``workdir`` (a new temporary folder, left to the caller, when None)."""
    folder = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="polarprune-latency-"))
    handle, name = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(handle)
    return name


def _onnxruntime(model: nn.Module, x: Tensor, threads: int | None, workdir: Path | None) -> Runner:
    """Export to ONNX (verified, ``export_model``) and run it in onnxruntime."""
    name = _onnx_file(workdir)
    export_model(model, name, "onnx", input_size=int(x.shape[-1]), in_channels=int(x.shape[1]), batch=int(x.shape[0]),
                 tolerance=TIMING_EXPORT_TOLERANCE)
    run = load_artifact(name, "onnx", threads=threads)
    return lambda: run(x)


def _onnxruntime_probe(model: nn.Module, x: Tensor, threads: int | None, workdir: Path | None) -> Runner:
    """The latency tables' onnxruntime runner: torch's TorchScript-based ONNX exporter, without the
    artifact check (about 20 ms an export instead of seconds: a table has up to 81 layer probes)."""
    name = _onnx_file(workdir)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).cpu().eval(), (x,), name, dynamo=False, input_names=["input"],
                          output_names=["output"])
    run = load_artifact(name, "onnx", threads=threads)
    return lambda: run(x)


RUNTIME_RECORDS: dict[str, Runtime] = {}


def register_runtime(record: Runtime) -> Runtime:
    """Add ``record`` (a later record of the same name replaces the earlier one)."""
    RUNTIME_RECORDS[record.name] = record
    return record


def runtime(name: str) -> Runtime:
    """The record of ``name``, checked to be installed; a one-line error naming the known ones."""
    return lookup(RUNTIME_RECORDS, name, "runtime").check()


def build_runner(model: nn.Module, name: str, input_shape: Sequence[int], batch: int, *, threads: int | None = None,
                 workdir: str | os.PathLike[str] | None = None, seed: int = 0, probe: bool = False) -> Runner:
    """A runner of ``model`` in runtime ``name`` on a seeded random batch of ``input_shape`` (``probe``: with
    the record's quicker builder for the latency tables, where it has one)."""
    record = runtime(name)
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    build = record.build_probe if probe and record.build_probe is not None else record.build
    return build(model, x, threads, Path(workdir) if workdir is not None else None)


for _record in (
    Runtime("eager", _eager(torch.contiguous_format, torch.float32), description="PyTorch eager, float32, NCHW"),
    Runtime("eager-channels-last", _eager(torch.channels_last, torch.float32), description="PyTorch eager, float32, NHWC"),
    Runtime("eager-bf16", _eager(torch.channels_last, torch.bfloat16), description="PyTorch eager, bfloat16, NHWC"),
    Runtime("onnxruntime", _onnxruntime, package="onnxruntime", extra="deploy", description="ONNX Runtime, CPU",
            build_probe=_onnxruntime_probe),
):
    register_runtime(_record)

__all__ = ["Runtime", "RUNTIME_RECORDS", "TIMING_EXPORT_TOLERANCE", "build_runner", "register_runtime", "runtime"]
