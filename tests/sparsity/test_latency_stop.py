"""``sparsity.target_latency_ratio``: the sparsity hook stops on the trial prune's predicted latency.

The latency cost model is built from the fake runtime of tests/latency_fakes.py (every conv costs
in * out/groups * kernel area, every linear in * out, nothing else), so a predicted latency ratio is
the fake cost of the pruned model over the unpruned one's, exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from polarprune.config import SparsityConfig
from polarprune.errors import PolarpruneError
from polarprune.pruning import prune_model
from polarprune.pruning.latency_cost import profile_latency
from polarprune.sparsity import build_hooks
from polarprune.sparsity.regularizers import SparsityHook, make_regularizer
from polarprune.workflows.train import sparsity_cost_model
from latency_fakes import X, fake_cost, fake_ms, tiny

KEY = {"cpu": "fake", "runtime": "fake", "threads": 1, "batch": 1}
BNS = ["1", "4"]


class Trials:
    """Trial decisions with the given (MACs ratio, latency ratio) in turn."""

    def __init__(self, pairs: list[tuple[float, float]]) -> None:
        self.pairs = list(pairs)

    def decide(self, model, strategy, epoch=None) -> SimpleNamespace:
        macs, latency = self.pairs.pop(0)
        return SimpleNamespace(macs_ratio=macs, cost_ratio=latency)


def hook_with(trials: Trials, **targets: float) -> SparsityHook:
    return SparsityHook(make_regularizer("l1", lbd=0.1), BNS, trial=trials, freeze_on_target=True, **targets)


def test_the_latency_target_stops_on_the_latency_ratio_alone() -> None:
    model = tiny()
    hook = hook_with(Trials([(0.4, 0.9), (0.3, 0.6)]), target_latency_ratio=0.7)
    first = hook.on_epoch_end(model, 0)
    assert first["trial_latency_ratio_grad"] == 0.9 and "trial_macs_ratio_grad" not in first
    assert first["lambda"] == pytest.approx(0.1)  # a MACs ratio of 0.4 does not count without a MACs target
    second = hook.on_epoch_end(model, 1)
    assert second["lambda"] == 0.0 and second["sparsity_target_reached"] == 1.0 and hook.reached_epoch == 1
    assert hook.frozen


@pytest.mark.parametrize("pairs, epoch", [([(0.9, 0.8), (0.5, 0.75)], 1),  # MACs first
                                          ([(0.9, 0.8), (0.7, 0.5)], 1),  # latency first
                                          ([(0.9, 0.8), (0.7, 0.75), (0.7, 0.6)], 2)])
def test_with_both_targets_the_first_reached_stops(pairs, epoch) -> None:
    hook = hook_with(Trials(pairs), target_macs_ratio=0.6, target_latency_ratio=0.7)
    rows = [hook.on_epoch_end(tiny(), e) for e in range(len(pairs))]
    assert [r["sparsity_target_reached"] for r in rows] == [0.0] * epoch + [1.0]
    assert rows[-1]["trial_macs_ratio_grad"] == pairs[-1][0] and rows[-1]["trial_latency_ratio_grad"] == pairs[-1][1]


def test_the_latency_target_is_checked_every_n_steps() -> None:
    model = tiny()
    hook = hook_with(Trials([(1.0, 0.9), (1.0, 0.65)]), target_latency_ratio=0.7)
    hook.check_every = 2
    hook.on_train_start(model, 1)
    hook.after_step(model)
    hook.after_step(model)  # step 2: 0.9
    assert hook.lbd == pytest.approx(0.1)
    hook.after_step(model)
    hook.after_step(model)  # step 4: 0.65
    assert hook.lbd == 0.0 and hook.target_reached and hook.reached_epoch == 0


def polarized_tiny() -> torch.nn.Module:
    """``tiny`` with gammas grad removes two channels of bn1 and one of bn4 from."""
    model = tiny()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.001, 0.5, 0.9, 0.002]))
        model[4].weight.copy_(torch.tensor([0.8, 0.001, 0.7, 0.6]))
    return model


@pytest.mark.parametrize("target, reached", [(0.5, True), (0.45, False)])
def test_build_hooks_checks_the_fake_latency_of_the_grad_prune(tmp_path, target, reached) -> None:
    model = polarized_tiny()
    cost = profile_latency(model, X, fake_ms, KEY, tmp_path)
    cfg = SparsityConfig(regularizer="l1", lbd=0.1, target_latency_ratio=target, monitor=False)
    (hook,) = build_hooks(cfg, model, X, cost=cost)
    metrics = hook.on_epoch_end(model, 0)
    # grad keeps 2 of bn1's 4 channels and 3 of bn4's: conv1 1*2 of 1*4, conv2 2*3 of 4*4, linear 3*2 of 4*2
    assert metrics["trial_latency_ratio_grad"] == pytest.approx((2 + 6 + 6) / (4 + 16 + 8), rel=1e-9)
    pruned, _ = prune_model(model, X, "grad", bn_names=hook.bn_names)
    assert fake_cost(pruned) / fake_cost(model) == pytest.approx(metrics["trial_latency_ratio_grad"], rel=1e-9)
    assert metrics["sparsity_target_reached"] == float(reached) and (hook.lbd == 0.0) == reached


def test_a_latency_target_without_a_cost_model_or_with_bad_settings_is_one_line(tmp_path) -> None:
    cfg = SparsityConfig(regularizer="l1", lbd=0.1, target_latency_ratio=0.5)
    with pytest.raises(PolarpruneError, match="target_latency_ratio needs a latency cost model"):
        build_hooks(cfg, tiny(), X)
    bad = SparsityConfig(regularizer="l1", lbd=0.1, target_latency_ratio=0.5, latency_runtime="nope", latency_cache=str(tmp_path))
    with pytest.raises(PolarpruneError, match="nope") as info:
        sparsity_cost_model(bad, tiny(), X)
    assert "\n" not in str(info.value)
    assert sparsity_cost_model(SparsityConfig(regularizer="l1"), tiny(), X) is None
    for wrong in ({"target_latency_ratio": 1.5}, {"target_latency_ratio": 0.5, "latency_batch": 0}):
        with pytest.raises(ValueError):
            SparsityConfig(regularizer="l1", **wrong)
    assert SparsityConfig(regularizer="l1", target_latency_ratio=0.5, target_check_every=3).target_check_every == 3


def test_sparsity_cost_model_prices_a_copy_with_the_runtime_measure(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("polarprune.deploy.latency_cost.runtime_measure", lambda *args, **kwargs: fake_ms)
    model = tiny().double()
    cfg = SparsityConfig(regularizer="l1", target_latency_ratio=0.5, latency_cache=str(tmp_path))
    cost = sparsity_cost_model(cfg, model, X.double())
    assert next(model.parameters()).dtype == torch.float64  # the model itself is untouched
    assert cost.rest_ms == pytest.approx(0.0, abs=1e-9)
    assert cost.layer_ms("3", 4, 4) == fake_cost(model[3]) and list(tmp_path.iterdir())  # tables cached there
