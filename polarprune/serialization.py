"""Reading and writing model files: pruned model files (safetensors) and training checkpoints.

Every model file polarprune reads goes through this module (``load_any_model``); nothing is
ever unpickled and no module is imported unless the caller trusts code.

A polarprune model file is a safetensors file (the state dict) whose metadata holds ``"format"``
(``"polarprune"``), ``"polarprune_version"``, ``"spec"`` (JSON: ``model.polarprune_spec``, or for any
other module ``name`` null, ``class`` for information only and a ``plan`` with the shape of every layer
pruning can change; ``input_shape``, ``[C, H, W]``, is the input the model was trained or pruned at,
absent from files written before it was recorded: the commands then use the model family's default), ``"versions"`` (the state dict's per-module versions, read by e.g. torchvision's
MNASNet) and ``"extra"`` (caller metadata).

A training checkpoint is a ``torch.save`` of plain data read back with ``weights_only=True``:
``{"format": "polarprune-checkpoint", "spec": ..., "model": state dict, ...}``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import PolarpruneError
from .fileio import atomic_output
from .models import create
from .models.imports import check_trusted, is_import_path, trusting_code
from .models.inputs import INPUT_KEY, check_input_shape
from .pruning.plan import apply_plan, make_plan, module_shape

FORMAT = "polarprune"
CHECKPOINT_FORMAT = "polarprune-checkpoint"
SAFETENSORS_SUFFIX = ".safetensors"


def _check_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise PolarpruneError(f"{where}: the model spec must be a mapping, got {type(spec).__name__}")
    for key in ("name", "num_classes"):
        if key not in spec:
            raise PolarpruneError(f"{where}: the model spec has no {key!r}")
    if spec["name"] is not None and not isinstance(spec["name"], str):
        raise PolarpruneError(f"{where}: the model spec's 'name' must be a string or null")
    if not isinstance(spec.get("options") or {}, dict):
        raise PolarpruneError(f"{where}: the model spec's 'options' must be a mapping")
    if spec.get(INPUT_KEY) is not None:
        check_input_shape(spec[INPUT_KEY], where)
    return spec


def same_architecture(a: Any, b: Any) -> bool:
    """Whether two specs describe the same architecture (the recorded input shape aside: a checkpoint
    written before it was recorded still resumes)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return a == b
    return {k: v for k, v in a.items() if k != INPUT_KEY} == {k: v for k, v in b.items() if k != INPUT_KEY}


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The plain-data description of a model's architecture (set by models.create / pruning)."""
    spec = getattr(model, "polarprune_spec", None)
    if not isinstance(spec, dict):
        raise PolarpruneError(f"model of type {type(model).__name__} has no polarprune_spec; build it with polarprune.models.create")
    return spec


def instance_spec(model: nn.Module) -> dict[str, Any]:
    """The spec a file stores for ``model``: its ``polarprune_spec``, or the shape of every layer pruning
    can change (``load(path, model=fresh_instance)`` applies it)."""
    spec = getattr(model, "polarprune_spec", None)
    if isinstance(spec, dict):
        return spec
    cls = type(model)
    return {"name": None, "num_classes": None, "in_channels": None, "options": {}, "class": f"{cls.__module__}.{cls.__qualname__}",
            "plan": make_plan(model, nn.Module())}  # against an empty module: every layer's shape


def build_model(spec: dict[str, Any], where: str = "model spec", *, trust_code: bool = False) -> nn.Module:
    """The architecture described by ``spec`` (uninitialised weights, plan applied), in eval mode; an
    import-path name is imported only when code is trusted."""
    spec = _check_spec(spec, where)
    name = spec["name"]
    if name is None:
        raise PolarpruneError(
            f"{where}: the file holds a {spec.get('class') or 'model'} that polarprune cannot rebuild by itself; "
            "load it into a freshly built, unpruned instance: polarprune.load(path, model=instance)"
        )
    if is_import_path(name):
        check_trusted(name, where, trust_code)
    with trusting_code(trust_code):
        channels = int(spec["in_channels"]) if spec.get("in_channels") else None  # None: the family's
        model = create(name, int(spec["num_classes"]), in_channels=channels, **dict(spec.get("options") or {}))
    apply_plan(model, spec.get("plan"), where)
    model.polarprune_spec = json.loads(json.dumps(spec))  # type: ignore[assignment]
    return model.eval()


