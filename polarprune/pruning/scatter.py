"""The paper-accounting residual mode (``residual: scatter``) and the original accounting of MACs.

The polarization code prunes each BN on its own and keeps the residual stream at full width: in a
CIFAR ResNet basic block ``bn2``'s kept channels are scattered back to the block's full width before
the shortcut is added (its ``ChannelExpand``), and a block whose ``bn1`` or ``bn2`` keeps nothing
becomes ``relu(shortcut(x))``. Its FLOPs figures count this way, so they cannot be compared with
polarprune's default (residual channels leave only with their whole group, never scattered).
No shift compensation here: the original has none.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..conv_links import ConvLinks, LayerShape, conv_links
from ..errors import PolarpruneError
from ..flops import counted_forward
from ..modes import restored_modes
from ..models.entry import ModelEntry, prefixed, pruning_entry
from ..models.expand import ChannelScatter
from ..models.layers import BlockInfo, ShortcutOnlyBlock
from .base import BN_TYPES, CONV_TYPES, as_input_tuple, max_abs_diff
from .graph import analysed_copy
from .modules import set_module
from .options import RESIDUAL_MODES, STRATEGIES, PruneOptions, parse_options
from .registry import strategy as strategy_record
from .report import GroupRow, PruneReport, build_report
from .resolve import bn_scores
from .strategies import select_channels
from .surgery import slice_batchnorm, slice_conv_in, slice_conv_out


def _keep_list(mask: Tensor) -> list[int]:
    return torch.nonzero(mask.bool().flatten()).flatten().tolist()


def _scatter_family(model: nn.Module) -> tuple[ModelEntry, dict[str, BlockInfo]]:
    """The model's entry and residual blocks, when its family declares a ``scatter_block``."""
    entry = pruning_entry(model)
    if not entry.scatters():
        raise PolarpruneError(f"residual: scatter needs a model family that declares scatter_block (CIFAR ResNets); "
                              f"{type(model).__name__} has none")
    return entry, entry.blocks(model)


def scatter_bn_names(model: nn.Module) -> list[str]:
    """The BNs the scatter mode prunes: the inner and last BNs of every residual block."""
    _, blocks = _scatter_family(model)
    return [bn for block in blocks.values() for bn in [*block.inner_bns, block.last_bn]]


def scatter_keep_masks(model: nn.Module, strategy: str = "fixed", *, threshold: float = 0.01, percent: float | None = None,
                       masks: Mapping[str, Tensor] | None = None, bn_names: Sequence[str] | None = None,
                       warn: bool = True) -> dict[str, Tensor]:
    """Per-BN keep masks, each BN on its own (the original's decision): a threshold strategy on
    ``|gamma|`` (``grad``, ``fixed``, ``percent``) or user ``masks`` (missing BNs: kept whole)."""
    names = list(bn_names) if bn_names is not None else scatter_bn_names(model)
    modules = dict(model.named_modules())
    record = strategy_record(strategy)
    if record.decides == "user":
        if masks is None:
            raise PolarpruneError(f"strategy {strategy!r} needs masks (BN name -> keep vector)")
        result = {}
        for name in names:
            width = modules[name].num_features
            mask = torch.as_tensor(masks[name]).bool().flatten() if name in masks else torch.ones(width, dtype=torch.bool)
            if mask.numel() != width:
                raise PolarpruneError(f"mask for {name!r} has {mask.numel()} entries, the layer has {width} channels")
            result[name] = mask
        return result
    if record.decides != "bn":
        per_bn = ", ".join(n for n, s in STRATEGIES.items() if s.decides in ("bn", "user"))
        raise PolarpruneError(f"residual: scatter decides per BN: strategy must be {per_bn}, got {strategy!r}")
    missing = [n for n in names if n not in modules]
    if missing:
        raise PolarpruneError(f"no BatchNorm layer named {missing[0]!r} in the model")
    return select_channels(bn_scores(model, names), strategy, threshold=threshold, percent=percent, min_channels=0, warn=warn).keep


