"""Trial prunes: what ``prune_model`` would remove now, without touching the model.

``TrialAnalysis`` analyses a model once (as ``prune_model`` does) and then decides from its *current*
gammas as often as asked (every epoch of a sparsity run); the analysed copy shares the model's
parameters and buffers, so a decision reads the live values and costs no copy. Its decisions are
priced by a cost model (``cost.MacsCost`` by default): ``cost_ratio`` is what a target stop reads.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import PolarpruneError
from ..models.entry import pruning_entry
from ..modes import restored_modes
from .cost import MACS, CostModel, channel_macs
from .graph import analyze, live_keep, prepare_for_pruning, traced_inputs
from .options import PruneOptions, parse_options
from .resolve import Decision, decide


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module structure whose parameters and buffers are the model's own tensors."""
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


class TrialAnalysis:
    """One dependency analysis of ``model``, reused for every trial decision of a run (``defaults``:
    ``PruneOptions`` fields of every decision; ``cost``: the cost model decisions are priced and
    searches aimed with; ``widths``: the one ``round_to: auto`` snaps to, None: exact widths); decisions
    are cached per (strategy, epoch)."""

    def __init__(self, model: nn.Module, example_inputs: Any, cost: CostModel = MACS, widths: CostModel | None = None,
                 **defaults: Any) -> None:
        self.defaults = parse_options(**defaults)
        self.cost, self.widths = cost, widths
        self.model = model
        with restored_modes(model):
            self._view = shared_copy(model)
            prepare_for_pruning(self._view, example_inputs)
            self.analysis = analyze(self._view, traced_inputs(self._view, example_inputs))
        self._cache: dict[tuple[str, int], Decision] = {}

    def _bind(self, model: nn.Module | None) -> None:
        """Read scores from ``model`` (same architecture, e.g. a copy): share its parameters."""
        if model is None or model is self.model:
            return
        live = dict(model.named_parameters())
        slots = {(f"{prefix}.{key}" if prefix else key): (module, key) for prefix, module in self._view.named_modules()
                 for key, value in module._parameters.items() if value is not None}  # None: a conv without bias
        missing = sorted(set(slots) ^ set(live))
        if missing:
            raise PolarpruneError(f"trial prune: the model has no parameter {missing[0]!r} (another architecture?)"
                                  if missing[0] in slots else f"trial prune: the analysed model has no parameter {missing[0]!r} (another architecture?)")
        for name, (module, key) in slots.items():
            module._parameters[key] = live[name]
        self.model = model
        self._cache.clear()

    def decide(self, model: nn.Module | None = None, strategy: str | None = None, *, epoch: int | None = None,
               options: PruneOptions | None = None, **fields: Any) -> Decision:
        """The decision ``prune_model(model, ..., strategy, **defaults, **fields)`` would make now
        (``options`` replaces the defaults; the strategy defaults to ``grad``)."""
        self._bind(model)
        plain = options is None and not fields
        key = (strategy, epoch)
        if epoch is not None and plain and key in self._cache:
            return self._cache[key]  # type: ignore[index]
        if options is None and strategy is None:
            strategy = "grad"
        opts = parse_options(strategy, options if options is not None else self.defaults, **fields)
        decision = decide(self.analysis, options=opts, quiet=True, cost=self.cost, widths=self.widths)
        if epoch is not None and plain:
            self._cache = {k: v for k, v in self._cache.items() if k[1] == epoch}
            self._cache[key] = decision  # type: ignore[index]
        return decision

    def macs_ratio(self, model: nn.Module | None = None, strategy: str = "grad", epoch: int | None = None, **options: Any) -> float:
        """MACs after / before that the pruning would give (equal to ``prune_model``'s report)."""
        return self.decide(model, strategy, epoch=epoch, **options).macs_ratio

    def cost_ratio(self, model: nn.Module | None = None, strategy: str = "grad", epoch: int | None = None, **options: Any) -> float:
        """Cost after / before under the trial's cost model (``MacsCost``: ``macs_ratio``)."""
        return self.decide(model, strategy, epoch=epoch, **options).cost_ratio

    def ratios(self, model: nn.Module | None = None, strategy: str = "grad", epoch: int | None = None, **options: Any) -> tuple[float, float]:
        """(MACs ratio, params ratio) after / before (params without compensation's biases)."""
        decision = self.decide(model, strategy, epoch=epoch, **options)
        return decision.macs_ratio, decision.params_ratio

    def keep_masks(self, model: nn.Module | None = None, strategy: str | None = None, **options: Any) -> dict[str, Any]:
        """Per BN of a prunable group, the channels the pruning would keep (``plan_pruning``)."""
        return live_keep(self.model, self.analysis, self.decide(model, strategy, **options).bn_keep)

    def channel_macs(self) -> dict[str, float]:
        """Per BN, the MACs one of its channels costs (the FLOPs weights of the regularizer); a BN the
        family's adapter split in parts (YOLO's ``cv1``) gets the mean of its parts'."""
        entry = pruning_entry(self.model)
        parts: dict[str, list[float]] = {}
        for name, value in channel_macs(self.analysis).items():
            parts.setdefault(entry.live(name), []).append(value)
        return {name: sum(values) / len(values) for name, values in parts.items()}


def trial_macs_ratio(model: nn.Module, example_inputs: Any, strategy: str = "grad", **prune_options: Any) -> float:
    """The MACs ratio (after / before) that ``prune_model`` with the same arguments would report."""
    return TrialAnalysis(model, example_inputs).macs_ratio(model, strategy, **prune_options)


__all__ = ["TrialAnalysis", "trial_macs_ratio", "shared_copy"]
