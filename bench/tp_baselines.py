"""Torch-Pruning baselines for the CIFAR methods benchmark: its own regularizers and pruners.

Two Torch-Pruning (1.6) methods are compared with polarprune's:

- ``tp-bnscale``: ``tp.pruner.BNScalePruner`` (Network Slimming at the group level), its
  ``regularize`` adds ``reg * sign(gamma)`` to every BN gamma gradient; importance
  ``tp.importance.BNScaleImportance``;
- ``tp-groupnorm``: ``tp.pruner.GroupNormPruner`` (DepGraph's group-norm sparsity), its
  ``regularize`` shrinks whole coupled groups; importance ``GroupMagnitudeImportance(p=2)``.

Protocol: sparsity training with ``pruner.regularize(model)`` after every backward (a
``TrainHook``), then one global pruning step whose ``pruning_ratio`` is searched by bisection
until the MACs reduction matches a target, then fine-tuning (done by the caller).

Torch-Pruning cannot trace the option-A shortcut of the CIFAR ResNets (stride-2 subsampling +
``F.pad`` of the channel dimension): it treats the pad as element-wise, couples the 16- and
32-channel residual streams and produces a model that no longer runs. The residual-stream
layers (the stem conv and every block's ``conv2``) are therefore given to Torch-Pruning as
``ignored_layers``: it prunes the block-internal channels (``conv1``/``bn1`` outputs and
``conv2`` inputs), every other choice is its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from polarprune.flops import count_model
from polarprune.pruning.plan import make_plan
from polarprune.training.hooks import TrainHook

TP_METHODS = ("tp-bnscale", "tp-groupnorm")


def residual_stream_layers(model: nn.Module) -> list[nn.Module]:
    """The layers Torch-Pruning must not prune in a CIFAR ResNet: the final fc, the stem conv
    and each block's second conv (their outputs meet the option-A padded shortcut)."""
    layers: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or name == "conv1" or name.endswith(".conv2"):
            layers.append(module)
    return layers


def build_pruner(method: str, model: nn.Module, example_inputs: torch.Tensor, *, reg: float,
                 pruning_ratio: float = 0.5) -> tp.pruner.BasePruner:
    """A Torch-Pruning pruner of ``method`` on ``model`` (global pruning, residual stream ignored)."""
    common: dict[str, Any] = dict(
        global_pruning=True, pruning_ratio=pruning_ratio, ignored_layers=residual_stream_layers(model), reg=reg
    )
    if method == "tp-bnscale":
        return tp.pruner.BNScalePruner(model, example_inputs, tp.importance.BNScaleImportance(), **common)
    if method == "tp-groupnorm":
        return tp.pruner.GroupNormPruner(model, example_inputs, tp.importance.GroupMagnitudeImportance(p=2), **common)
    raise ValueError(f"unknown Torch-Pruning method {method!r}; expected one of {TP_METHODS}")


class TPRegularizerHook(TrainHook):
    """Applies a Torch-Pruning pruner's own ``regularize`` after every backward pass."""

    def __init__(self, method: str, model: nn.Module, example_inputs: torch.Tensor, reg: float) -> None:
        self.method = method
        was_training = model.training
        model.eval()  # tracing must not move the BN running statistics
        self.pruner = build_pruner(method, model, example_inputs.to(next(model.parameters()).device), reg=reg)
        model.train(was_training)

    def after_backward(self, model: nn.Module) -> None:
        self.pruner.regularize(model)


def macs_reduction(model: nn.Module, base_macs: int, input_shape: tuple[int, ...]) -> float:
    """1 - MACs(model) / base_macs."""
    return 1.0 - count_model(model, input_shape).macs / base_macs


@dataclass
class MatchedPrune:
    """A Torch-Pruning prune whose MACs reduction was matched to a target."""

    model: nn.Module
    pruning_ratio: float
    macs_reduction: float
    tries: list[tuple[float, float]]


def bisect_ratio(reduction_of: Callable[[float], float], target: float, *, tolerance: float = 0.005,
                 low: float = 0.0, high: float = 0.95, max_tries: int = 14) -> tuple[float, list[tuple[float, float]]]:
    """The ratio whose reduction is closest to ``target``; ``reduction_of`` must be increasing.
    Returns it and every (ratio, reduction) tried."""
    tries: list[tuple[float, float]] = []
    for _ in range(max_tries):
        mid = (low + high) / 2
        got = reduction_of(mid)
        tries.append((mid, got))
        if abs(got - target) <= tolerance:
            break
        if got < target:
            low = mid
        else:
            high = mid
    best = min(tries, key=lambda pair: abs(pair[1] - target))
    return best[0], tries


def prune_to_macs(method: str, model: nn.Module, example_inputs: torch.Tensor, target_reduction: float,
                  input_shape: tuple[int, ...], *, reg: float) -> MatchedPrune:
    """Prune a copy of ``model`` with Torch-Pruning so that its MACs reduction is ``target_reduction``
    (within the bisection's tolerance); ``model`` is unchanged."""
    base_macs = count_model(model, input_shape).macs
    model = model.cpu().eval()

    def pruned_at(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model)
        pruner = build_pruner(method, candidate, example_inputs.cpu(), reg=reg, pruning_ratio=ratio)
        pruner.step()
        return candidate

    ratio, tries = bisect_ratio(lambda r: macs_reduction(pruned_at(r), base_macs, input_shape), target_reduction)
    final = describe_pruned(pruned_at(ratio), model)
    return MatchedPrune(final, ratio, macs_reduction(final, base_macs, input_shape), tries)


def describe_pruned(pruned: nn.Module, base: nn.Module) -> nn.Module:
    """Give a model Torch-Pruning thinned the spec of ``base`` plus the plan of the new layer shapes,
    so that ``polarprune.serialization`` saves and rebuilds it (its deep-copied spec still
    described the unpruned widths)."""
    spec = getattr(base, "polarprune_spec", None)
    if isinstance(spec, dict):
        if spec.get("plan"):
            raise ValueError("describe_pruned needs an unpruned base model (its spec already has a plan)")
        pruned.polarprune_spec = {**spec, "plan": make_plan(pruned, base)}  # type: ignore[assignment]
    return pruned