def _state_versions(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The per-module state-dict versions (``state_dict()._metadata``) as plain data."""
    metadata = getattr(state, "_metadata", None) or {}
    return {prefix: int(info["version"]) for prefix, info in metadata.items() if isinstance(info, dict) and "version" in info}


def _with_versions(tensors: dict[str, torch.Tensor], versions: dict[str, int] | None, model: nn.Module) -> OrderedDict:
    """``tensors`` as a state dict carrying module versions (the file's, else the model's own): safetensors
    loses ``_metadata``, and torchvision's MNASNet refuses a None version."""
    state: OrderedDict = OrderedDict(tensors)
    own = getattr(model.state_dict(), "_metadata", None)
    if versions is None:
        state._metadata = own  # type: ignore[attr-defined]
    else:
        state._metadata = OrderedDict((prefix, {"version": v}) for prefix, v in versions.items())  # type: ignore[attr-defined]
    return state


def _layer(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0] or tensor_name


def check_fit(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """One-line error naming the first layer (in model order) whose tensors do not fit."""
    expected = model.state_dict()
    for name, value in expected.items():
        if name not in tensors:
            raise PolarpruneError(f"{source}: layer {_layer(name)!r} does not fit: tensor {name!r} is missing from the file")
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise PolarpruneError(f"{source}: layer {_layer(name)!r} does not fit: tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)} in the file, the model expects {tuple(value.shape)}")
    for name in tensors:
        if name not in expected:
            raise PolarpruneError(f"{source}: layer {_layer(name)!r} does not fit: the file has tensor {name!r}, the model does not")


def fill_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str, versions: dict[str, int] | None = None) -> None:
    """Check that ``tensors`` fit ``model`` exactly (one-line error) and load them."""
    check_fit(model, tensors, source)
    try:
        model.load_state_dict(_with_versions(tensors, versions, model), strict=True)
    except (RuntimeError, ValueError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise PolarpruneError(f"{source}: weights do not fit the architecture: {(lines or ['?'])[-1][:200]}") from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict read from a file into ``model``; one-line error naming the first misfit."""
    fill_weights(model, state, source, _state_versions(state) or None)


def _json(value: Any, what: str, path: str | Path) -> str:
    """JSON text in insertion order: the plan lists layers in model order (errors name the first)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise PolarpruneError(f"{path}: {what} is not JSON-serializable: {exc}") from None


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Write any ``model`` (weights, buffers, spec with plan) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    target = Path(path)
    spec = _check_spec(instance_spec(model), str(target))
    state = model.state_dict()
    metadata = {"format": FORMAT, "polarprune_version": __version__, "spec": _json(spec, "the model spec", target),
                "versions": _json(_state_versions(state), "the state-dict versions", target),
                "extra": _json(extra or {}, "the extra metadata", target)}
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in state.items()}
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise PolarpruneError(f"{target}: folder {folder} does not exist")
    with atomic_output(target) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata (header only) of a polarprune file; a one-line error for a missing, foreign or truncated one."""
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise PolarpruneError(f"{source}: no such file")
    try:
        with safe_open(str(source), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"{source}: not a polarprune model file (unreadable safetensors: {first})") from None
    if raw.get("format") != FORMAT:
        raise PolarpruneError(f"{source}: not a polarprune model file (metadata 'format' is {raw.get('format')!r})")
    decoded: dict[str, Any] = {"format": FORMAT, "polarprune_version": raw.get("polarprune_version")}
    for key in ("spec", "extra", "versions"):
        if key not in raw and key == "versions":
            decoded[key] = None  # files written before versions were stored
            continue
        try:
            decoded[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError as exc:
            raise PolarpruneError(f"{source}: metadata {key!r} is not valid JSON ({exc.msg})") from None
    versions = decoded["versions"]
    if versions is not None and not (isinstance(versions, dict) and all(isinstance(v, int) for v in versions.values())):
        raise PolarpruneError(f"{source}: metadata 'versions' must map module names to integers")
    _check_spec(decoded["spec"], str(source))
    return decoded


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model spec stored in a polarprune file (architecture, options, plan)."""
    return read_metadata(path)["spec"]


def _read_tensors(source: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(source))
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"{source}: cannot read the tensors ({first})") from None


def _changed_plan(model: nn.Module, plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """``plan`` without the layers that already have their planned shape in ``model``."""
    if not isinstance(plan, dict) or not isinstance(plan.get("modules"), dict):
        return plan
    present = dict(model.named_modules())
    replaced = {entry.get("name") for entry in plan.get("replace") or [] if isinstance(entry, dict)}

    def inside_replaced(name: str) -> bool:
        return any(isinstance(r, str) and (name == r or name.startswith(r + ".")) for r in replaced)

    modules = {name: shape for name, shape in plan["modules"].items()
               if inside_replaced(name) or name not in present or module_shape(present[name]) != shape}
    return {**plan, "modules": modules}


def apply_to_instance(model: nn.Module, spec: dict[str, Any], where: str) -> nn.Module:
    """Turn the caller's unpruned ``model`` into the architecture ``spec`` describes (in place)."""
    if not isinstance(model, nn.Module):
        raise PolarpruneError(f"{where}: model= must be a torch.nn.Module, got {type(model).__name__}")
    apply_plan(model, _changed_plan(model, spec.get("plan")), where)
    return model


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, trust_code: bool = False) -> nn.Module:
    """The model stored at ``path`` (a model file, or a training checkpoint such as ``runs/x/last.pt``), in
    eval mode, never unpickling anything: rebuilt from the spec, or ``model`` (a fresh, unpruned instance of
    the saved architecture) with the plan applied and filled."""
    source = Path(path)
    if source.is_file() and is_checkpoint(source):
        return _load_checkpoint(source, model, trust_code)
    return _load_model_file(source, model, trust_code)


