"""Export a model to ONNX, TorchScript or a torch.export program, and verify the artifact.

``export_model`` writes through a temporary file, runs the artifact in the runtime that would serve it
on a probe batch (another batch size when the batch is dynamic) and renames it into place only when it
matches PyTorch within the tolerance. When the exporter rejects the model, the error names the deepest
submodule whose own export fails.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError, first_line, require_extra
from ..fileio import atomic_output
from ..models import input_shape_of
from ..models.entry import pruning_entry

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_TOLERANCE = 1e-4
EXAMPLE_BATCH = 2  # export example of a dynamic batch; the probe uses another size
PROBE_BATCH = 3
# the deploy extra's modules that an ONNX export and its check import (torch's exporter needs onnxscript)
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
Batch = Union[int, str]  # an int, or "dynamic"
Runner = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ExportReport:
    """What was written and how well the artifact reproduces the PyTorch model."""

    path: str
    format: str
    input_shape: tuple[int, int, int]  # (channels, height, width) of one image
    batch: Batch  # "dynamic" or the fixed batch size
    probe_batch: int
    opset: int | None  # ONNX opset (None for the torch formats)
    max_abs_diff: float
    tolerance: float  # relative to ``output_scale``: the check is max_abs_diff <= tolerance * output_scale
    output_scale: float  # max |output| of PyTorch on the probe batch, at least 1
    bytes: int
    seconds: float
    note: str | None = None  # what was written when it is not the whole model (the family's ``export_note``)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_batch(batch: Batch) -> Batch:
    """``"dynamic"`` or a positive int (a numeric string is accepted); else a one-line error."""
    if isinstance(batch, str) and batch != "dynamic":
        if not batch.isdigit():
            raise PolarpruneError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
        batch = int(batch)
    if isinstance(batch, int) and batch < 1:
        raise PolarpruneError(f"batch must be >= 1, got {batch}")
    return batch


def require_onnx(purpose: str = "onnx export") -> None:
    """A one-line error naming the deploy extra when one of the ONNX modules is not installed."""
    for module in ONNX_MODULES:
        require_extra(module, "deploy", purpose)


def _quietly(fn: Callable[[], Any]) -> Any:
    """Run an exporter without its progress prints, tracer warnings and logged warnings (the ONNX
    exporter logs a failed opset conversion with its traceback; the caller checks the result)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        logging.disable(previous)


def _dynamic_batch(example: tuple[Any, ...]) -> tuple[dict[int, Any], ...]:
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 16)
    return tuple({0: batch_dim} for _ in example)


def output_names(count: int) -> list[str]:
    """The ONNX output names: ``output``, then ``output1``, ``output2``... for a model with several."""
    return ["output"] + [f"output{i}" for i in range(1, count)]


def _write(model: nn.Module, example: tuple[Any, ...], path: Path, fmt: str, dynamic: bool, opset: int | None,
           outputs: int = 1) -> None:
    """Write the artifact of ``fmt`` for ``model`` (``outputs`` tensors) traced on ``example`` to ``path``."""
    if fmt == "onnx":
        _quietly(lambda: torch.onnx.export(
            model, example, str(path), dynamo=True, opset_version=opset, external_data=False,
            input_names=["input"], output_names=output_names(outputs),
            dynamic_shapes=_dynamic_batch(example) if dynamic else None, verbose=False,
        ))
    elif fmt == "torchscript":
        traced = _quietly(lambda: torch.jit.trace(model, example, check_trace=False))
        _quietly(lambda: torch.jit.save(traced, str(path)))
    else:
        program = _quietly(lambda: torch.export.export(model, example, dynamic_shapes=_dynamic_batch(example) if dynamic else None, strict=False))
        torch.export.save(program, str(path))


def _try_export(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], fmt: str) -> None:
    """Export ``module`` in memory (static shapes); raises what the exporter raises."""
    if fmt == "onnx":
        _quietly(lambda: torch.onnx.export(module, args, kwargs=kwargs, dynamo=True, verbose=False))
    elif fmt == "torchscript":
        if kwargs:
            _quietly(lambda: torch.jit.trace(module, example_kwarg_inputs=kwargs, check_trace=False))
        else:
            _quietly(lambda: torch.jit.trace(module, args, check_trace=False))
    else:
        _quietly(lambda: torch.export.export(module, args, kwargs, strict=False))


