"""ultralytics YOLOv8 and YOLO11 detect and segment models, built from their YAML files.

Optional extra ``ultralytics`` (AGPL-3.0): ``pip install 'polarprune[ultralytics]'``. Nothing is
downloaded: ``create("yolov8n")`` builds ``DetectionModel("yolov8n.yaml")`` with random weights
(``create("yolo11s-seg")`` a ``SegmentationModel``); ``num_classes`` defaults to 80 (COCO). A model
built by ``YOLO("yolov8n.yaml").model`` is recognised by its class and pruned the same way.

Input: a float tensor ``(N, 3, H, W)``, H and W multiples of 32 (the largest stride); 640 is the
family's default size. What pruning keeps and why:

- outputs: the head's decoded predictions (boxes and class scores; for ``-seg`` also the mask
  coefficients and the mask prototypes). The head's raw per-level feature maps (``feats``) are
  inputs of the head, not outputs to preserve: while the analysis runs the head is in export mode,
  so the neck's last layers can be pruned;
- the head's final convs (classes, 4 x 16 DFL box bins, mask coefficients) and the prototype
  conv reach the model output: their channels stay;
- C2f / C3k2 / C2PSA split their first conv's output in two (``chunk``/``split``). For the
  analysis each such conv becomes two convs (the same computation), so the two halves are pruned
  independently; afterwards they are joined again and the block splits by the widths its layers
  now have (``Split*`` classes below, which also load pruned files into fresh instances);
- the attention in C2PSA is kept whole: it reshapes its qkv channels into heads of fixed size,
  which removing single channels would break. The feed-forward convs around it are pruned.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PolarpruneError, require_extra
from .entry import ModelEntry, add, add_loader, register

FAMILY = "ultralytics"
STRIDE = 32  # the largest stride of every YOLOv8 / YOLO11 model: H and W must be its multiples
SCALES = "nsmlx"  # the tests cover n and s
NAMES = tuple(f"{base}{scale}{task}" for base in ("yolov8", "yolo11") for scale in SCALES for task in ("", "-seg"))
ATTENTION_REASON = "its qkv channels are reshaped into heads of fixed size; kept whole"


def _ultralytics() -> Any:
    return require_extra("ultralytics", FAMILY, "a YOLO model")


def build_yolo(name: str, num_classes: int = 80, in_channels: int = 3, **options: Any) -> nn.Module:
    """The YOLO model of ``name`` (e.g. ``"yolo11n-seg"``) from its YAML file, random weights, eval mode."""
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel, yaml_model_load

    if options:
        raise ValueError(f"{name} takes no options, got {sorted(options)}")
    cls = SegmentationModel if name.endswith("-seg") else DetectionModel
    cfg = {**yaml_model_load(f"{name}.yaml"), "nc": num_classes}  # set here: ultralytics logs an override of nc=
    model = cls(cfg, ch=in_channels, nc=None, verbose=False)
    split_by_width(model)
    return model.eval()


# ---- the split blocks: the same computation, with split sizes read from the layers ---------------

def _second_width(block: nn.Module) -> int:
    """Width of the split's second part: what the first inner block (``m[0]``) takes."""
    first = next(m for m in block.m[0].modules() if isinstance(m, nn.Conv2d))
    return int(first.in_channels)


