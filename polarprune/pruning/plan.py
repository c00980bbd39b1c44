"""The ``plan``: plain JSON data that turns a freshly built model into a pruned architecture.

``model.polarprune_spec["plan"]`` = ``{"version": 1, "replace": [...], "modules": {...}}``:

- ``replace``: structural changes in order, ``{"name": ..., "kind": ...}`` (``placement_shortcut``,
  ``shortcut_block``, ``scatter_block``);
- ``modules``: the new constructor shape of every layer whose shape differs from the unpruned one.

Plans compare against the unpruned architecture, so pruning a pruned model again yields a plan from
scratch (plans compose). Applying one creates uninitialised parameters; weights come from the state dict.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import PolarpruneError
from .graph import BN_TYPES, CONV_TYPES
from ..models import entry_for
from ..models.entry import pruning_entry
from ..models.expand import ChannelScatter
from .modules import ChannelPlacementShortcut, ChannelShift, ShortcutOnlyBlock, set_module

PLAN_VERSION = 1
PLACEMENT_SHORTCUT = "placement_shortcut"
SHORTCUT_BLOCK = "shortcut_block"
SCATTER_BLOCK = "scatter_block"  # residual: scatter (a block whose output is scattered back; the family's scatter_block)


FROZEN_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def frozen_bn_width(module: nn.Module) -> int | None:
    """The width of a frozen BatchNorm (torchvision's ``FrozenBatchNorm2d``: no parameters, its affine
    and statistics as four 1-D buffers of one length); None for any other layer."""
    buffers = dict(module.named_buffers(recurse=False))
    if next(module.parameters(recurse=False), None) is not None or set(buffers) != set(FROZEN_BN_BUFFERS):
        return None
    sizes = {tuple(b.shape) for b in buffers.values()}
    return sizes.pop()[0] if len(sizes) == 1 and len(next(iter(sizes))) == 1 else None


def module_shape(module: nn.Module) -> dict[str, Any] | None:
    """The shape description of a layer the surgery can change, or None."""
    kind = type(module).__name__
    frozen = frozen_bn_width(module)
    if frozen is not None:
        return {"type": kind, "num_features": frozen}
    if isinstance(module, CONV_TYPES):
        return {"type": kind, "in_channels": module.in_channels, "out_channels": module.out_channels,
                "groups": module.groups, "bias": module.bias is not None}
    if isinstance(module, BN_TYPES):
        return {"type": kind, "num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"type": kind, "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, ChannelPlacementShortcut):
        return {"type": kind, "stride": module.stride, "in_channels": module.in_channels, "out_channels": module.out_channels}
    if isinstance(module, ChannelShift):
        return {"type": kind, "num_channels": module.num_channels}
    if isinstance(module, ChannelScatter):
        return {"type": kind, "in_channels": module.in_channels, "out_channels": module.out_channels}
    return None


LayerView = Mapping[str, tuple[type, "dict[str, Any] | None"]]
_CHANGED = {"type": "changed by an earlier plan"}  # a shape that equals no real one


def layer_view(model: nn.Module) -> dict[str, tuple[type, dict[str, Any] | None]]:
    """Per qualified name: the layer's class and shape (what plans compare)."""
    return {name: (type(module), module_shape(module)) for name, module in model.named_modules()}


def unpruned_view(model: nn.Module, plan: Mapping[str, Any] | None) -> dict[str, tuple[type, dict[str, Any] | None]]:
    """The unpruned architecture as seen from ``model`` and the plan that made it (planned layers count as changed)."""
    view = layer_view(model)
    if plan:
        for name in plan.get("modules", {}):
            if name in view:
                view[name] = (view[name][0], _CHANGED)
        for entry in plan.get("replace", []):
            if entry.get("name") in view:
                view[entry["name"]] = (object, _CHANGED)
    return view


def make_plan(pruned: nn.Module, base: nn.Module | LayerView) -> dict[str, Any]:
    """The plan that turns ``base`` (the unpruned architecture, or its ``unpruned_view``) into ``pruned``'s."""
    base_view = layer_view(base) if isinstance(base, nn.Module) else base
    replace = []
    modules: dict[str, dict[str, Any]] = {}
    for name, module in pruned.named_modules():
        base_type, base_shape = base_view.get(name, (None, None))
        if isinstance(getattr(module, "scatter", None), ChannelScatter) and f"{name}.scatter" not in base_view:
            replace.append({"name": name, "kind": SCATTER_BLOCK})
        for cls, kind in ((ShortcutOnlyBlock, SHORTCUT_BLOCK), (ChannelPlacementShortcut, PLACEMENT_SHORTCUT)):
            if isinstance(module, cls) and not (isinstance(base_type, type) and issubclass(base_type, cls)):
                replace.append({"name": name, "kind": kind})
        shape = module_shape(module)
        if shape is not None and (name not in base_view or base_shape != shape):
            modules[name] = shape
    return {"version": PLAN_VERSION, "replace": replace, "modules": modules}


def _empty(*shape: int, like: torch.Tensor | None = None) -> torch.Tensor:
    kwargs = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    return torch.zeros(*shape, **kwargs)


