"""``SparsityCallback``: a polarprune regularizer and its target stop in any ``LightningModule``'s training.

The callback builds the same hooks as polarprune's own trainer (``sparsity.build_hooks``) and runs them at
Lightning's matching moments, so the math is the regularizer's own:

- ``on_before_optimizer_step`` (gradients complete: accumulated, all-reduced, unscaled under AMP): the
  penalty term's gradient (``loss_term``, e.g. polarization) is added by its own ``backward``, then the
  gradient edits (``after_backward``: L1, mask-L1) run;
- ``on_train_batch_end`` after an optimizer step: ``after_step`` (clamp; with ``target_check_every`` the
  trial prune of the target stop);
- ``on_train_epoch_end``: the epoch's trial prune and gamma monitor; their numbers are logged as
  ``sparsity/<name>``.

Once a trial prune reaches ``target_macs_ratio`` or ``target_latency_ratio``, lambda is 0 and, with
``stop_on_target``, ``trainer.should_stop`` ends the fit. The callback's state (lambda, target reached) is
saved in Lightning checkpoints. pytorch-lightning is the ``lightning`` extra. docs/detection.md shows it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from pydantic import ValidationError
from torch import nn

from ..config import SparsityConfig, format_validation_error
from ..errors import PolarpruneError, require_extra
from ..pruning.cost import CostModel
from ..sparsity import SparsityHook, build_hooks, resolve_sparsity
from ..training.hooks import TrainHook
from ..workflows.train import sparsity_cost_model

pl = require_extra("pytorch_lightning", "lightning", "the Lightning sparsity callback")

log = logging.getLogger(__name__)
SOURCE = "SparsityCallback"


def sparsity_section(sparsity: SparsityConfig | Mapping[str, Any]) -> SparsityConfig:
    """A sparsity section (a mapping as in a config's ``sparsity:``) checked by its regularizer; one line otherwise."""
    try:
        cfg = sparsity if isinstance(sparsity, SparsityConfig) else SparsityConfig.model_validate(dict(sparsity))
    except ValidationError as exc:
        raise PolarpruneError(format_validation_error(exc, SOURCE, prefix="sparsity")) from None
    return resolve_sparsity(cfg, source=SOURCE)


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or lists, tuples and dicts of them) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class SparsityCallback(pl.Callback):
    """Sparsity training of ``pl_module`` (or its sub-module ``module``) by ``sparsity`` (a ``SparsityConfig``
    or its mapping: ``{"regularizer": "polarization", "lbd": 1e-4, "target_macs_ratio": 0.5, ...}``).
    ``example_inputs``: a small batch the model runs on (default: the module's ``example_input_array``);
    ``cost``: the latency cost model of ``target_latency_ratio`` (default: measured as polarprune's trainer
    does, in ``latency_runtime``)."""

    def __init__(self, sparsity: SparsityConfig | Mapping[str, Any], example_inputs: Any = None, *, module: str | None = None,
                 cost: CostModel | None = None, stop_on_target: bool = True, log_prefix: str = "sparsity/") -> None:
        super().__init__()
        self.cfg = sparsity_section(sparsity)
        self.example_inputs = example_inputs
        self.module_name = module
        self.cost = cost
        self.stop_on_target = bool(stop_on_target)
        self.log_prefix = log_prefix
        self.hooks: list[TrainHook] = []
        self.history: list[dict[str, float]] = []  # one row of logged numbers per epoch
        self._state: Mapping[str, Any] | None = None
        self._seen_step = 0

    @property
    def sparsity_hook(self) -> SparsityHook | None:
        """The hook applying the regularizer (None before the fit starts, or for ``none``)."""
        return next((h for h in self.hooks if isinstance(h, SparsityHook)), None)

    @property
    def target_reached(self) -> bool:
        """Whether a trial prune has reached the target."""
        hook = self.sparsity_hook
        return hook is not None and hook.target_reached

    def model_of(self, pl_module: nn.Module) -> nn.Module:
        """The regularized model: ``pl_module`` or its sub-module ``module``."""
        if self.module_name is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module_name)
        except AttributeError:
            raise PolarpruneError(f"{SOURCE}: the LightningModule has no sub-module {self.module_name!r}") from None

    def _example(self, pl_module: Any) -> Any:
        example = self.example_inputs if self.example_inputs is not None else getattr(pl_module, "example_input_array", None)
        if example is None:
            raise PolarpruneError(f"{SOURCE}: give example_inputs (a small batch) or set the module's example_input_array")
        return to_device(example, pl_module.device)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the hooks on the model as it trains (on its device); restore a checkpoint's state."""
        model = self.model_of(pl_module)
        example = self._example(pl_module)
        cost = self.cost if self.cost is not None else sparsity_cost_model(self.cfg, model, example)
        self.hooks = build_hooks(self.cfg, model, example, cost=cost)
        if self._state is not None and self.sparsity_hook is not None:
            self.sparsity_hook.load_state_dict(self._state)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model = self.model_of(pl_module)
        for hook in self.hooks:
            hook.on_train_start(model, int(trainer.max_epochs or 0))
        self._seen_step = trainer.global_step

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Gradients are final here: add the penalty's gradient, then the regularizers' gradient edits."""
        model = self.model_of(pl_module)
        with torch.enable_grad():  # AMP's plugin calls this outside the optimizer's closure
            for hook in self.hooks:
                term = hook.loss_term(model)
                if term is not None and term.requires_grad:
                    term.backward()
        for hook in self.hooks:
            hook.after_backward(model)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After each optimizer step (not each accumulated batch): clamp, and mid-epoch target checks."""
        if trainer.global_step == self._seen_step:
            return
        self._seen_step = trainer.global_step
        model = self.model_of(pl_module)
        for hook in self.hooks:
            hook.after_step(model)
        self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The epoch's trial prune and gamma numbers: logged, kept in ``history``; the target stop."""
        model = self.model_of(pl_module)
        writer = getattr(trainer.logger, "experiment", None) if trainer.is_global_zero else None
        writer = writer if hasattr(writer, "add_histogram") else None
        metrics: dict[str, float] = {}
        for hook in self.hooks:
            metrics.update(hook.on_epoch_end(model, trainer.current_epoch, writer))
        if metrics:
            self.history.append({"epoch": float(trainer.current_epoch), **metrics})
            pl_module.log_dict({f"{self.log_prefix}{k}": float(v) for k, v in metrics.items()}, on_step=False, on_epoch=True)
        self._maybe_stop(trainer)

    def _maybe_stop(self, trainer: Any) -> None:
        if self.stop_on_target and self.target_reached and not trainer.should_stop:
            log.info("%s: target reached at step %d; stopping the fit", SOURCE, trainer.global_step)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        hook = self.sparsity_hook
        return hook.state_dict() if hook is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = dict(state_dict) or None
        if self._state is not None and self.sparsity_hook is not None:
            self.sparsity_hook.load_state_dict(self._state)


__all__ = ["SparsityCallback", "sparsity_section", "to_device"]
