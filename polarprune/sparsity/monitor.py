"""What a sparsity run would prune right now: a fast channel cost model, trial prunes, gamma monitoring.

Trial pruning every epoch must be cheap (< 1 s on ResNet-56), so it does not rebuild the
pruning dependency graph: ``ChannelCostModel`` learns once, from a few probe forward passes
on one example image, which conv/linear layers read and write every BN channel, and then prices
any set of keep masks with plain arithmetic.

How the probes work. Pass 0 records every conv/linear layer (MACs, widths, groups) and which of
them produces each BN's input. Then, for each *source* BN, one pass where every (non-depthwise)
conv and linear outputs zeros, every other BN is the identity, and the source BN outputs a tag
``(c+1)/(C+1)`` on its channel ``c``. The tags travel through everything that keeps channels
apart (ReLU/ReLU6, pooling, residual additions, channel padding, concatenation, flatten,
depthwise convs) and arrive at the inputs of the conv/linear layers that consume them: input
channel ``j`` of layer ``L`` reads channel ``c`` of the source. A second pass with reversed
tags confirms each decoded channel (an input scaled on the way, e.g. by a squeeze-excitation
gate, fails to decode and is counted as always kept).

From that map: the MACs one channel of a BN costs (producer conv per output channel plus every
consumer per input channel: the FLOPs weights of the regularizer), and the MACs/params left by a
set of keep masks (an input channel of a layer survives when any of its sources keeps it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..training.hooks import TrainHook
from ..modes import inference

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
TAG_TOLERANCE = 1e-3
SMALL_GAMMA = 0.01


def bn_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every affine BatchNorm of ``model`` by module name, in definition order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    }


def gamma_scores(model: nn.Module, bn_names: Sequence[str]) -> dict[str, Tensor]:
    """``|gamma|`` of each named BN (float32, CPU, detached): the scores of the BN strategies."""
    return {name: model.get_submodule(name).weight.detach().abs().float().cpu() for name in bn_names}


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every group is one input channel to a fixed number of output channels."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.groups > 1
        and module.groups == module.in_channels
        and module.out_channels == module.in_channels
    )


def channel_tags(num_channels: int, reverse: bool = False) -> Tensor:
    """Probe values ``(c+1)/(C+1)`` (or ``(C-c)/(C+1)`` reversed), all in (0, 1)."""
    c = torch.arange(num_channels, dtype=torch.float32)
    return ((num_channels - c) if reverse else (c + 1)) / (num_channels + 1)


def decode_tags(values: Tensor, num_channels: int, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Decode per-channel probe values ``values`` (channels x positions) back to source channels.

    Returns ``(source_channel, state)``: ``state`` is 0 where the channel carries nothing, 1
    where it decodes to a source channel, -1 where it carries something that is not a tag.
    """
    first = values[:, 0]
    touched = values.abs().amax(dim=1) > 0
    constant = (values - first[:, None]).abs().amax(dim=1) <= 1e-6
    code = first * (num_channels + 1)
    rounded = torch.round(code)
    channel = (num_channels - rounded) if reverse else (rounded - 1)
    ok = touched & constant & ((code - rounded).abs() < TAG_TOLERANCE) & (channel >= 0) & (channel < num_channels)
    state = torch.zeros(values.shape[0], dtype=torch.int8)
    state[touched] = -1
    state[ok] = 1
    return channel.long().clamp(0, max(num_channels - 1, 0)), state


def channel_view(x: Tensor, kind: str) -> Tensor:
    """One image's input as (channels, positions): conv channel dim 1, linear features last."""
    x = x.detach().float()[:1]
    if kind == "linear":
        return x.reshape(-1, x.shape[-1]).t().contiguous()
    return x[0].reshape(x.shape[1], -1)


