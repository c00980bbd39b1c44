"""Sparsity training on BN scaling factors: regularizers, which BNs, mask files, monitoring.

``polarprune.workflows.train`` calls ``build_hooks(cfg.sparsity, model, example_inputs)``; the engine runs the
hooks it returns (protocol: ``polarprune.training.hooks``). See docs/sparsity.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import SparsityConfig
from ..errors import PolarpruneError
from ..pruning.cost import MACS, CostModel
from ..training.hooks import TrainHook
from .masks import load_mask, mask_from_strategy, masksparsity_mask, save_mask, uniform_mask
from ..pruning.trial import TrialAnalysis
from .flops_weighting import original_channel_macs
from .monitor import GammaMonitorHook
from .regularizers import (REGULARIZERS, Regularizer, SparsityHook, add_l1_subgradient_, clamp_, flops_weights, l1_penalty,
                           make_regularizer, polarization_penalty, register_regularizer, regularizer_class,
                           regularizer_params, resolve_sparsity)
from .selection import regularized_bn_names


def build_hooks(cfg: SparsityConfig, model: nn.Module, example_inputs: Any, cost: CostModel | None = None) -> list[TrainHook]:
    """The hooks that apply ``cfg``'s regularizer (and, with ``cfg.monitor``, monitoring) to ``model``; ``none``:
    no hook. ``example_inputs`` (a small batch) serves one-off probes and the one ``TrialAnalysis`` of the run.
    ``cost``: the latency cost model ``cfg.target_latency_ratio`` is checked with (the caller builds it: this
    layer does not know runtimes)."""
    params = regularizer_params(cfg)
    kind = regularizer_class(cfg.regularizer)
    if not kind.active:
        return []
    targets = kind.targets(cfg, params, model, example_inputs)
    names = targets.names
    if cfg.target_latency_ratio is not None and cost is None:
        raise PolarpruneError("sparsity.target_latency_ratio needs a latency cost model (the training workflow builds it)")
    needs_trial = cfg.flops_weighted or cfg.target_macs_ratio is not None or cfg.target_latency_ratio is not None or cfg.monitor
    trial = TrialAnalysis(model, example_inputs, cost=cost or MACS, bn_names=names) if needs_trial else None  # one per run
    layer_weights = None
    if cfg.flops_weighted:
        assert trial is not None
        channel_macs = original_channel_macs(model, trial.analysis.layer_shapes(), names) if cfg.flops_weighting == "original" else trial.channel_macs()
        weights = flops_weights({n: channel_macs.get(n, 0.0) for n in names}, cfg.weight_min, cfg.weight_max)
        layer_weights = [weights[n] for n in names]
    regularizer = kind.from_params(params, targets, layer_weights)
    hook = SparsityHook(regularizer, names, target_macs_ratio=cfg.target_macs_ratio, trial=trial, check_every=cfg.target_check_every,
                        target_latency_ratio=cfg.target_latency_ratio,
                        freeze_on_target=cfg.freeze_on_target, clamp_all=cfg.clamp_scope == "all")
    hooks: list[TrainHook] = [hook]
    if cfg.monitor:
        assert trial is not None
        hooks.append(GammaMonitorHook(names, trial, current_lambda=lambda: hook.lbd))
    return hooks


__all__ = ["build_hooks", "SparsityHook", "Regularizer", "REGULARIZERS", "register_regularizer", "regularizer_class",
           "regularizer_params", "resolve_sparsity",
           "make_regularizer", "GammaMonitorHook", "TrialAnalysis", "regularized_bn_names", "l1_penalty",
           "add_l1_subgradient_", "polarization_penalty", "clamp_", "flops_weights", "load_mask", "save_mask",
           "uniform_mask", "mask_from_strategy", "masksparsity_mask"]
