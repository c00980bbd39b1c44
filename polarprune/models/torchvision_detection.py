"""torchvision's detection and segmentation models as families (built with no weights, no download).

Detection (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite, Mask R-CNN, Keypoint R-CNN) takes a *list*
of 3xHxW images and post-processes its heads' outputs with steps that are not traceable for
channel grouping (anchor decoding, top-k, NMS, RoI pooling). Pruning therefore traces a raw form of
the model: the transformed image batch through the backbone (with its FPN or extra layers), whose
feature maps are its outputs. What stays whole follows from that:

- every feature map the backbone returns is a model output of the traced form, so its channels stay
  (the FPN's output convs, SSD's feature layers): the heads read exactly the channels they read before;
- the heads (RPN, RoI box/mask/keypoint heads, RetinaNet/FCOS/SSD heads) are not traced and stay
  whole: they read only the kept feature maps, and their own inner channels have no BatchNorm in
  torchvision's v1 models (FCOS uses GroupNorm; SSDlite's depth-wise head convs are tied one to one
  to the feature maps); their outputs (classes, box coordinates, anchors per location, masks,
  keypoints) are therefore unchanged;
- what is pruned: the backbone body (ResNet bottlenecks, MobileNetV3 blocks, SSDlite's extra
  blocks), including the widths the FPN's lateral convs read.

Segmentation (DeepLabV3, FCN, LRASPP) takes a 4-D batch and returns a dict of maps; it is traced
as it is, and its classifiers' output convs stay whole (they reach the output).

With pretrained weights torchvision builds detectors with ``FrozenBatchNorm2d``: ``prepare`` turns
each into an ordinary (eval) BatchNorm for the analysis and surgery and ``finish`` turns it back, so
they are pruned like BatchNorms. Why tracing the whole detector fails: Torch-Pruning's index
mapping through the post-processing's reshapes and flattens (every channel becomes a list of
anchors x positions indices) grows without bound; measured, 4.4 GB after 80 s and growing.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import detection, segmentation
from torchvision.models.detection.ssd import SSD
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import PolarpruneError
from .entry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, add, get_entry

DETECTION_SIDE = 160  # default image side of the detection entries (transform's min_size = max_size)
SEGMENTATION_SIDE = 128
DETECTORS = (detection.FasterRCNN, detection.RetinaNet, detection.FCOS, SSD)
SEGMENTERS = (segmentation.DeepLabV3, segmentation.FCN, segmentation.LRASPP)
DETECTION_OUTPUTS = ("backbone feature maps (traced form)", "boxes", "scores", "labels")
DETECTION_KEPT = (
    "every feature map the backbone returns (FPN outputs, SSD feature layers): the heads read them",
    "the heads (RPN, RoI box/mask/keypoint heads, RetinaNet/FCOS/SSD heads), not traced: their outputs are the classes, "
    "box coordinates and anchors per location, and their inner channels have no BatchNorm (FCOS: GroupNorm; SSDlite: "
    "depth-wise convs tied to the feature maps)",
)
SEGMENTATION_KEPT = ("the classifiers' output convs (the classes): they reach the output",)

# name -> (class, what its final outputs add, whether the transform's size is an option)
DETECTION_NAMES: dict[str, tuple[type[nn.Module], tuple[str, ...], bool]] = {
    "fasterrcnn_mobilenet_v3_large_fpn": (detection.FasterRCNN, (), True),
    "fasterrcnn_resnet50_fpn": (detection.FasterRCNN, (), True),
    "retinanet_resnet50_fpn": (detection.RetinaNet, (), True),
    "fcos_resnet50_fpn": (detection.FCOS, (), True),
    "ssd300_vgg16": (SSD, (), False),
    "ssdlite320_mobilenet_v3_large": (SSD, (), False),
    "maskrcnn_resnet50_fpn": (detection.MaskRCNN, ("masks",), True),
    "keypointrcnn_resnet50_fpn": (detection.KeypointRCNN, ("keypoints", "keypoints_scores"), True),
}
# SSD's transform resizes every image to its fixed size
FIXED_SIDES = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320}
SEGMENTATION_NAMES: dict[str, type[nn.Module]] = {
    "deeplabv3_mobilenet_v3_large": segmentation.DeepLabV3,
    "deeplabv3_resnet50": segmentation.DeepLabV3,
    "fcn_resnet50": segmentation.FCN,
    "lraspp_mobilenet_v3_large": segmentation.LRASPP,
}


def build(name: str, num_classes: int, in_channels: int = 3, *, sized: bool = False, **options: Any) -> nn.Module:
    """torchvision's ``name`` with no weights (``weights=None, weights_backbone=None``); a ``sized``
    detector's transform resizes to ``DETECTION_SIDE`` unless ``min_size``/``max_size`` are given."""
    if in_channels != 3:
        raise ValueError(f"torchvision models take 3 input channels, got in_channels={in_channels}")
    if sized:
        options.setdefault("min_size", DETECTION_SIDE)
        options.setdefault("max_size", options["min_size"])
    try:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, **options)
    except TypeError as exc:
        raise ValueError(f"bad option: {exc}") from None


