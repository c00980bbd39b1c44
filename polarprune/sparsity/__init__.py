"""Sparsity training on BN scaling factors: regularizers, which BNs, mask files, monitoring.

The training engine calls ``build_hooks(cfg.sparsity, model, example_inputs)`` and runs the
hooks it returns (protocol: ``polarprune.training.hooks``). See docs/sparsity.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import SparsityConfig
from ..errors import PolarpruneError
from ..training.hooks import TrainHook
from .masks import load_mask, mask_from_strategy, masksparsity_mask, save_mask, uniform_mask
from .monitor import ChannelCostModel, GammaMonitorHook, TrialPruner
from .regularizers import (
    SparsityHook,
    add_l1_subgradient_,
    clamp_,
    flops_weights,
    l1_penalty,
    polarization_penalty,
)
from .selection import match_patterns, regularized_bn_names


def mask_l1_targets(cfg: SparsityConfig, model: nn.Module) -> tuple[list[str], dict[str, Any]]:
    """mask-l1: the BNs of the mask file (narrowed by include/exclude) and their keep masks."""
    if not cfg.mask:
        raise PolarpruneError("sparsity.mask: required when sparsity.regularizer is mask-l1")
    keep = load_mask(cfg.mask, model)
    names = list(keep)
    if cfg.include:
        for pattern in cfg.include:
            if not match_patterns(names, [pattern]):
                raise PolarpruneError(f"sparsity.include pattern {pattern!r} matches no layer of mask file {cfg.mask}")
        names = match_patterns(names, cfg.include)
    dropped = set(match_patterns(names, cfg.exclude))
    names = [n for n in names if n not in dropped]
    if not names:
        raise PolarpruneError(f"sparsity: no layer of mask file {cfg.mask} is left to regularize (check include/exclude)")
    return names, {n: keep[n] for n in names}


def build_hooks(cfg: SparsityConfig, model: nn.Module, example_inputs: Any) -> list[TrainHook]:
    """The hooks that apply ``cfg``'s regularizer (and monitoring) to ``model``.

    ``none`` -> no hook. Otherwise a ``SparsityHook`` and, with ``cfg.monitor``, a
    ``GammaMonitorHook``. ``example_inputs`` (a small batch on the model's device) is used for
    one-off probes: the prunable groups of unknown models, the per-channel MACs of
    ``flops_weighted`` and the trial-prune cost model.
    """
    if cfg.regularizer == "none":
        return []
    keep_masks = None
    if cfg.regularizer == "mask-l1":
        names, keep_masks = mask_l1_targets(cfg, model)
    else:
        names = regularized_bn_names(model, example_inputs, cfg.include, cfg.exclude)
    needs_cost = cfg.flops_weighted or cfg.target_macs_ratio is not None or cfg.monitor
    cost = ChannelCostModel.probe(model, example_inputs) if needs_cost else None
    layer_weights = None
    if cfg.flops_weighted:
        assert cost is not None
        layer_weights = flops_weights({n: cost.channel_macs(n) for n in names}, cfg.weight_min, cfg.weight_max)
    trial = None
    if cfg.target_macs_ratio is not None or cfg.monitor:
        trial = TrialPruner(model, example_inputs, names, cost_model=cost)
    hook = SparsityHook(
        cfg.regularizer,
        names,
        lbd=cfg.lbd,
        t=cfg.t,
        alpha=cfg.alpha,
        detach_mean=cfg.detach_mean,
        clamp=cfg.clamp if cfg.regularizer == "polarization" else None,
        layer_weights=layer_weights,
        keep_masks=keep_masks,
        target_macs_ratio=cfg.target_macs_ratio,
        trial=trial,
    )
    hooks: list[TrainHook] = [hook]
    if cfg.monitor:
        assert trial is not None
        hooks.append(GammaMonitorHook(names, trial, current_lambda=lambda: hook.lbd))
    return hooks


__all__ = [
    "build_hooks",
    "mask_l1_targets",
    "SparsityHook",
    "GammaMonitorHook",
    "TrialPruner",
    "ChannelCostModel",
    "regularized_bn_names",
    "l1_penalty",
    "add_l1_subgradient_",
    "polarization_penalty",
    "clamp_",
    "flops_weights",
    "load_mask",
    "save_mask",
    "uniform_mask",
    "mask_from_strategy",
    "masksparsity_mask",
]