@dataclass
class LayerInfo:
    """One conv or linear layer as seen by the probe (per-image numbers)."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    depthwise: bool
    macs: int
    weight_params: int
    bias_params: int

    @property
    def macs_per_in_channel(self) -> float:
        return self.macs / self.in_channels

    @property
    def macs_per_out_channel(self) -> float:
        return self.macs / self.out_channels


@dataclass
class ChannelSource:
    """Input channels ``inputs`` of a layer read channels ``channels`` of BN ``bn``.

    ``owner[k]`` is True when this BN decides whether input ``inputs[k]`` exists (see
    ``mark_owners``); a non-owner only keeps the channel alive while it is itself kept.
    """

    bn: str
    inputs: Tensor
    channels: Tensor
    owner: Tensor | None = None

    def owned(self) -> tuple[Tensor, Tensor]:
        """(inputs, channels) of the owned entries."""
        if self.owner is None:
            return self.inputs, self.channels
        return self.inputs[self.owner], self.channels[self.owner]


@dataclass
class ModelCostTotals:
    """MACs and params of the whole model (per image), before or after a trial prune."""

    macs: float
    params: float


@dataclass
class ChannelCostModel:
    """Which layers read and write each BN channel, and the MACs/params of any keep masks.

    Build with ``ChannelCostModel.probe(model, example_inputs, sources)``; ``sources`` are
    the BNs whose channels may be removed (default: all).
    """

    layers: dict[str, LayerInfo]
    bn_channels: dict[str, int]
    producer: dict[str, str]  # BN name -> layer whose output is the BN's input
    sources: dict[str, list[ChannelSource]] = field(default_factory=dict)  # layer -> sources
    undecoded: dict[str, int] = field(default_factory=dict)  # layer -> input channels not decodable
    other_params: int = 0
    _classes: dict[str, Tensor] | None = field(default=None, repr=False)
    _carry_links: dict[tuple[str, str], tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    # -- construction

    @classmethod
    def probe(cls, model: nn.Module, example_inputs: Any, sources: Sequence[str] | None = None) -> "ChannelCostModel":
        """Run the probes on one example image (eval mode, no grad; modes are restored)."""
        x = _first_image(example_inputs)
        bns = bn_modules(model)
        layers = {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
        source_names = list(bns) if sources is None else list(dict.fromkeys(sources))
        unknown = [n for n in source_names if n not in bns]
        if unknown:
            raise ValueError(f"not an affine BatchNorm of the model: {unknown[0]!r}")
        with inference(model):
            info, producer, shapes = _record_layers(model, x, layers, bns)
            cost = cls(
                layers=info,
                bn_channels={n: int(m.num_features) for n, m in bns.items()},
                producer=producer,
            )
            counted = {id(p) for n in info for p in layers[n].parameters(recurse=False)}
            counted |= {id(p) for m in bns.values() for p in m.parameters(recurse=False)}
            cost.other_params = sum(p.numel() for p in model.parameters() if id(p) not in counted)
            undecoded: dict[str, Tensor] = {}
            silent = torch.zeros_like(x)  # only the tags carry values in the tag passes
            for name in source_names:
                found = [
                    _tag_pass(model, silent, layers, info, shapes, bns, name, reverse) for reverse in (False, True)
                ]
                for layer in info:
                    (ch_a, st_a), (ch_b, st_b) = found[0][layer], found[1][layer]
                    good = (st_a == 1) & (st_b == 1) & (ch_a == ch_b)
                    bad = ((st_a != 0) | (st_b != 0)) & ~good
                    if bad.any():
                        undecoded[layer] = undecoded.get(layer, torch.zeros_like(bad)) | bad
                    if good.any():
                        idx = torch.nonzero(good).flatten()
                        cost.sources.setdefault(layer, []).append(ChannelSource(name, idx, ch_a[idx]))
            cost.undecoded = {k: int(v.sum()) for k, v in undecoded.items() if int(v.sum())}
            for layer, srcs in cost.sources.items():
                mark_owners(srcs, cost.bn_channels, info[layer].in_channels)
        if cost.undecoded:
            log.info("channel cost model: input channels with no decodable source (kept): %s", cost.undecoded)
        return cost

    # -- per-channel costs (FLOPs weighting)

    def channel_macs(self, bn: str) -> float:
        """MACs one channel of ``bn`` costs: its producer's per output channel + consumers' per input."""
        total = 0.0
        if bn in self.producer:
            total += self.layers[self.producer[bn]].macs_per_out_channel
        for layer, sources in self.sources.items():
            info = self.layers[layer]
            for src in sources:
                if src.bn == bn:
                    total += src.owned()[0].numel() / self.bn_channels[bn] * info.macs_per_in_channel
        return total

    # -- trial prunes

    def totals(self, keep: Mapping[str, Tensor] | None = None) -> ModelCostTotals:
        """MACs and params per image left by ``keep`` (BN name -> bool, True = kept; None: intact).

        A layer's input channel survives if it has no probed source or any source keeps it;
        its output channels are those its BN keeps (a depthwise conv keeps what its input keeps).
        """
        keep = keep or {}
        macs = 0.0
        params = float(self.other_params)
        kept_out_by_layer: dict[str, int] = {}
        bn_of_layer = {layer: bn for bn, layer in self.producer.items()}
        for name, info in self.layers.items():
            in_mask = self._input_keep(name, info, keep)
            kin = int(in_mask.sum())
            bn = bn_of_layer.get(name)
            if info.depthwise:
                out_mask = in_mask & keep[bn].cpu() if bn in keep else in_mask
                kout = int(out_mask.sum())
                fraction = kout / info.out_channels
            else:
                kout = int(keep[bn].sum()) if bn in keep else info.out_channels
                fraction = (kin / info.in_channels) * (kout / info.out_channels)
            kept_out_by_layer[name] = kout
            macs += info.macs * fraction
            params += info.weight_params * fraction + (kout if info.bias_params else 0)
        for bn, channels in self.bn_channels.items():
            if bn in keep:
                kept = int(keep[bn].sum())
            elif bn in self.producer:
                kept = kept_out_by_layer[self.producer[bn]]
            else:
                kept = channels
            params += 2 * kept
        return ModelCostTotals(macs=macs, params=params)

    def _input_keep(self, name: str, info: LayerInfo, keep: Mapping[str, Tensor]) -> Tensor:
        sources = self.sources.get(name, [])
        if not sources:
            return torch.ones(info.in_channels, dtype=torch.bool)
        has_source = torch.zeros(info.in_channels, dtype=torch.bool)
        kept = torch.zeros(info.in_channels, dtype=torch.bool)
        for src in sources:
            has_source[src.inputs] = True
            if src.bn in keep:
                kept[src.inputs] |= keep[src.bn].cpu()[src.channels]
            else:
                kept[src.inputs] = True
        return ~has_source | kept

    def ratios(self, keep: Mapping[str, Tensor]) -> tuple[float, float]:
        """(MACs after / before, params after / before) for ``keep``."""
        before, after = self.totals(None), self.totals(keep)
        return after.macs / max(before.macs, 1e-12), after.params / max(before.params, 1e-12)

    def channel_classes(self) -> dict[str, Tensor]:
        """Per BN, a class id for each channel; channels that meet in some layer input share one.

        Channels whose values are added together (residual connections, channel-padded
        shortcuts) can only leave the network together: they form one class.
        """
        offsets: dict[str, int] = {}
        total = 0
        for bn, channels in self.bn_channels.items():
            offsets[bn] = total
            total += channels
        parent = list(range(total))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for sources in self.sources.values():
            owner: dict[int, int] = {}
            for src in sources:
                inputs, channels = src.owned()
                for j, c in zip(inputs.tolist(), channels.tolist()):
                    node = offsets[src.bn] + c
                    if j in owner:
                        ra, rb = find(node), find(owner[j])
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
                    else:
                        owner[j] = node
        roots = torch.tensor([find(i) for i in range(total)], dtype=torch.long)
        return {bn: roots[offsets[bn] : offsets[bn] + ch] for bn, ch in self.bn_channels.items()}

    def resolve(self, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-BN decisions of the scored BNs -> consistent keep masks of every affected BN.

        Coupled channels get one decision (``resolve_coupled``: kept if any scored BN keeps
        it). Then a channel that carries a kept channel of another BN through a re-placing
        path (option-A shortcut) is kept too, until nothing changes.
        """
        if self._classes is None:
            self._classes = self.channel_classes()
            self._carry_links = self.carry_links()
        classes = self._classes
        masks = resolve_coupled(keep, classes)
        changed = True
        while changed:
            changed = False
            for (carrier, owner), (carried_ch, owner_ch) in self._carry_links.items():
                if owner not in masks:
                    continue
                alive = masks[carrier][carried_ch] if carrier in masks else torch.ones(carried_ch.shape, dtype=torch.bool)
                need = owner_ch[alive & ~masks[owner][owner_ch]]
                if need.numel():
                    forced = classes[owner][need]
                    for bn in masks:
                        masks[bn] = masks[bn] | torch.isin(classes[bn], forced)
                    changed = True
        return masks

    def carry_links(self) -> dict[tuple[str, str], tuple[Tensor, Tensor]]:
        """(carrier BN, owner BN) -> (carrier channels, owner channels) that meet at a layer input
        where the owner decides and the carrier arrives re-placed (non-owner entries)."""
        pairs: dict[tuple[str, str], set[tuple[int, int]]] = {}
        for sources in self.sources.values():
            owned_at: dict[int, list[tuple[str, int]]] = {}
            for src in sources:
                inputs, channels = src.owned()
                for j, c in zip(inputs.tolist(), channels.tolist()):
                    owned_at.setdefault(j, []).append((src.bn, c))
            for src in sources:
                if src.owner is None or bool(src.owner.all()):
                    continue
                carried = ~src.owner
                for j, c in zip(src.inputs[carried].tolist(), src.channels[carried].tolist()):
                    for bn, oc in owned_at.get(j, []):
                        pairs.setdefault((src.bn, bn), set()).add((c, oc))
        links = {}
        for key, entries in pairs.items():
            ordered = sorted(entries)
            links[key] = (
                torch.tensor([a for a, _ in ordered], dtype=torch.long),
                torch.tensor([b for _, b in ordered], dtype=torch.long),
            )
        return links

    def coupled_groups(self) -> list[list[str]]:
        """BN names whose channels share a class with another BN's (the residual groups), in order."""
        classes = self.channel_classes()
        owner: dict[int, int] = {}
        parent = list(range(len(classes)))
        names = list(classes)
        for i, bn in enumerate(names):
            for root in set(classes[bn].tolist()):
                if root in owner:
                    a, b = parent[i], owner[root]
                    while parent[a] != a:
                        a = parent[a]
                    while parent[b] != b:
                        b = parent[b]
                    parent[max(a, b)] = min(a, b)
                else:
                    owner[root] = i
        groups: dict[int, list[str]] = {}
        for i, bn in enumerate(names):
            r = i
            while parent[r] != r:
                r = parent[r]
            groups.setdefault(r, []).append(bn)
        return list(groups.values())


