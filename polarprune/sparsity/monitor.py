"""Monitoring a sparsity run: per-epoch trial prunes and the distribution of the regularized gammas.

The trial prunes are ``polarprune.pruning.TrialAnalysis`` decisions: the same dependency
analysis, decision and cost model as ``prune_model``, analysed once per run and decided from
the current gammas every epoch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..pruning.trial import TrialAnalysis
from ..training.hooks import TrainHook

SMALL_GAMMA = 0.01


def bn_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every affine BatchNorm of ``model`` by module name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}


def gamma_summary(gammas: Sequence[Tensor], small: float = SMALL_GAMMA) -> dict[str, float]:
    """Fraction of regularized gammas with ``|gamma| < small`` and the overall mean ``|gamma|``."""
    flat = torch.cat([g.detach().reshape(-1).abs().float().cpu() for g in gammas])
    return {f"gamma_frac_below_{small:g}": float((flat < small).float().mean()), "gamma_mean": float(flat.mean())}


class GammaMonitorHook(TrainHook):
    """Every epoch end: trial prunes (grad, fixed) and the distribution of the regularized gammas (with a
    TensorBoard writer also histograms: ``gamma/all`` and ``gamma/<bn name>``)."""

    def __init__(self, bn_names: Sequence[str], trial: TrialAnalysis, current_lambda: Callable[[], float] | None = None,
                 per_layer_histograms: bool = True) -> None:
        self.bn_names = list(bn_names)
        self.trial = trial
        self.current_lambda = current_lambda
        self.per_layer_histograms = per_layer_histograms

    def on_epoch_end(self, model: nn.Module, epoch: int, writer: Any | None = None) -> dict[str, float]:
        gammas = [model.get_submodule(name).weight for name in self.bn_names]
        macs_grad, params_grad = self.trial.ratios(model, "grad", epoch)
        macs_fixed, _ = self.trial.ratios(model, "fixed", epoch)
        metrics = {"trial_macs_ratio_grad": macs_grad, "trial_macs_ratio_fixed": macs_fixed,
                   "trial_params_ratio_grad": params_grad, **gamma_summary(gammas)}
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


__all__ = ["GammaMonitorHook", "gamma_summary", "bn_modules", "SMALL_GAMMA"]