def apply_scatter(model: nn.Module, bn_keep: Mapping[str, Tensor], *, inplace: bool = False) -> tuple[nn.Module, list[str]]:
    """Prune the original way: each conv-BN pair of a block's branch loses its BN's removed channels, the
    last BN's kept channels are scattered back by the family's ``scatter_block``. Returns the model (a copy
    unless ``inplace``) and the blocks that became their shortcut."""
    work = model if inplace else copy.deepcopy(model)
    entry, blocks = _scatter_family(work)
    emptied = []
    for name, info in blocks.items():
        block = work.get_submodule(name)
        if isinstance(getattr(block, "scatter", None), ChannelScatter):
            raise PolarpruneError(f"{name} was already pruned with residual: scatter; prune the unpruned model instead")
        convs = [a for a in info.branch if isinstance(getattr(block, a), CONV_TYPES)]
        bns = [a for a in info.branch if isinstance(getattr(block, a), BN_TYPES)]
        masks = []
        for bn in bns:
            width = getattr(block, bn).num_features
            mask = torch.as_tensor(bn_keep.get(prefixed(name, bn), torch.ones(width, dtype=torch.bool))).bool().flatten()
            if mask.numel() != width:
                raise PolarpruneError(f"keep mask of {prefixed(name, bn)} has {mask.numel()} entries, the layer has {width} channels")
            masks.append(mask)
        width = masks[-1].numel()
        if any(not bool(m.any()) for m in masks):
            shortcut = ShortcutOnlyBlock(getattr(block, "downsample", None), width).to(getattr(block, convs[0]).weight.device)
            shortcut.train(block.training)
            set_module(work, name, shortcut)
            emptied.append(name)
            continue
        for conv, bn, next_conv, mask in zip(convs[:-1], bns[:-1], convs[1:], masks[:-1]):
            kept = _keep_list(mask)
            slice_conv_out(getattr(block, conv), kept)
            slice_batchnorm(getattr(block, bn), kept)
            slice_conv_in(getattr(block, next_conv), kept)
        last = _keep_list(masks[-1])
        if len(last) == width:
            continue  # the last BN keeps every channel: nothing to scatter (the original skips the expand too)
        slice_conv_out(getattr(block, convs[-1]), last)
        slice_batchnorm(getattr(block, bns[-1]), last)
        scattered = entry.scatter_block(block, last, width).to(getattr(block, convs[0]).weight.device)  # type: ignore[misc]
        scattered.train(block.training)
        set_module(work, name, scattered)
    return work, emptied


def _branch_layers(block: BlockInfo, layer_names: Sequence[str]) -> list[str]:
    heads = [prefixed(block.name, attr) for attr in block.branch]
    return [n for n in layer_names if any(n == h or n.startswith(h + ".") for h in heads)]


def original_macs(model: nn.Module, example_inputs: Any, bn_keep: Mapping[str, Tensor], links: ConvLinks | None = None) -> int:
    """Per-image conv+linear MACs of ``model`` pruned by per-BN ``bn_keep`` under the original accounting
    (layers shrink on their directly linked sides only; a block with an empty BN costs nothing)."""
    links = links if links is not None else conv_links(model, analysed_copy(model, example_inputs).layer_shapes())
    kept = {name: int(torch.as_tensor(mask).bool().sum()) for name, mask in bn_keep.items()}
    emptied: list[str] = []
    for block in pruning_entry(model).blocks(model).values():
        if any(kept.get(bn, 1) == 0 for bn in [*block.inner_bns, block.last_bn]):
            emptied += _branch_layers(block, list(links.layers))
    return links.scatter_macs(kept, emptied)