def resolve_coupled(keep: Mapping[str, Tensor], classes: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Give coupled channels one decision: a class is kept when ANY scored channel in it is kept.

    ``keep`` holds the per-BN decisions of the scored (regularized) BNs; the other BNs of a
    class do not vote and follow the class. Returns masks for every BN that shares a class with
    a scored BN (scored BNs included); classes without a scored member are left out (intact).
    """
    if not keep:
        return {}
    size = int(max(int(c.max()) for c in classes.values() if c.numel()) + 1)
    voted = torch.zeros(size, dtype=torch.bool)
    votes = torch.zeros(size, dtype=torch.long)
    for bn, mask in keep.items():
        voted[classes[bn]] = True
        votes.index_add_(0, classes[bn], mask.cpu().long())
    kept = votes > 0
    out: dict[str, Tensor] = {}
    for bn, cls in classes.items():
        if bn in keep or voted[cls].any():
            out[bn] = torch.where(voted[cls], kept[cls], torch.ones_like(kept[cls]))
    return out


def mark_owners(sources: Sequence[ChannelSource], bn_channels: Mapping[str, int], in_channels: int) -> None:
    """Set ``owner`` on each source of one layer input: which BNs decide if a channel exists.

    A *direct* source is a BN as wide as the layer input whose channel ``c`` arrives at input
    ``c`` (an element-wise path: activations, residual additions). Where an input channel has
    direct sources, only they own it; sources that arrive re-placed (channel padding of an
    option-A shortcut, concatenation, flatten) own a channel only where no direct source
    does. This is how the pruning module sees an option-A shortcut: it reads the previous
    stage's channels (a consumer there) and writes into the next stage's channels (a producer
    that does not vote), so the stages are decided separately; a next-stage channel that
    carries a kept previous-stage channel stays (``ChannelCostModel.resolve``).
    """
    direct_any = torch.zeros(in_channels, dtype=torch.bool)
    flags = []
    for src in sources:
        if bn_channels[src.bn] == in_channels:
            direct = src.inputs == src.channels
        else:
            direct = torch.zeros(src.inputs.shape, dtype=torch.bool)
        direct_any[src.inputs[direct]] = True
        flags.append(direct)
    for src, direct in zip(sources, flags):
        src.owner = direct | ~direct_any[src.inputs]


def _first_image(example_inputs: Any) -> Tensor:
    x = example_inputs
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not isinstance(x, Tensor):
        raise ValueError(f"example_inputs must be a tensor, got {type(x).__name__}")
    return x[:1]


def _record_layers(
    model: nn.Module, x: Tensor, layers: Mapping[str, nn.Module], bns: Mapping[str, nn.Module]
) -> tuple[dict[str, LayerInfo], dict[str, str], dict[str, torch.Size]]:
    """Pass 0: each layer's MACs, widths and output shape, and which layer's output each BN reads."""
    info: dict[str, LayerInfo] = {}
    shapes: dict[str, torch.Size] = {}
    outputs: dict[int, str] = {}
    keep_alive: list[Tensor] = []
    producer: dict[str, str] = {}
    handles = []

    def layer_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if name in info:  # a layer used twice: count its first use only
                return
            if isinstance(module, nn.Linear):
                positions = output[:1].numel() // module.out_features
                info[name] = LayerInfo(
                    "linear", module.in_features, module.out_features, False,
                    module.in_features * module.out_features * positions,
                    module.weight.numel(), 0 if module.bias is None else module.bias.numel(),
                )
            else:
                positions = output[0, 0].numel()
                info[name] = LayerInfo(
                    "conv", module.in_channels, module.out_channels, is_depthwise(module),
                    module.weight.numel() * positions,
                    module.weight.numel(), 0 if module.bias is None else module.bias.numel(),
                )
            shapes[name] = output.shape
            outputs[id(output)] = name
            keep_alive.append(output)

        return hook

    def bn_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            source = outputs.get(id(inputs[0]))
            if source is not None and name not in producer:
                producer[name] = source

        return hook

    try:
        for name, m in layers.items():
            handles.append(m.register_forward_hook(layer_hook(name)))
        for name, m in bns.items():
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
        model(x)
    finally:
        for h in handles:
            h.remove()
    return info, producer, shapes


def _tag_pass(
    model: nn.Module,
    x: Tensor,
    layers: Mapping[str, nn.Module],
    info: Mapping[str, LayerInfo],
    shapes: Mapping[str, torch.Size],
    bns: Mapping[str, nn.Module],
    source: str,
    reverse: bool,
) -> dict[str, tuple[Tensor, Tensor]]:
    """One tag pass for ``source``: per layer, the decoded (source channel, state) of each input.

    The layers' forwards are swapped for cheap stand-ins for the pass (no convolution runs):
    zeros of the recorded output shape, the per-channel mean for depthwise convs, the identity
    for BNs and the tags for the source BN. The instance attributes are removed afterwards.
    """
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    channels = bns[source].num_features
    tags = channel_tags(channels, reverse).to(device=x.device)

    def consumer(name: str, module: nn.Module) -> Callable:
        depthwise = is_depthwise(module)
        shape = shapes.get(name)

        def forward(inp: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if name not in seen and name in info:
                seen[name] = decode_tags(channel_view(inp, info[name].kind).cpu(), channels, reverse)
            out_shape = (inp.shape[0], *shape[1:]) if shape is not None else inp.shape
            if depthwise:
                per_channel = inp.mean(dim=tuple(range(2, inp.dim())), keepdim=True)
                return per_channel.expand(out_shape).contiguous()
            return torch.zeros(out_shape, dtype=inp.dtype, device=inp.device)

        return forward

    def identity(inp: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return inp.clone()

    def emit(inp: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        view = [1] * inp.dim()
        view[1] = channels
        return tags.to(inp.dtype).reshape(view).expand(inp.shape).contiguous()

    patched: list[nn.Module] = []
    try:
        for name, m in layers.items():
            m.forward = consumer(name, m)  # type: ignore[method-assign]
            patched.append(m)
        for name, m in bns.items():
            m.forward = emit if name == source else identity  # type: ignore[method-assign]
            patched.append(m)
        model(x)
    finally:
        for m in patched:
            if "forward" in vars(m):
                del m.forward
    return {name: seen[name] if name in seen else _nothing(info[name]) for name in info}


def _nothing(layer: LayerInfo) -> tuple[Tensor, Tensor]:
    return torch.zeros(layer.in_channels, dtype=torch.long), torch.zeros(layer.in_channels, dtype=torch.int8)


# ----------------------------------------------------------------------------- trial prunes


def residual_blocks(model: nn.Module) -> list[tuple[list[str], str]]:
    """(inner BNs, last BN) of each residual block whose branch pruning may remove (as
    ``prune_model`` does: CIFAR/torchvision basic blocks and bottlenecks)."""
    try:
        from ..pruning.resolve import find_blocks
    except ImportError:  # pruning module without block removal: every layer keeps a channel
        return []
    return [(list(block.inner_bns), block.last_bn) for block in find_blocks(model).values()]


def empty_blocks_or_one_channel(
    keep: Mapping[str, Tensor], scores: Mapping[str, Tensor], blocks: Sequence[tuple[Sequence[str], str]]
) -> tuple[dict[str, Tensor], list[str]]:
    """Per-BN decisions -> (decisions to resolve, BNs of removed residual branches).

    A block whose inner BN keeps nothing loses its branch: its BNs are returned as removed and
    its last BN no longer votes in its residual group. Every other BN keeps at least its
    largest-|gamma| channel.
    """
    out = dict(keep)
    inner: set[str] = set()
    removed: list[str] = []
    for inner_bns, last_bn in blocks:
        inner.update(inner_bns)
        if any(bn in out and not bool(out[bn].any()) for bn in inner_bns):
            removed += [*inner_bns, last_bn]
            for bn in (*inner_bns, last_bn):
                out.pop(bn, None)
    for bn, mask in out.items():
        if bn not in inner and not bool(mask.any()):
            mask = mask.clone()
            mask[int(torch.argmax(scores[bn]))] = True
            out[bn] = mask
    return out, removed


class TrialPruner:
    """What a strategy would prune now: keep masks from the gammas and the MACs/params they leave.

    The per-BN decisions of ``select_channels`` (on the regularized BNs) are made consistent over
    coupled channels (``ChannelCostModel.resolve``) and priced by a ``ChannelCostModel`` probed
    once. As in ``prune_model``: a residual block whose inner BN (``bn1``, bottleneck ``bn2``)
    loses every channel loses its whole branch; any other layer keeps its best channel.
    Results are cached per (strategy, epoch), so several hooks can ask in the same epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        bn_names: Sequence[str],
        *,
        threshold: float = SMALL_GAMMA,
        cost_model: ChannelCostModel | None = None,
    ) -> None:
        self.bn_names = list(bn_names)
        self.threshold = float(threshold)
        self.cost = cost_model if cost_model is not None else ChannelCostModel.probe(model, example_inputs)
        self.blocks = residual_blocks(model)
        self._cache: dict[tuple[str, int], tuple[float, float]] = {}

    def keep_masks(self, model: nn.Module, strategy: str) -> dict[str, Tensor]:
        """Coupling-resolved keep masks that ``strategy`` (``grad`` or ``fixed``) would give now."""
        from ..pruning.strategies import select_channels

        strategies_log = logging.getLogger("polarprune.pruning.strategies")
        level = strategies_log.level
        strategies_log.setLevel(logging.ERROR)  # the per-layer "not polarized" warnings are for real prunes
        try:
            scores = gamma_scores(model, self.bn_names)
            chosen = select_channels(scores, strategy, threshold=self.threshold, min_channels=0)
        finally:
            strategies_log.setLevel(level)
        decisions, removed = empty_blocks_or_one_channel(chosen.keep, scores, self.blocks)
        masks = self.cost.resolve(decisions)
        for bn in removed:  # the whole branch is gone
            masks[bn] = torch.zeros(self.cost.bn_channels[bn], dtype=torch.bool)
        return masks

    def ratios(self, model: nn.Module, strategy: str, epoch: int | None = None) -> tuple[float, float]:
        """(MACs ratio, params ratio) after/before for ``strategy``; cached when ``epoch`` is given."""
        key = (strategy, epoch)
        if epoch is not None and key in self._cache:
            return self._cache[key]
        result = self.cost.ratios(self.keep_masks(model, strategy))
        if epoch is not None:
            self._cache = {k: v for k, v in self._cache.items() if k[1] == epoch}
            self._cache[key] = result  # type: ignore[index]
        return result

    def macs_ratio(self, model: nn.Module, strategy: str, epoch: int | None = None) -> float:
        return self.ratios(model, strategy, epoch)[0]