# -- the traced form of a detector ---------------------------------------------------------------

def raw_features(model: nn.Module, batch: Tensor) -> list[Tensor]:
    """The backbone's feature maps (every level) of a transformed image batch."""
    features = model.backbone(batch)
    return list(features.values()) if isinstance(features, dict) else [features]


def _traced_forward(self: nn.Module, batch: Tensor) -> list[Tensor]:
    return raw_features(self, batch)


@functools.lru_cache(maxsize=None)
def traced_class(cls: type) -> type:
    """A subclass of the detector ``cls`` whose forward is ``raw_features`` (only while pruning)."""
    return type(f"Traced{cls.__name__}", (cls,), {"forward": _traced_forward, "untraced_class": cls})


class ThawedBatchNorm2d(nn.BatchNorm2d):
    """A ``FrozenBatchNorm2d`` as an eval BatchNorm while polarprune prunes (same computation)."""


def _replace_modules(model: nn.Module, kind: type, convert: Any) -> list[str]:
    """Replace every module of exactly type ``kind`` by ``convert(module)``; their names."""
    names = [name for name, module in model.named_modules() if type(module) is kind and name]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, convert(owner.get_submodule(child)))
    return names


def _thaw(frozen: FrozenBatchNorm2d) -> ThawedBatchNorm2d:
    bn = ThawedBatchNorm2d(frozen.weight.numel(), eps=frozen.eps).eval()
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, key).copy_(getattr(frozen, key))
    return bn


def _freeze(bn: ThawedBatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(bn, key).detach())
    return frozen


def detector_prepare(model: nn.Module, example_inputs: object = None) -> list[str]:
    """Pruning adapter: the traced form (``raw_features``), FrozenBatchNorm2d as eval BatchNorms."""
    model.__class__ = traced_class(type(model))
    return ["forward"] + _replace_modules(model, FrozenBatchNorm2d, _thaw)


def detector_finish(model: nn.Module) -> None:
    """Undo ``detector_prepare``: the detector's own forward and its FrozenBatchNorm2d (as pruned)."""
    untraced = getattr(type(model), "untraced_class", None)
    if untraced is not None:
        model.__class__ = untraced
    _replace_modules(model, ThawedBatchNorm2d, _freeze)


def detector_images(model: nn.Module, example_inputs: Any) -> list[Tensor]:
    """The example inputs as the list of 3xHxW images a torchvision detector takes; one line otherwise."""
    value = example_inputs
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]  # the positional-arguments form: (images,)
    expected = f"{detector_name(model)} takes a list of 3xHxW image tensors (torchvision detection)"
    if isinstance(value, Tensor):
        raise PolarpruneError(f"{expected}, got one tensor of shape {tuple(value.shape)}; pass list(batch)")
    if not isinstance(value, (list, tuple)) or not value:
        raise PolarpruneError(f"{expected}, got {type(value).__name__}")
    for image in value:
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise PolarpruneError(f"{expected}, got an item {got}")
    return list(value)