def per_bn_choice(model: nn.Module, options: PruneOptions, bn_names: Sequence[str], threshold: float | None = None) -> dict[str, Tensor] | None:
    """Each BN's own keep mask for ``options`` before any group vote (the original's decision), None for a
    strategy that does not score |gamma| (``l1-norm``) or a search that aims no per-BN strategy (``latency-target``); ``threshold`` overrides the options' (a search:
    the one it found, for the strategy it aims)."""
    record = STRATEGIES[options.strategy]
    if record.score != "gamma" or record.decides == "search" and record.aims is None:  # no per-BN choice to copy
        return None
    if record.decides == "user":
        return {n: torch.as_tensor(m).bool().flatten() for n, m in (options.masks or {}).items() if n in bn_names}
    cut = options.threshold if threshold is None else threshold
    return select_channels(bn_scores(model, bn_names), record.aims or options.strategy, threshold=cut, percent=options.percent,
                           ratio=options.ratio, min_channels=0, seed=options.seed, warn=False).keep


def original_accounting(model: nn.Module, example_inputs: Any, options: PruneOptions, threshold: float | None = None,
                        layers: Mapping[str, LayerShape] | None = None) -> tuple[int | None, str | None]:
    """``(MACs, None)`` of the original accounting for the per-BN choice of ``options`` (default BNs: those
    fed directly by a conv/linear), or ``(None, reason)`` when it cannot be computed."""
    try:
        links = conv_links(model, layers if layers is not None else analysed_copy(model, example_inputs).layer_shapes())
    except PolarpruneError as exc:
        return None, str(exc)
    names = list(options.bn_names) if options.bn_names is not None else [bn for bn in links.bn_channels if bn in links.producer]
    keep = per_bn_choice(model, options, names, threshold)
    if keep is None:
        return None, f"the original accounting is not defined for strategy {options.strategy!r}"
    return original_macs(model, example_inputs, keep, links), None


def prune_scatter(model: nn.Module, example_inputs: Any, strategy: str | None = None, *, inplace: bool = False,
                  options: PruneOptions | None = None, **fields: Any) -> tuple[nn.Module, PruneReport]:
    """``prune_model`` for ``residual: scatter``: each BN decides alone, bn2 outputs are scattered back to
    full width; one report row per pruned BN."""
    opts = parse_options(strategy, options, **fields)
    inputs = as_input_tuple(example_inputs)
    start = time.perf_counter()
    notes: list[str] = []
    if opts.compensate:
        notes.append("residual: scatter: no shift compensation (as the original code)")
    if opts.round_to not in (1, "auto") or opts.min_channels != 1 or opts.group_rule != "any":
        notes.append("residual: scatter: round_to, min_channels and group_rule do not apply (each BN decides alone)")
    names = list(opts.bn_names) if opts.bn_names is not None else scatter_bn_names(model)
    with restored_modes(model):
        model.eval()
        reference, before = counted_forward(model, inputs)
        keep = scatter_keep_masks(model, opts.strategy, threshold=opts.threshold, percent=opts.percent, masks=opts.masks, bn_names=names)
        pruned, emptied = apply_scatter(model, keep, inplace=inplace)
        pruned.eval()
        output, after = counted_forward(pruned, inputs)
    pruned.train(model.training)
    notes += [f"{name}: residual branch removed (bn1 or bn2 kept nothing); the block is its shortcut" for name in emptied]
    rows = [GroupRow(name, [name], name.endswith("bn2"), mask.numel(), int(mask.sum()), None) for name, mask in keep.items()]
    report = build_report(opts, rows, before, after, max_abs_diff(reference, output), compensated=False, removed_blocks=emptied,
                          notes=notes, seconds={"total": time.perf_counter() - start}, macs_original_accounting=after.cost.macs)
    return pruned, report


__all__ = ["RESIDUAL_MODES", "scatter_bn_names", "scatter_keep_masks", "apply_scatter", "original_macs", "per_bn_choice",
           "original_accounting", "prune_scatter"]
