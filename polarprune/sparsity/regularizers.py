"""Sparsity regularizers on BN scaling factors (REFERENCE section 2), and the hook that applies them.

The math is a handful of pure functions on a list of gamma tensors (one per regularized BN):

- ``l1_penalty`` / ``add_l1_subgradient_``: Network Slimming's ``lambda * sum |gamma|``, applied
  as the subgradient ``lambda * sign(gamma)`` added to ``gamma.grad`` after ``backward()``;
  with a *regularize* mask it is MaskSparsity's mask-L1 (only masked channels get it).
- ``polarization_penalty``: ``lambda * (t * sum|g| - sum|g - alpha * mean(g)|)`` with ONE mean
  over all regularized gammas of the network; added to the loss, autograd gives the subgradient.
- ``clamp_``: gammas back into ``[0, clamp]`` after every optimizer step (polarization).
- ``flops_weights``: per-layer lambda factors, linearly mapped from the MACs one channel costs.

Each regularizer is a ``Regularizer`` class registered by name in ``REGULARIZERS``; it declares its
own validated parameters (``Params``, a config section whose keys sit in the ``sparsity`` section
next to the common ones of ``config.SparsityConfig``), and ``resolve_sparsity`` is the one place that
checks a sparsity section's regularizer name and parameters. ``SparsityHook`` calls the regularizer
at the moments of a training step and knows nothing of its insides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from pydantic import Field, ValidationError
from torch import Tensor, nn

from ..config import Section, SparsityConfig, format_validation_error
from ..errors import PolarpruneError
from ..training.hooks import TrainHook
from .masks import load_mask
from .selection import narrow, regularized_bn_names

log = logging.getLogger(__name__)


def _per_layer_factors(gammas: Sequence[Tensor], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(gammas)
    if len(weights) != len(gammas):
        raise ValueError(f"got {len(weights)} layer weights for {len(gammas)} gamma tensors")
    return [float(w) for w in weights]


def l1_penalty(gammas: Sequence[Tensor], lbd: float, weights: Sequence[float] | None = None) -> Tensor:
    """``lambda * sum_l w_l * sum_i |gamma_li|`` in fp32 (the value the L1 subgradient descends)."""
    factors = _per_layer_factors(gammas, weights)
    with torch.autocast(gammas[0].device.type, enabled=False):
        total = sum(w * g.float().abs().sum() for w, g in zip(factors, gammas))
    return lbd * total  # type: ignore[return-value]


def l1_scales(gammas: Sequence[Tensor], lbd: float, regularize: Sequence[Tensor | None] | None = None,
              weights: Sequence[float] | None = None) -> list[Tensor]:
    """Per-channel factors ``lambda * w_l * regularize_li`` (float32, on each gamma's device); ``regularize[l]``
    is True where the channel is pushed to 0, None for all. Precomputed once, a step is one fused multiply-add."""
    factors = _per_layer_factors(gammas, weights)
    masks = list(regularize) if regularize is not None else [None] * len(gammas)
    if len(masks) != len(gammas):
        raise ValueError(f"got {len(masks)} masks for {len(gammas)} gamma tensors")
    scales = []
    for g, w, m in zip(gammas, factors, masks):
        if m is None:
            scales.append(torch.full(g.shape, lbd * w, dtype=torch.float32, device=g.device))
        else:
            if m.shape != g.shape:
                raise ValueError(f"mask of shape {tuple(m.shape)} for a gamma of shape {tuple(g.shape)}")
            scales.append(m.to(device=g.device, dtype=torch.float32) * (lbd * w))
    return scales


@torch.no_grad()
def add_scaled_sign_(gammas: Sequence[Tensor], scales: Sequence[Tensor]) -> None:
    """``gamma.grad += scale * sign(gamma)`` for every layer, with foreach ops (a missing grad starts at zeros)."""
    grads = []
    for g in gammas:
        if g.grad is None:
            g.grad = torch.zeros_like(g)
        grads.append(g.grad)
    signs = torch._foreach_sign(list(gammas))
    if grads[0].dtype == scales[0].dtype:
        torch._foreach_addcmul_(grads, signs, list(scales))
    else:  # e.g. fp16/bf16 parameters: compute in fp32, write back in the grad's dtype
        for grad, sign, scale in zip(grads, signs, scales):
            grad.add_((sign.float() * scale).to(grad.dtype))


def add_l1_subgradient_(gammas: Sequence[Tensor], lbd: float, regularize: Sequence[Tensor | None] | None = None,
                        weights: Sequence[float] | None = None) -> None:
    """Add ``lambda * w_l * sign(gamma) * regularize`` to each ``gamma.grad`` in place (mask-L1: ``regularize``
    is the inverse of a keep mask; channels outside it get exactly nothing)."""
    if not gammas:
        return
    add_scaled_sign_(gammas, l1_scales(gammas, lbd, regularize, weights))


def flat_layer_weights(gammas: Sequence[Tensor], weights: Sequence[float] | None) -> Tensor | None:
    """One float32 vector with each layer's weight repeated over its channels (None: unweighted)."""
    if weights is None:
        return None
    factors = _per_layer_factors(gammas, weights)
    return torch.cat([torch.full((g.numel(),), w, dtype=torch.float32, device=g.device) for g, w in zip(gammas, factors)])


def polarization_penalty(gammas: Sequence[Tensor], lbd: float, t: float, alpha: float = 1.0, detach_mean: bool = False,
                         weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """``lambda * sum_i w_i * (t*|g_i| - |g_i - alpha*mean(g)|)`` over ALL regularized gammas, in fp32.

    ``mean(g)`` is one global mean over every layer's gammas, as in the paper (channels compared
    network-wide); detached with ``detach_mean`` (the ``pol_grad`` variant). It can be negative.
    """
    with torch.autocast(gammas[0].device.type, enabled=False):
        flat = torch.cat([g.reshape(-1).float() for g in gammas])
        mean = flat.mean()
        if detach_mean:
            mean = mean.detach()
        per_channel = t * flat.abs() - (flat - alpha * mean).abs()
        if weights is not None:
            w = weights if isinstance(weights, Tensor) else flat_layer_weights(gammas, list(weights))
            per_channel = per_channel * w.to(per_channel.device)  # type: ignore[union-attr]
        return lbd * per_channel.sum()


@torch.no_grad()
def clamp_(gammas: Sequence[Tensor], max_value: float | None) -> None:
    """Clamp every gamma into ``[0, max_value]`` in place (None: only the lower bound 0)."""
    params = list(gammas)
    if not params:
        return
    torch._foreach_clamp_min_(params, 0.0)
    if max_value is not None:
        torch._foreach_clamp_max_(params, float(max_value))


def linear_map(values: Mapping[str, float], low: float, high: float) -> dict[str, float]:
    """Map ``values`` linearly onto ``[low, high]`` (min -> low, max -> high); all equal: ``(low + high) / 2``."""
    if not values:
        return {}
    v_min, v_max = min(values.values()), max(values.values())
    if v_max - v_min <= 1e-12 * max(abs(v_max), 1.0):
        return {name: (low + high) / 2.0 for name in values}
    return {name: low + (v - v_min) / (v_max - v_min) * (high - low) for name, v in values.items()}


def flops_weights(channel_macs: Mapping[str, float], weight_min: float, weight_max: float) -> dict[str, float]:
    """Per-layer lambda factors: the MACs one channel of each BN costs, mapped linearly into
    ``[weight_min, weight_max]`` (costlier channels get a larger lambda)."""
    if weight_min > weight_max:
        raise ValueError(f"weight_min {weight_min} exceeds weight_max {weight_max}")
    return linear_map(channel_macs, weight_min, weight_max)


@dataclass
class Targets:
    """The BNs a regularizer acts on, and per BN which channels (None: all of them)."""

    names: list[str]
    regularize: list[Tensor] | None = None


REGULARIZERS: dict[str, type["Regularizer"]] = {}


def register_regularizer(cls: type["Regularizer"]) -> type["Regularizer"]:
    """Make ``cls`` available by its ``name`` (a class decorator)."""
    if not cls.name:
        raise ValueError(f"regularizer class {cls.__name__} has no name")
    REGULARIZERS[cls.name] = cls
    return cls


class RegularizerParams(Section):
    """The parameters every regularizer takes (a subclass adds its own)."""

    lbd: float = Field(1e-4, ge=0, description="lambda, the regularizer's strength")


class PolarizationParams(RegularizerParams):
    """``polarization``'s parameters."""

    t: float = Field(1.0, ge=0, description="weight of the L1 part (larger: more channels to 0)")
    alpha: float = Field(1.0, ge=0, description="scale of the mean")
    clamp: float | None = Field(1.0, gt=0, description="clamp gammas to [0, clamp] after each step; null: no clamp")
    detach_mean: bool = Field(False, description="stop the gradient through the mean (pol_grad)")


class MaskL1Params(RegularizerParams):
    """``mask-l1``'s parameters: the mask file is required."""

    mask: str = Field(description="mask file (True = keep); its other channels are regularized")


class Regularizer:
    """One sparsity regularizer on the regularized gammas: strength ``lbd``, ``layer_weights`` (one lambda
    factor per BN), ``clamp`` (upper bound after each step). Subclasses override the moments they act at
    and declare their parameters in ``Params``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[RegularizerParams]] = RegularizerParams
    method: ClassVar[str | None] = None  # whose paper's BN choice ``targets`` uses
    active: ClassVar[bool] = True  # False: no hook at all (``none``)

    def __init__(self, lbd: float = 0.0, layer_weights: Sequence[float] | None = None, clamp: float | None = None) -> None:
        self.lbd = float(lbd)
        self.layer_weights = [float(w) for w in layer_weights] if layer_weights is not None else None
        self.clamp = clamp

    @classmethod
    def targets(cls, cfg: SparsityConfig, params: Any, model: nn.Module, example_inputs: Any) -> Targets:
        """The BNs ``cfg`` asks for: the family's choice for ``method``, narrowed by include/exclude."""
        return Targets(regularized_bn_names(model, example_inputs, cfg.include, cfg.exclude, method=cls.method))

    @classmethod
    def from_params(cls, params: Any, targets: Targets, layer_weights: Sequence[float] | None = None) -> "Regularizer":
        """The regularizer its validated ``params`` describe, acting on ``targets``."""
        return cls(params.lbd, layer_weights)

    def set_lambda(self, value: float) -> None:
        """Change the strength (cached per-step factors are rebuilt on the next step)."""
        self.lbd = float(value)
        self.reset()

    def reset(self) -> None:
        """Drop tensors cached from the gammas (new model, new lambda)."""

    def penalty(self, gammas: list[Tensor]) -> Tensor | None:
        """A term added to the loss before ``backward`` (None: nothing)."""
        return None

    def after_backward(self, gammas: list[Tensor]) -> None:
        """Change ``gamma.grad`` after the gradients are complete (all-reduced, unscaled)."""

    def after_step(self, gammas: list[Tensor]) -> None:
        """After the optimizer step: clamp the gammas into ``[0, clamp]`` if a clamp is set."""
        if self.clamp is not None:
            clamp_(gammas, self.clamp)


@register_regularizer
class NoRegularizer(Regularizer):
    """``none``: plain training, no sparsity hook."""

    name = "none"
    active = False


@register_regularizer
class L1(Regularizer):
    """``l1`` (Network Slimming): ``lambda * w_l * sign(gamma)`` added to the gradient after backward."""

    name = "l1"
    method = "l1"
    needs_masks: ClassVar[bool] = False

    def __init__(self, lbd: float = 0.0, layer_weights: Sequence[float] | None = None, clamp: float | None = None,
                 regularize: Sequence[Tensor] | None = None) -> None:
        super().__init__(lbd, layer_weights, clamp)
        if regularize is None and self.needs_masks:
            raise ValueError(f"{self.name} needs the masks of the channels to regularize")
        self.regularize = [m.bool().cpu() for m in regularize] if regularize is not None else None
        self._scales: list[Tensor] | None = None

    @classmethod
    def from_params(cls, params: Any, targets: Targets, layer_weights: Sequence[float] | None = None) -> "Regularizer":
        return cls(params.lbd, layer_weights, regularize=targets.regularize)

    def reset(self) -> None:
        self._scales = None

    def after_backward(self, gammas: list[Tensor]) -> None:
        if self.lbd == 0.0:
            return
        if self._scales is None:
            self._scales = l1_scales(gammas, self.lbd, self.regularize, self.layer_weights)
        add_scaled_sign_(gammas, self._scales)


@register_regularizer
class MaskL1(L1):
    """``mask-l1`` (MaskSparsity): L1 on exactly the channels a mask file marks for removal."""

    name = "mask-l1"
    method = "masksparsity"
    needs_masks = True
    Params = MaskL1Params

    @classmethod
    def targets(cls, cfg: SparsityConfig, params: Any, model: nn.Module, example_inputs: Any) -> Targets:
        """The BNs of the mask file (narrowed by include/exclude); each regularizes its NOT-keep channels."""
        keep = load_mask(params.mask, model)
        names = narrow(list(keep), cfg.include, cfg.exclude, where=f"layer of mask file {params.mask}")
        return Targets(names, [~keep[n] for n in names])


@register_regularizer
class Polarization(Regularizer):
    """``polarization``: ``polarization_penalty`` added to the loss; gammas clamped after each step."""

    name = "polarization"
    method = "polarization"
    Params = PolarizationParams

    def __init__(self, lbd: float = 0.0, layer_weights: Sequence[float] | None = None, clamp: float | None = 1.0,
                 t: float = 1.0, alpha: float = 1.0, detach_mean: bool = False) -> None:
        super().__init__(lbd, layer_weights, clamp)
        self.t, self.alpha, self.detach_mean = float(t), float(alpha), bool(detach_mean)
        self._flat_weights: Tensor | None = None

    @classmethod
    def from_params(cls, params: Any, targets: Targets, layer_weights: Sequence[float] | None = None) -> "Regularizer":
        return cls(params.lbd, layer_weights, params.clamp, params.t, params.alpha, params.detach_mean)

    def reset(self) -> None:
        self._flat_weights = None

    def penalty(self, gammas: list[Tensor]) -> Tensor | None:
        if self.lbd == 0.0:
            return None
        if self.layer_weights is not None and self._flat_weights is None:
            self._flat_weights = flat_layer_weights(gammas, self.layer_weights)
        return polarization_penalty(gammas, self.lbd, self.t, self.alpha, self.detach_mean, self._flat_weights)


def regularizer_class(name: str, where: str = "") -> type[Regularizer]:
    """The class registered as ``name``; a one-line error (after ``where``) listing the known names otherwise."""
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise PolarpruneError(f"{where}unknown regularizer {name!r}; known: {', '.join(REGULARIZERS)}") from None


def regularizer_params(cfg: SparsityConfig, source: str = "config") -> RegularizerParams:
    """The regularizer's own parameters of a sparsity section, checked by its ``Params`` (defaults filled);
    a one-line error naming the key (``sparsity.lbd``) otherwise. The one check of these keys."""
    kind = regularizer_class(cfg.regularizer, where=f"{source}: sparsity.regularizer: ")
    try:
        return kind.Params.model_validate(cfg.regularizer_options())
    except ValidationError as exc:
        raise PolarpruneError(format_validation_error(exc, source, prefix="sparsity")) from None


def resolve_sparsity(cfg: SparsityConfig, source: str = "config") -> SparsityConfig:
    """``cfg`` checked by its regularizer, with every parameter of it spelled out (defaults included),
    as a training run uses it and saves it in ``config.yaml``."""
    params = regularizer_params(cfg, source)
    common = cfg.model_dump(include=set(SparsityConfig.model_fields))
    return SparsityConfig.model_validate({**common, **params.model_dump()})


def make_regularizer(name: str, **options: Any) -> Regularizer:
    """``regularizer_class(name)(**options)``, e.g. ``make_regularizer("polarization", lbd=1e-4, t=1.2)``."""
    cls = regularizer_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise PolarpruneError(f"regularizer {name!r}: {exc}") from None


class SparsityHook(TrainHook):
    """Applies one ``Regularizer`` to the named BN gammas at its moments of a training step.

    With ``target_macs_ratio`` a ``grad`` trial prune runs at every epoch end (and, with ``check_every``, after
    every that many steps of an epoch: a strong regularizer can cross the target by far within one epoch);
    once it leaves at most that fraction of the MACs, lambda is 0 for the rest of the run, and with
    ``freeze_on_target`` the regularized gammas get no more updates (the original freezes them).
    ``target_latency_ratio`` works alike on the trial's cost model (a latency model the caller built into
    ``trial``); with both targets the first one reached stops the regularizer.
    ``clamp_all``: clamp every BN's gamma (the original).
    """

    def __init__(self, regularizer: Regularizer, bn_names: Sequence[str], *, target_macs_ratio: float | None = None,
                 trial: Any | None = None, freeze_on_target: bool = False, clamp_all: bool = False,
                 check_every: int | None = None, target_latency_ratio: float | None = None) -> None:
        targeted = target_macs_ratio is not None or target_latency_ratio is not None
        if targeted and trial is None:
            raise ValueError("a MACs or latency target needs a trial pruner")
        if check_every is not None and (not targeted or check_every < 1):
            raise ValueError("check_every needs a target and is at least 1")
        self.check_every = check_every
        self._epoch_steps = 0
        self._epoch = 0
        self.freeze_on_target = bool(freeze_on_target)
        self.clamp_all = bool(clamp_all)
        self._all_gammas: list[Tensor] = []
        self.regularizer = regularizer
        self.bn_names = list(bn_names)
        self.base_lbd = regularizer.lbd
        self.target_macs_ratio = target_macs_ratio
        self.target_latency_ratio = target_latency_ratio
        self.trial = trial
        self.target_reached = False
        self.reached_epoch: int | None = None
        self._model_id: int | None = None
        self._gammas: list[Tensor] = []

    @property
    def lbd(self) -> float:
        """The regularizer's current strength."""
        return self.regularizer.lbd

    @property
    def layer_weights(self) -> dict[str, float] | None:
        """BN name -> lambda factor (None: unweighted)."""
        weights = self.regularizer.layer_weights
        return dict(zip(self.bn_names, weights)) if weights is not None else None

    def gammas(self, model: nn.Module) -> list[Tensor]:
        """The regularized gamma parameters of ``model``, in ``bn_names`` order (resolved once per model)."""
        if self._model_id != id(model):
            self._gammas = [model.get_submodule(name).weight for name in self.bn_names]  # type: ignore[misc]
            self._all_gammas = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
            self._model_id = id(model)
            self.regularizer.reset()
        return self._gammas

    def loss_term(self, model: nn.Module) -> Tensor | None:
        return self.regularizer.penalty(self.gammas(model))

    @property
    def frozen(self) -> bool:
        """True once the MACs target is reached with ``freeze_on_target``: the regularized gammas stay as they are."""
        return self.freeze_on_target and self.target_reached

    def after_backward(self, model: nn.Module) -> None:
        if self.frozen:  # no gradient: the optimizer skips them (no momentum, no weight decay)
            for gamma in self.gammas(model):
                gamma.grad = None
            return
        self.regularizer.after_backward(self.gammas(model))

    def on_train_start(self, model: nn.Module, total_epochs: int) -> None:
        self._epoch_steps = 0  # runs resume at epoch boundaries

    def after_step(self, model: nn.Module) -> None:
        gammas = self.gammas(model)
        self.regularizer.after_step(gammas)
        if self.clamp_all and self.regularizer.clamp is not None:
            clamp_(self._all_gammas, self.regularizer.clamp)
        self._epoch_steps += 1
        if self.check_every is not None and not self.target_reached and self._epoch_steps % self.check_every == 0:
            self._check_target(model, self._epoch, f"step {self._epoch_steps} of epoch {self._epoch + 1}")

    @property
    def targeted(self) -> bool:
        """Whether a MACs or a latency target is set."""
        return self.target_macs_ratio is not None or self.target_latency_ratio is not None

    def _check_target(self, model: nn.Module, epoch: int, moment: str, cache_key: int | None = None) -> dict[str, float]:
        """Trial-prune now (``cache_key``: the trial's per-epoch cache, None mid-epoch); on reaching a target,
        lambda 0. Returns the ratios of the targets set (``trial_macs_ratio_grad``, ``trial_latency_ratio_grad``)."""
        decision = self.trial.decide(model, "grad", epoch=cache_key)  # type: ignore[union-attr]
        checks = [(what, key, ratio, target) for what, key, ratio, target in (
            ("MACs", "trial_macs_ratio_grad", decision.macs_ratio, self.target_macs_ratio),
            ("predicted latency", "trial_latency_ratio_grad", decision.cost_ratio, self.target_latency_ratio))
            if target is not None]
        met = [(what, ratio, target) for what, _, ratio, target in checks if ratio <= target]
        if met:
            self.set_lambda(0.0)
            self.target_reached = True
            self.reached_epoch = epoch
            log.warning("sparsity: trial prune (grad) leaves %.3f of the %s <= target %.3f after %s; "
                        "lambda set to 0 for the rest of training", met[0][1], met[0][0], met[0][2], moment)
        return {key: ratio for _, key, ratio, _ in checks}

    def on_epoch_end(self, model: nn.Module, epoch: int, writer: Any | None = None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.targeted and not self.target_reached:
            metrics.update(self._check_target(model, epoch, f"the end of epoch {epoch + 1}", cache_key=epoch))
        self._epoch, self._epoch_steps = epoch + 1, 0
        metrics["lambda"] = self.lbd
        metrics["sparsity_target_reached"] = float(self.target_reached)
        return metrics

    def set_lambda(self, value: float) -> None:
        """Change the regularizer's strength."""
        self.regularizer.set_lambda(value)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint: the current lambda, whether (and when) the MACs target was met, and
        the epoch the next step belongs to (for mid-epoch checks after a resume)."""
        return {"lbd": self.lbd, "target_reached": self.target_reached, "reached_epoch": self.reached_epoch,
                "next_epoch": self._epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.set_lambda(float(state.get("lbd", self.base_lbd)))
        self.target_reached = bool(state.get("target_reached", False))
        reached = state.get("reached_epoch")
        self.reached_epoch = int(reached) if reached is not None else None
        self._epoch = int(state.get("next_epoch", 0))


__all__ = ["l1_penalty", "l1_scales", "add_scaled_sign_", "add_l1_subgradient_", "polarization_penalty",
           "flat_layer_weights", "clamp_", "linear_map", "flops_weights", "Targets", "Regularizer", "NoRegularizer",
           "L1", "MaskL1", "Polarization", "REGULARIZERS", "register_regularizer", "regularizer_class",
           "make_regularizer", "SparsityHook", "RegularizerParams", "PolarizationParams", "MaskL1Params",
           "regularizer_params", "resolve_sparsity"]