def detector_name(model: nn.Module) -> str:
    """The detector's class name without the traced form's prefix."""
    return getattr(type(model), "untraced_class", type(model)).__name__


def detector_batch(model: nn.Module, example_inputs: Any) -> Tensor:
    """A detector's traced input: its transform's normalised, resized and padded batch of the images."""
    images = detector_images(model, example_inputs)
    with torch.no_grad():
        return model.transform(images)[0].tensors


def detector_example(model: nn.Module, side: int) -> list[Tensor]:
    """Two random 3 x side x side images (the form a detector takes)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, side, side, generator=generator) for _ in range(2)]


# -- exporting what was pruned ---------------------------------------------------------------------

def tensors_of(value: Any) -> Iterator[Tensor]:
    """Every tensor in a model output (tensors, lists, tuples, dicts), in order."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_of(item)


class FlatOutputs(nn.Module):
    """``module``'s outputs flattened per image and concatenated: one tensor (N, total), for export."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([t.flatten(1) for t in tensors_of(self.module(x))], dim=1)


def exportable_part(model: nn.Module) -> nn.Module:
    """The part of a detection or segmentation model that pruning changed, as a one-tensor module: a
    detector's backbone (it takes the transformed batch), a segmenter whole."""
    return FlatOutputs(model.backbone if isinstance(model, DETECTORS) else model)


DETECTOR_EXPORT_NOTE = ("exported the detector's pruned part, its backbone with the FPN or feature layers (input: the "
                        "transformed batch; output: the feature maps, flattened and concatenated); torchvision's transform, "
                        "heads and post-processing are unchanged by pruning and not in the file (docs/pruning.md shows the "
                        "whole detector's export)")
SEGMENTER_EXPORT_NOTE = "exported the whole segmenter, its outputs ('out', and 'aux' when built) flattened and concatenated"


# -- the entries -----------------------------------------------------------------------------------

def _detection_entry(name: str, cls: type[nn.Module], extra: tuple[str, ...], sized: bool) -> ModelEntry:
    return ModelEntry(
        name, functools.partial(build, name, sized=sized), family="torchvision_detection", task="detection",
        input_size=FIXED_SIDES.get(name, DETECTION_SIDE), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=91,
        classes=(cls,), prepare_for_pruning=detector_prepare, finish_pruning=detector_finish,
        example_input=detector_example, inputs_for_trace=detector_batch, outputs=DETECTION_OUTPUTS + extra,
        kept_whole=DETECTION_KEPT, for_export=exportable_part, export_note=DETECTOR_EXPORT_NOTE)


def _segmentation_entry(name: str, cls: type[nn.Module]) -> ModelEntry:
    return ModelEntry(name, functools.partial(build, name), family="torchvision_segmentation", task="segmentation",
                      input_size=SEGMENTATION_SIDE, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=21, classes=(cls,),
                      outputs=("out", "aux (when built with aux_loss=True)"), kept_whole=SEGMENTATION_KEPT,
                      for_export=exportable_part, export_note=SEGMENTER_EXPORT_NOTE)


for _name, (_cls, _extra, _sized) in DETECTION_NAMES.items():
    add(_detection_entry(_name, _cls, _extra, _sized))
for _name, _seg_cls in SEGMENTATION_NAMES.items():
    add(_segmentation_entry(_name, _seg_cls))


def entries(task: str | None = None) -> list[ModelEntry]:
    """The detection and segmentation entries of this module (of one ``task`` when given)."""
    found = [get_entry(name) for name in (*DETECTION_NAMES, *SEGMENTATION_NAMES)]
    return [e for e in found if e is not None and (task is None or e.task == task)]


__all__ = ["DETECTION_NAMES", "SEGMENTATION_NAMES", "DETECTION_SIDE", "SEGMENTATION_SIDE", "DETECTORS", "SEGMENTERS",
           "build", "raw_features", "traced_class", "detector_prepare", "detector_finish", "detector_images",
           "detector_batch", "detector_example", "FlatOutputs", "exportable_part", "tensors_of", "entries",
           "ThawedBatchNorm2d"]