def _load_model_file(source: Path, model: nn.Module | None, trust_code: bool) -> nn.Module:
    """``load`` of a safetensors model file."""
    meta = read_metadata(source)
    spec = meta["spec"]
    if model is None:
        target = build_model(spec, where=str(source), trust_code=trust_code)
    else:
        target = apply_to_instance(model, spec, str(source))
    fill_weights(target, _read_tensors(source), str(source), meta["versions"])
    if model is not None:
        _adopt_spec(model, spec, trust_code)
    return target.eval()


def _adopt_spec(model: nn.Module, spec: dict[str, Any], trust_code: bool) -> None:
    """The caller's instance, loaded from a file, takes the file's spec: a registry spec travels with the
    model (saving again, pruning again); an import path from an untrusted file does not, so that nothing
    later imports it."""
    if spec["name"] is not None and (not is_import_path(spec["name"]) or trust_code):
        model.polarprune_spec = json.loads(json.dumps(spec))  # type: ignore[assignment]
    elif hasattr(model, "polarprune_spec"):
        del model.polarprune_spec  # it described the unpruned instance; save() now describes every layer


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a polarprune training checkpoint; one-line errors for missing/truncated/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise PolarpruneError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolarpruneError(f"checkpoint {path} is truncated or corrupt ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PolarpruneError(f"{path} is not a polarprune training checkpoint")
    return ckpt


def load_model_from_checkpoint(path: str | Path, *, trust_code: bool = False) -> nn.Module:
    """The model stored in a training checkpoint (or a polarprune model file), in eval mode."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_model_file(path, None, trust_code)
    return _load_checkpoint(path, None, trust_code)


def _load_checkpoint(path: Path, model: nn.Module | None, trust_code: bool) -> nn.Module:
    """The model of a training checkpoint: rebuilt from its spec, or ``model`` (a fresh instance of the
    architecture) with the spec's plan applied, then filled with the checkpoint's weights."""
    ckpt = read_checkpoint(path)
    spec = _check_spec(ckpt.get("spec"), str(path))
    if model is None:
        target = build_model(spec, where=str(path), trust_code=trust_code)
    else:
        target = apply_to_instance(model, spec, str(path))
    load_state_strict(target, ckpt["model"], str(path))
    if model is not None:
        _adopt_spec(model, spec, trust_code)
    return target.eval()


def is_checkpoint(path: str | Path) -> bool:
    """True for a training checkpoint (a torch.save zip archive), False for a safetensors model file
    (by suffix) or anything else (which the model-file reader then names)."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return False
    with open(path, "rb") as handle:
        return handle.read(2) == b"PK"  # torch.save files are zip archives


def load_any_model(path: str | Path, *, trust_code: bool = False) -> nn.Module:
    """A model from a training checkpoint (``.pt``) or a pruned/model file (``.safetensors``)."""
    path = Path(path)
    if not path.exists():
        raise PolarpruneError(f"model file not found: {path}")
    return load(path, trust_code=trust_code)


def read_model(source: str | Path, *, num_classes: int = 10, in_channels: int | None = None, trust_code: bool = False) -> nn.Module:
    """What a command's MODEL argument names: a model file or checkpoint, or a model name (a fresh model
    with ``num_classes``/``in_channels``, default the family's); import paths, by name or inside a file,
    need trusted code."""
    text = str(source)
    if os.path.exists(text):
        return load_any_model(text, trust_code=trust_code)
    looks_like_file = os.sep in text or "/" in text or Path(text).suffix in (SAFETENSORS_SUFFIX, ".pt", ".pth", ".ckpt")
    if looks_like_file and not is_import_path(text):
        raise PolarpruneError(f"model file not found: {text}")
    return create(text, num_classes, in_channels=in_channels, trust_code=trust_code).eval()


__all__ = ["FORMAT", "CHECKPOINT_FORMAT", "save", "load", "build_model", "instance_spec",
           "apply_to_instance", "check_fit", "fill_weights", "read_spec", "read_metadata", "model_spec",
           "load_state_strict", "same_architecture", "read_checkpoint", "load_model_from_checkpoint", "load_any_model", "read_model"]