# ----------------------------------------------------------------------------- monitoring


def gamma_summary(gammas: Sequence[Tensor], small: float = SMALL_GAMMA) -> dict[str, float]:
    """Fraction of regularized gammas with ``|gamma| < small`` and the overall mean ``|gamma|``."""
    flat = torch.cat([g.detach().reshape(-1).abs().float().cpu() for g in gammas])
    return {
        f"gamma_frac_below_{small:g}": float((flat < small).float().mean()),
        "gamma_mean": float(flat.mean()),
    }


class GammaMonitorHook(TrainHook):
    """Every epoch end: trial prunes (grad, fixed) and the distribution of the regularized gammas.

    Metrics: ``trial_macs_ratio_grad``, ``trial_macs_ratio_fixed``, ``trial_params_ratio_grad``,
    ``gamma_frac_below_0.01``, ``gamma_mean``, ``lambda``. With a TensorBoard writer it also
    writes histograms of all regularized gammas (``gamma/all``) and of each layer
    (``gamma/<bn name>``).
    """

    def __init__(
        self,
        bn_names: Sequence[str],
        trial: TrialPruner,
        current_lambda: Callable[[], float] | None = None,
        per_layer_histograms: bool = True,
    ) -> None:
        self.bn_names = list(bn_names)
        self.trial = trial
        self.current_lambda = current_lambda
        self.per_layer_histograms = per_layer_histograms

    def on_epoch_end(self, model: nn.Module, epoch: int, writer: Any | None = None) -> dict[str, float]:
        gammas = [model.get_submodule(name).weight for name in self.bn_names]
        macs_grad, params_grad = self.trial.ratios(model, "grad", epoch)
        macs_fixed, _ = self.trial.ratios(model, "fixed", epoch)
        metrics = {
            "trial_macs_ratio_grad": macs_grad,
            "trial_macs_ratio_fixed": macs_fixed,
            "trial_params_ratio_grad": params_grad,
            **gamma_summary(gammas),
        }
        if self.current_lambda is not None:
            metrics["lambda"] = float(self.current_lambda())
        if writer is not None:
            step = epoch + 1
            values = [g.detach().float().cpu() for g in gammas]
            writer.add_histogram("gamma/all", torch.cat(values), step)
            if self.per_layer_histograms:
                for name, value in zip(self.bn_names, values):
                    writer.add_histogram(f"gamma/{name}", value, step)
        return metrics


__all__ = [
    "ChannelCostModel",
    "ChannelSource",
    "LayerInfo",
    "ModelCostTotals",
    "TrialPruner",
    "GammaMonitorHook",
    "resolve_coupled",
    "gamma_scores",
    "gamma_summary",
    "bn_modules",
    "channel_tags",
    "decode_tags",
    "is_depthwise",
]