def _split(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``cv1(x)`` cut in two: the second part as wide as ``m[0]``'s input (equal halves unpruned)."""
    y = block.cv1(x)
    second = _second_width(block)
    a, b = y.split((y.shape[1] - second, second), 1)
    return a, b


def _c2f_forward(self: nn.Module, x: Tensor) -> Tensor:
    """C2f / C3k2: ``cv2(cat(a, b, m0(b), m1(m0(b)), ...))`` with ``a, b`` from ``_split``."""
    y = list(_split(self, x))
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _c2psa_forward(self: nn.Module, x: Tensor) -> Tensor:
    """C2PSA: ``cv2(cat(a, m(b)))`` with ``a, b`` from ``_split``."""
    a, b = _split(self, x)
    return self.cv2(torch.cat((a, self.m(b)), 1))


def _two_conv_c2f_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The analysis form of C2f / C3k2: the two halves come from two convs."""
    y = [self.cv1a(x), self.cv1b(x)]
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _two_conv_c2psa_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The analysis form of C2PSA."""
    return self.cv2(torch.cat((self.cv1a(x), self.m(self.cv1b(x))), 1))


@functools.lru_cache(maxsize=None)
def _variants() -> dict[type, tuple[type, type]]:
    """ultralytics block class -> (its split-by-width class, its two-conv analysis class)."""
    from ultralytics.nn.modules.block import C2PSA, C2f, C3k2

    made: dict[type, tuple[type, type]] = {}
    for base, forward, analysis in ((C2f, _c2f_forward, _two_conv_c2f_forward), (C3k2, _c2f_forward, _two_conv_c2f_forward),
                                    (C2PSA, _c2psa_forward, _two_conv_c2psa_forward)):
        split = type(f"Split{base.__name__}", (base,), {"forward": forward, "forward_split": forward, "__module__": __name__})
        two = type(f"TwoConv{base.__name__}", (base,), {"forward": analysis, "__module__": __name__})
        made[base] = (split, two)
    return made


def __getattr__(name: str) -> type:
    """The made classes by name (``SplitC2f``, ``TwoConvC3k2``, ...), so that pickle finds them: ultralytics'
    own checkpoints of a pruned model (``torch.save`` of the module) name these classes."""
    for forms in _variants().values():
        for cls in forms:
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _kind(module: nn.Module) -> type | None:
    """The ultralytics block class ``module`` is (plain, split or analysis form), else None."""
    for base, forms in _variants().items():
        if type(module) is base or type(module) in forms:
            return base
    return None


def split_by_width(model: nn.Module) -> list[str]:
    """Every C2f / C3k2 / C2PSA becomes its ``Split*`` form (same outputs); a fresh instance then takes any plan."""
    changed = []
    for name, module in model.named_modules():
        base = _kind(module)
        if base is not None and type(module) is base:
            module.__class__ = _variants()[base][0]
            changed.append(name)
    return changed


# ---- conv halves: ultralytics' Conv is conv + bn + act ---------------------------------------------

def _rows(conv_block: nn.Module, rows: slice) -> nn.Module:
    """An ultralytics ``Conv`` computing only output channels ``rows`` of ``conv_block``. Its tensors are
    views of the block's (shared storage): a trial analysis reads the live weights and gammas."""
    part = copy.deepcopy(conv_block)
    conv, source = part.conv, conv_block.conv
    conv.weight = nn.Parameter(source.weight.detach()[rows])
    if source.bias is not None:
        conv.bias = nn.Parameter(source.bias.detach()[rows])
    conv.out_channels = conv.weight.shape[0]
    bn, bn_source = getattr(part, "bn", None), getattr(conv_block, "bn", None)
    if isinstance(bn, nn.BatchNorm2d) and isinstance(bn_source, nn.BatchNorm2d):
        bn.weight, bn.bias = (nn.Parameter(p.detach()[rows]) for p in (bn_source.weight, bn_source.bias))
        bn.running_mean, bn.running_var = bn_source.running_mean[rows], bn_source.running_var[rows]
        bn.num_features = conv.out_channels
    return part


def _joined(first: nn.Module, second: nn.Module) -> nn.Module:
    """One ``Conv`` computing ``first``'s outputs then ``second``'s (the inverse of ``_rows``)."""
    whole = copy.deepcopy(first)
    conv, other = whole.conv, second.conv
    conv.weight = nn.Parameter(torch.cat((conv.weight.detach(), other.weight.detach())))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.cat((conv.bias.detach(), other.bias.detach())))
    conv.out_channels = conv.weight.shape[0]
    bn, bn2 = getattr(whole, "bn", None), getattr(second, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        bn.weight, bn.bias = (nn.Parameter(torch.cat((p.detach(), q.detach()))) for p, q in ((bn.weight, bn2.weight), (bn.bias, bn2.bias)))
        bn.running_mean = torch.cat((bn.running_mean, bn2.running_mean))
        bn.running_var = torch.cat((bn.running_var, bn2.running_var))
        bn.num_features = conv.out_channels
    return whole


def _as_two_convs(block: nn.Module) -> None:
    """The block's ``cv1`` becomes ``cv1a`` and ``cv1b`` (its two parts); the analysis class."""
    second = _second_width(block)
    width = block.cv1.conv.out_channels
    cv1 = block._modules.pop("cv1")
    block.cv1a, block.cv1b = _rows(cv1, slice(0, width - second)), _rows(cv1, slice(width - second, width))
    block.__class__ = _variants()[_kind(block)][1]


def _as_one_conv(block: nn.Module) -> None:
    """Undo ``_as_two_convs`` after surgery: one ``cv1`` again, split by the widths the parts now have."""
    cv1 = _joined(block._modules.pop("cv1a"), block._modules.pop("cv1b"))
    block._modules = {"cv1": cv1, **block._modules}  # state-dict order as built
    block.__class__ = _variants()[_kind(block)][0]


# ---- the pruning adapters --------------------------------------------------------------------------

def check_input(model: nn.Module, example_inputs: Any) -> None:
    """One line naming the expected form when ``example_inputs`` is not an image batch YOLO takes."""
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1 else example_inputs
    channels = int(getattr(model, "yaml", {}).get("channels", 3) or 3)
    ok = isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] == channels and x.shape[2] % STRIDE == 0 and x.shape[3] % STRIDE == 0
    if not ok:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise PolarpruneError(f"a YOLO model takes one float tensor of shape (N, {channels}, H, W) with H and W multiples "
                              f"of {STRIDE} (e.g. (1, {channels}, 640, 640)); got {got}")


def _heads(model: nn.Module) -> list[nn.Module]:
    from ultralytics.nn.modules.head import Detect

    return [m for m in model.modules() if isinstance(m, Detect)]


