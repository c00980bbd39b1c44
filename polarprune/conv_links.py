"""Direct links between BatchNorms and the conv/linear layers around them (the original code's view).

Both original code bases see a BN through its *direct* neighbours: the conv producing its input and
the convs reading its output through channel-wise operations only. A BN reaching a layer only through
a residual addition has no direct reader: the original prunes its producer's outputs and scatters the
kept channels back to full width before the addition. Used by the original FLOPs weighting
(``sparsity/flops_weighting.py``) and the original accounting (``pruning/scatter.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import PolarpruneError

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES = (*CONV_TYPES, nn.Linear)
BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
# operations that keep channel c of their input in channel c of their output, alone
CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
)
CHANNELWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.silu, F.hardswish, F.gelu, torch.sigmoid, torch.tanh,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.dropout, torch.flatten,
}
CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "flatten", "contiguous"}


@dataclass(frozen=True)
class LayerShape:
    """One conv or linear layer: its widths, groups and per-image MACs in the traced model."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    groups: int
    macs: int

    @property
    def depthwise(self) -> bool:
        """Every conv group has one input channel (input and output widths move together)."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def macs_per_channel(self, side: str) -> float:
        """MACs one input (``side="in"``, the original's ``d_flops_in``) or output channel (``"out"``,
        ``d_flops_out``) costs."""
        return self.macs / max(1, self.in_channels if side == "in" else self.out_channels)


@dataclass
class ConvLinks:
    """Per BN: the layer producing its input and the layers reading its output directly."""

    layers: dict[str, LayerShape]
    producer: dict[str, str] = field(default_factory=dict)
    readers: dict[str, list[str]] = field(default_factory=dict)
    bn_channels: dict[str, int] = field(default_factory=dict)

    def reads(self) -> dict[str, str]:
        """Layer -> the BN whose output it reads directly."""
        return {layer: bn for bn, layers in self.readers.items() for layer in layers}

    def writes(self) -> dict[str, str]:
        """Layer -> the BN that normalises its output."""
        return {layer: bn for bn, layer in self.producer.items()}

    def direct_channel_macs(self, bn: str) -> float:
        """MACs one channel of ``bn`` costs in the original's view: its producer's per-output-channel
        MACs plus every direct reader's per-input-channel MACs."""
        cost = self.layers[self.producer[bn]].macs_per_channel("out") if bn in self.producer else 0.0
        return sum((self.layers[layer].macs_per_channel("in") for layer in self.readers.get(bn, ())), cost)

    def scatter_macs(self, kept: Mapping[str, int], emptied: Iterable[str] = ()) -> int:
        """MACs when every BN in ``kept`` keeps that many channels and each layer shrinks only on
        the sides directly linked to a BN (the original accounting); layers in ``emptied`` (the
        branches of removed blocks) cost nothing. BNs not in ``kept`` keep every channel."""
        gone = set(emptied)
        reads, writes = self.reads(), self.writes()
        total = 0.0
        for name, shape in self.layers.items():
            if name not in gone:
                fraction_in = _fraction(kept, self.bn_channels, reads.get(name))
                fraction_out = _fraction(kept, self.bn_channels, writes.get(name))
                total += shape.macs * min(fraction_in, fraction_out) if shape.depthwise else shape.macs * fraction_in * fraction_out
        return int(round(total))


def _fraction(kept: Mapping[str, int], channels: Mapping[str, int], bn: str | None) -> float:
    if bn is None or bn not in kept:
        return 1.0
    return int(kept[bn]) / max(1, channels[bn])


class _LeafTracer(fx.Tracer):
    """Traces through containers; every module without children is one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:  # noqa: D102
        return next(iter(m.children()), None) is None or super().is_leaf_module(m, module_qualified_name)


def _is_channelwise(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), CHANNELWISE_MODULES)
    return node.target in {"call_function": CHANNELWISE_FUNCTIONS, "call_method": CHANNELWISE_METHODS}.get(node.op, ())


def _source_bn(node: Any, modules: Mapping[str, nn.Module]) -> str | None:
    """The BN whose output reaches ``node`` through channel-wise operations only, or None."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), BN_TYPES):
            return str(node.target)
        if not _is_channelwise(node, modules) or not node.args:
            return None
        node = node.args[0]
    return None


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError on control flow, ...)
        raise PolarpruneError(f"the original accounting needs a model torch.fx can trace; {type(model).__name__}: {exc}") from None


def conv_links(model: nn.Module, layers: Mapping[str, LayerShape]) -> ConvLinks:
    """The direct BN <-> conv/linear links of ``model``, with its layers' widths and per-image MACs
    ``layers`` as the one pruning analysis measured them (``ModelAnalysis.layer_shapes()``)."""
    graph = _trace(model)
    modules = dict(model.named_modules())
    links = ConvLinks(layers=dict(layers))
    links.bn_channels = {name: int(m.num_features) for name, m in modules.items() if isinstance(m, BN_TYPES)}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        name = str(node.target)
        module = modules.get(name)
        if isinstance(module, LAYER_TYPES) and name in links.layers:
            source = _source_bn(node.args[0] if node.args else None, modules)
            if source is not None:
                links.readers.setdefault(source, []).append(name)
        elif isinstance(module, BN_TYPES) and node.args:
            feeder = node.args[0]
            while isinstance(feeder, fx.Node) and feeder.op == "call_method" and feeder.target == "contiguous":
                feeder = feeder.args[0]
            if (isinstance(feeder, fx.Node) and feeder.op == "call_module" and isinstance(modules.get(str(feeder.target)), LAYER_TYPES)
                    and len(feeder.users) == 1):
                links.producer[name] = str(feeder.target)
    return links


__all__ = ["ConvLinks", "LayerShape", "conv_links"]