def _recorded_inputs(model: nn.Module, example: tuple[Any, ...]) -> dict[nn.Module, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The inputs each submodule received in one eager forward (first call only)."""
    seen: dict[nn.Module, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.setdefault(module, (args, kwargs))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def failing_module(model: nn.Module, example: tuple[Any, ...], fmt: str) -> tuple[str, nn.Module]:
    """The deepest submodule (qualified name, module) whose own export fails; the root when
    every child exports and only their composition does not."""
    inputs = _recorded_inputs(model, example)
    name, current = "", model
    while True:
        for child_name, child in current.named_children():
            if child not in inputs:
                continue
            args, kwargs = inputs[child]
            try:
                _try_export(child, args, kwargs, fmt)
            except Exception:  # noqa: BLE001 - any exporter failure marks the culprit
                name, current = f"{name}.{child_name}" if name else child_name, child
                break
        else:
            return name, current


def load_artifact(path: str | os.PathLike[str], fmt: str, *, threads: int | None = None,
                  providers: list[str] | None = None, all_outputs: bool = False) -> Runner:
    """A callable running the exported artifact at ``path`` on a CPU tensor batch (ONNX in onnxruntime with
    ``threads`` intra-op threads and ``providers``, default CPU; the others through torch). It returns the
    first output tensor, or (``all_outputs``) the tuple of all of them (a detector's boxes and masks)."""
    run = _artifact_runner(path, fmt, threads, providers)
    return (lambda x: output_tensors(run(x), "the artifact")) if all_outputs else (lambda x: output_tensors(run(x), "the artifact")[0])


def _artifact_runner(path: str | os.PathLike[str], fmt: str, threads: int | None, providers: list[str] | None) -> Callable[[Tensor], Any]:
    """A callable running the artifact and returning what it returns (ONNX: the list of its outputs)."""
    if fmt == "onnx":
        ort = require_extra("onnxruntime", "deploy", "running an onnx model")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(out) for out in session.run(None, {input_name: x.detach().cpu().numpy()})]
    if fmt == "torchscript":
        scripted = _quietly(lambda: torch.jit.load(str(path), map_location="cpu")).eval()
        return lambda x: scripted(x)
    if fmt == "exported-program":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    raise PolarpruneError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


def output_tensors(output: Any, what: str) -> tuple[Tensor, ...]:
    """A model's output as a tuple of tensors: one tensor, or a flat tuple or list of them (e.g. a
    segmenter's predictions and mask prototypes); anything else is a one-line error."""
    if isinstance(output, Tensor):
        return (output,)
    if isinstance(output, (tuple, list)) and output and all(isinstance(t, Tensor) for t in output):
        return tuple(output)
    raise PolarpruneError(f"{what} returned {type(output).__name__}; export needs a model with tensor outputs "
                          "(one tensor, or a flat tuple of tensors)")


def _write_and_verify(work: nn.Module, example: tuple[Tensor, ...], probe: Tensor, reference: tuple[Tensor, ...], artifact: Path,
                      fmt: str, dynamic: bool, opset: int | None, tolerance: float, target: Path) -> float:
    """Write the artifact, run it on ``probe`` and return its max abs difference from ``reference`` (every output),
    held to ``tolerance`` times the outputs' scale (``output_scale``: float32 rounding grows with the values, so a
    detector's pixel boxes get the bar a classifier's logits get, relative to their size)."""
    try:
        with torch.no_grad():
            _write(work, example, artifact, fmt, dynamic, opset, len(reference))
    except Exception as exc:  # noqa: BLE001 - exporter errors become one line naming the module
        name, module = failing_module(work, example, fmt)
        where = f"module {name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        raise PolarpruneError(f"cannot export to {fmt}: {where} is not supported: {first_line(exc)}") from None
    if fmt == "onnx" and opset is not None and _onnx_opset(artifact) != opset:
        # torch's exporter writes opset 18+ and converts down only some models, keeping 18 when it cannot
        raise PolarpruneError(f"{target}: torch's ONNX exporter cannot write this model at opset {opset} "
                              f"(it wrote opset {_onnx_opset(artifact)}); ask for that opset or higher; nothing written")
    run = _quietly(lambda: load_artifact(artifact, fmt, all_outputs=True))
    with torch.no_grad():
        outputs = run(probe)
    shapes, expected = [tuple(t.shape) for t in outputs], [tuple(t.shape) for t in reference]
    if shapes != expected:
        got_text, want_text = (" ".join(map(str, v)) for v in (shapes, expected))
        raise PolarpruneError(f"{target}: the {fmt} artifact's output has shape {got_text}, PyTorch's {want_text}")
    diff = max(float((got.float() - want.float()).abs().max()) if want.numel() else 0.0 for got, want in zip(outputs, reference))
    scale = output_scale(reference)
    if not diff <= tolerance * scale:
        of_scale = f" x the output scale {scale:.3g}" if scale > 1 else ""
        raise PolarpruneError(
            f"{target}: the {fmt} artifact differs from PyTorch by {diff:.3g} (max abs) on a probe batch of "
            f"{probe.shape[0]}, above the tolerance {tolerance:g}{of_scale}; nothing written"
        )
    return diff


def output_scale(outputs: Sequence[Tensor]) -> float:
    """The largest |value| over every output, at least 1: what the export tolerance is relative to."""
    return max([1.0, *(float(t.float().abs().max()) for t in outputs if t.numel())])


def export_model(model: nn.Module, path: str | os.PathLike[str], format: str = "onnx", *, input_size: int | None = None,
                 in_channels: int | None = None, batch: Batch = "dynamic", opset: int | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> ExportReport:
    """Export ``model`` (eval mode, CPU) to ``path`` and verify the artifact on a probe batch (``batch``:
    ``"dynamic"`` or a fixed size); a failed export or check is a one-line ``PolarpruneError`` and writes nothing."""
    if format not in EXPORT_FORMATS:
        raise PolarpruneError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if opset is not None and format != "onnx":
        raise PolarpruneError(f"opset applies to the onnx format only (got format {format!r})")
    if opset is not None and opset < 7:
        raise PolarpruneError(f"opset must be >= 7, got {opset}")
    if format == "exported-program" and Path(path).suffix != ".pt2":
        raise PolarpruneError(f"{path}: an exported program is a .pt2 archive; name the file *.pt2")
    if not tolerance > 0:
        raise PolarpruneError(f"tolerance must be > 0, got {tolerance}")
    batch = check_batch(batch)
    if format == "onnx":
        require_onnx()
    if not isinstance(model, nn.Module):
        raise PolarpruneError(f"export needs a torch.nn.Module, got {type(model).__name__}")
    target = Path(path)
    if target.is_dir():
        raise PolarpruneError(f"{target}: is a folder; give the artifact's file name")
    start = time.perf_counter()
    shape = input_shape_of(model, input_size, in_channels)  # the given size, else recorded, else the family's
    entry = pruning_entry(model)
    work = entry.export_form(copy.deepcopy(model).cpu().eval())  # e.g. a detector's head: its tensors only
    dynamic = batch == "dynamic"
    generator = torch.Generator().manual_seed(seed)
    example = (torch.randn(EXAMPLE_BATCH if dynamic else int(batch), *shape, generator=generator),)
    probe = torch.randn(PROBE_BATCH if dynamic else int(batch), *shape, generator=generator)
    with torch.no_grad():
        try:
            reference = output_tensors(work(probe), f"the model on input {tuple(probe.shape)}")
        except PolarpruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - a wrong input size is the user's input
            raise PolarpruneError(f"the model does not run on input {tuple(probe.shape)}: {first_line(exc)}") from None
    with atomic_output(target) as temp:
        # torch.export archives must end in .pt2 to be read back as such
        artifact = temp.with_name(temp.name + ".pt2") if format == "exported-program" else temp
        try:
            diff = _write_and_verify(work, example, probe, reference, artifact, format, dynamic, opset, tolerance, target)
            size = artifact.stat().st_size
            if artifact != temp:
                os.replace(artifact, temp)
        finally:
            if artifact != temp:
                artifact.unlink(missing_ok=True)
    return ExportReport(
        path=str(target), format=format, input_shape=shape, batch=batch, probe_batch=int(probe.shape[0]),
        opset=_onnx_opset(target) if format == "onnx" else None, max_abs_diff=diff, tolerance=tolerance,
        output_scale=output_scale(reference), note=entry.export_note,
        bytes=size, seconds=time.perf_counter() - start,
    )


def _onnx_opset(path: Path) -> int | None:
    """The default-domain opset recorded in an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


__all__ = ["DEFAULT_TOLERANCE", "EXPORT_FORMATS", "ExportReport", "check_batch", "export_model", "failing_module",
           "load_artifact", "output_scale", "require_onnx"]