def prepare(model: nn.Module, example_inputs: Any = None) -> list[str]:
    """Pruning adapter: the heads return only their predictions; split convs become two convs."""
    if example_inputs is not None:
        check_input(model, example_inputs)
    for head in _heads(model):
        head._polarprune_export, head.export = head.export, True
    changed = []
    for name, module in model.named_modules():
        if _kind(module) is not None and hasattr(module, "cv1"):
            _as_two_convs(module)
            changed.append(name)
    return changed


def finish(model: nn.Module) -> None:
    """Undo ``prepare`` (the pruned widths stay)."""
    for head in _heads(model):
        head.export = head.__dict__.pop("_polarprune_export", head.export)
    for module in model.modules():
        if _kind(module) is not None and hasattr(module, "cv1a"):
            _as_one_conv(module)


class _Predictions(nn.Module):
    """A YOLO model whose head returns only its prediction tensors (the export form)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for head in _heads(model):
            head.export = True

    def forward(self, x: Tensor) -> Any:
        return self.model(x)


def for_export(model: nn.Module) -> nn.Module:
    """The module an export writes: ``model`` (the export's own copy) with its head returning only its
    predictions (boxes and scores ``(N, 4 + classes, anchors)``; ``-seg``: also the mask prototypes)."""
    return _Predictions(model)


def _whole_layers() -> tuple[tuple[type[nn.Module], str], ...]:
    if sys.modules.get("ultralytics") is None:  # not imported yet: the class entry adds it later
        return ()
    from ultralytics.nn.modules.block import Attention

    return ((Attention, ATTENTION_REASON),)


def live_name(name: str) -> str:
    """The model's own name of a layer of the analysis form: ``x.cv1a.bn`` and ``x.cv1b.bn`` are ``x.cv1.bn``."""
    return re.sub(r"\.cv1[ab](?=\.|$)", ".cv1", name)


def _adapters(name: str = "") -> dict[str, Any]:
    task = "segmentation" if name.endswith("-seg") else "detection"
    return dict(family=FAMILY, task=task, input_size=640, num_classes=80, prepare_for_pruning=prepare, finish_pruning=finish,
                before_plan=split_by_width, whole_layers=_whole_layers(), for_export=for_export, live_name=live_name)


# ---- the entries -----------------------------------------------------------------------------------

def _register_names() -> None:
    for name in NAMES:
        register(name, functools.partial(build_yolo, name), **_adapters(name))


_CLASSES_DONE: list[bool] = []  # set once the class entry is registered


def _register_classes(subject: object) -> None:
    """Once ultralytics is loaded: its model classes (instances from ``YOLO(...).model``) and the
    attention kept whole (a class the name entries can only name once ultralytics is imported)."""
    if sys.modules.get("ultralytics") is None or _CLASSES_DONE:
        return
    from ultralytics.nn.tasks import DetectionModel

    _CLASSES_DONE.append(True)

    entry = ModelEntry(FAMILY, functools.partial(build_yolo, "yolov8n"), classes=(DetectionModel,), **_adapters())
    add(entry, by_name=False)
    for name in NAMES:
        register(name, functools.partial(build_yolo, name), **_adapters(name))


# ---- back into ultralytics -------------------------------------------------------------------------

def yaml_name(model: nn.Module) -> str:
    """The YAML file a YOLO model was built from (``"yolov8n.yaml"``)."""
    spec = getattr(model, "polarprune_spec", None) or {}
    name = spec.get("name") if isinstance(spec.get("name"), str) else None
    if name is not None and name in NAMES:
        return f"{name}.yaml"
    found = (getattr(model, "yaml", None) or {}).get("yaml_file")
    if not found or not re.fullmatch(r"yolo(v8|11)[nsmlx](-seg)?\.yaml", str(found)):
        raise PolarpruneError(f"{type(model).__name__} is no YOLOv8/YOLO11 detect or segment model built from its YAML file")
    return str(found)


def to_yolo(model: nn.Module) -> Any:
    """An ``ultralytics.YOLO`` whose ``.model`` is ``model`` (e.g. pruned), so its own ``predict``,
    ``val`` and ``export`` run it. The YOLO object's settings are those of the model's YAML file.
    ultralytics' ``predict`` fuses each conv with its BN in place: save the pruned model first."""
    ultralytics = _ultralytics()
    name = yaml_name(model)
    yolo = ultralytics.YOLO(name, task="segment" if name.endswith("-seg.yaml") else "detect")
    for key in ("args", "names"):
        if not hasattr(model, key) or (key == "args" and not getattr(model, key)):
            setattr(model, key, getattr(yolo.model, key))
    model.task = yolo.model.task
    yolo.model = model.eval()
    return yolo


__all__ = ["NAMES", "STRIDE", "build_yolo", "split_by_width", "check_input", "prepare", "finish", "for_export", "to_yolo",
           "yaml_name"]


_register_names()
add_loader(_register_classes)