def _get(model: nn.Module, name: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise PolarpruneError(f"{where}: the plan names layer {name!r}, which the architecture does not have") from None


def _int(entry: dict[str, Any], key: str, name: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PolarpruneError(f"{where}: plan entry {name!r} needs a nonnegative integer {key!r}, got {value!r}")
    return value


def resize_module(module: nn.Module, shape: dict[str, Any], name: str, where: str = "plan") -> None:
    """Give ``module`` the shape ``shape`` (new uninitialised parameters and buffers)."""
    kind = shape.get("type")
    if kind != type(module).__name__:
        raise PolarpruneError(f"{where}: plan entry {name!r} is a {kind}, the layer is a {type(module).__name__}")
    if frozen_bn_width(module) is not None:
        n = _int(shape, "num_features", name, where)
        for key in FROZEN_BN_BUFFERS:
            setattr(module, key, (torch.ones if key == "running_var" else torch.zeros)(n, dtype=getattr(module, key).dtype))
    elif isinstance(module, CONV_TYPES):
        cin, cout, groups = (_int(shape, k, name, where) for k in ("in_channels", "out_channels", "groups"))
        if groups < 1 or cin % groups or cout % groups:
            raise PolarpruneError(f"{where}: plan entry {name!r}: channels {cin}->{cout} do not divide into {groups} groups")
        module.in_channels, module.out_channels, module.groups = cin, cout, groups
        module.weight = nn.Parameter(_empty(cout, cin // groups, *module.kernel_size, like=module.weight))
        module.bias = nn.Parameter(_empty(cout, like=module.weight)) if shape.get("bias") else None
    elif isinstance(module, BN_TYPES):
        module.num_features = n = _int(shape, "num_features", name, where)
        if module.affine:
            module.weight = nn.Parameter(_empty(n, like=module.weight))
            module.bias = nn.Parameter(_empty(n, like=module.bias))
        if module.running_mean is not None:
            module.running_mean = _empty(n, like=module.running_mean)
            module.running_var = torch.ones_like(module.running_mean)
    elif isinstance(module, nn.Linear):
        fin, fout = _int(shape, "in_features", name, where), _int(shape, "out_features", name, where)
        module.in_features, module.out_features = fin, fout
        module.weight = nn.Parameter(_empty(fout, fin, like=module.weight))
        module.bias = nn.Parameter(_empty(fout, like=module.weight)) if shape.get("bias") else None
    elif isinstance(module, ChannelPlacementShortcut):
        cin, cout = _int(shape, "in_channels", name, where), _int(shape, "out_channels", name, where)
        module.stride = _int(shape, "stride", name, where)
        module.in_channels, module.out_channels = cin, cout
        module.placement = torch.full((cin,), -1, dtype=torch.long)
        module.fill = _empty(cout, like=module.fill)
    elif isinstance(module, ChannelShift):
        module.num_channels = n = _int(shape, "num_channels", name, where)
        module.shift = nn.Parameter(_empty(n, like=module.shift))


def _replace(model: nn.Module, entry: dict[str, Any], plan_modules: dict[str, Any], where: str) -> None:
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str):
        raise PolarpruneError(f"{where}: plan replacement without a layer name: {entry!r}")
    old = _get(model, name, where)
    if kind == PLACEMENT_SHORTCUT:
        shape = plan_modules.get(name)
        if not isinstance(shape, dict) or list(old.parameters()):
            raise PolarpruneError(f"{where}: plan replacement {name!r}: expected a parameter-free shortcut with a shape entry")
        cin = _int(shape, "in_channels", name, where)
        new: nn.Module = ChannelPlacementShortcut(_int(shape, "stride", name, where), cin, _int(shape, "out_channels", name, where), [-1] * cin)
    elif kind == SHORTCUT_BLOCK:
        shape = plan_modules.get(f"{name}.shift")
        if not isinstance(shape, dict):
            raise PolarpruneError(f"{where}: plan replacement {name!r}: missing the shape of {name}.shift")
        new = ShortcutOnlyBlock(getattr(old, "downsample", None), _int(shape, "num_channels", name, where))
    elif kind == SCATTER_BLOCK:
        shape = plan_modules.get(f"{name}.scatter")
        family = entry_for(model)
        if not isinstance(shape, dict) or family is None or family.scatter_block is None:
            raise PolarpruneError(f"{where}: plan replacement {name!r}: needs the shape of {name}.scatter and a model family with a scatter_block")
        width = _int(shape, "out_channels", name, where)
        new = family.scatter_block(old, range(min(_int(shape, "in_channels", name, where), width)), width)  # positions: from the state dict
    else:
        raise PolarpruneError(f"{where}: plan replacement {name!r} has unknown kind {kind!r}")
    set_module(model, name, new)


def apply_plan(model: nn.Module, plan: dict[str, Any] | None, where: str = "plan") -> nn.Module:
    """Turn a freshly built model into the planned architecture (in place; returns it)."""
    if not plan:
        return model
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise PolarpruneError(f"{where}: unsupported plan (version {plan.get('version') if isinstance(plan, dict) else plan!r})")
    modules = plan.get("modules", {})
    replace = plan.get("replace", [])
    if not isinstance(modules, dict) or not isinstance(replace, list):
        raise PolarpruneError(f"{where}: the plan's 'modules' must be a mapping and 'replace' a list")
    pruning_entry(model).plan_ready(model)
    for entry in replace:
        if not isinstance(entry, dict):
            raise PolarpruneError(f"{where}: bad plan replacement {entry!r}")
        _replace(model, entry, modules, where)
    for name, shape in modules.items():
        if not isinstance(shape, dict):
            raise PolarpruneError(f"{where}: plan entry {name!r} must be a mapping")
        resize_module(_get(model, name, where), shape, name, where)
    return model


__all__ = ["PLAN_VERSION", "make_plan", "apply_plan", "module_shape", "resize_module", "layer_view", "unpruned_view"]
