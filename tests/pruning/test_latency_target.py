"""The latency cost model and ``latency-target``: with a fake runtime whose per-layer costs are known
exactly (in * out * kernel area per conv/linear, nothing else costs), the tables, their cache and
the greedy's choice are worked out by hand. One slow test compares a real eager prediction with a
measurement within a generous bound. No timing assertions elsewhere."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import prune_model
from polarprune.pruning.graph import analysed_copy
from polarprune.pruning.latency_cost import LatencyCost, LayerTable, layer_probes, profile_latency, width_grid
from polarprune.pruning.options import parse_options
from polarprune.pruning.resolve import decide
from latency_fakes import X, Counting, fake_cost, fake_ms, tiny  # noqa: F401


KEY = {"cpu": "fake", "runtime": "fake", "threads": 1, "batch": 1}


def test_width_grid_keeps_one_and_full_and_thins():
    assert width_grid(4, 8) == [1, 2, 3, 4] and width_grid(16, 8) == [1, 4, 8, 12, 16]  # narrow: a finer step
    assert width_grid(64, 8) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    grid = width_grid(256, 16, max_points=6)
    assert len(grid) == 6 and grid[0] == 1 and grid[-1] == 256 and grid == sorted(grid)


def test_table_interpolates_bilinearly_and_clamps():
    table = LayerTable([1, 5], [2, 6], [[2.0, 6.0], [10.0, 30.0]])  # in * out
    assert table.at(1, 2) == 2.0 and table.at(5, 6) == 30.0
    assert table.at(3, 4) == pytest.approx(12.0)  # bilinear: exact for in * out
    assert table.at(9, 9) == 30.0 and table.at(0, 0) == 2.0


def test_probes_record_input_shapes_and_calls():
    probes = layer_probes(tiny(), X)
    assert list(probes) == ["0", "3", "8"]
    assert probes["0"].input_shape == (1, 4, 4) and probes["8"].input_shape == (4,)
    assert probes["3"].in_channels == 4 and probes["3"].out_channels == 4 and probes["3"].calls == 1


def test_prediction_is_exact_for_the_fake_runtime(tmp_path):
    model = tiny()
    cost = profile_latency(model, X, fake_ms, KEY, tmp_path, step=1)
    analysis = analysed_copy(model, X)
    assert cost.rest_ms == 0.0  # the whole model costs exactly its layers
    assert cost.cost(analysis, {}, ()) == pytest.approx(4 + 16 + 8)
    training = tiny().train()
    profile_latency(training, X, fake_ms, KEY, tmp_path)
    assert training.training and training[1].training  # timed in eval mode, the caller's modes restored
    removed = {("3", "in"): {0}, ("0", "out"): {0}, ("3", "out"): {0, 1}, ("8", "in"): {0, 1}}
    assert cost.cost(analysis, removed, ()) == pytest.approx(3 + 3 * 2 + 2 * 2)
    group = next(g for g in analysis.prunable_groups() if "1" in g.bn_names)
    assert list(cost.steps(analysis, group)) == [1, 2, 3, 4]  # every width measured, every channel saves time
    tables = dict(cost.tables)
    tables["3"] = LayerTable([1, 4], tables["3"].out_widths, [tables["3"].ms[0], tables["3"].ms[3]])  # conv2's input: 1, 4
    coarse = LatencyCost(tables, cost.calls, cost.rest_ms)
    assert list(coarse.steps(analysis, group)) == [1, 4]  # only widths every touched layer was measured at


def test_a_runners_own_cost_counts_once(tmp_path):
    """A runtime whose every call costs 10 more (the null probe's time): the tables leave it out and
    the fixed rest keeps it once, so the unpruned prediction is the whole model's 28 + 10."""
    model = tiny()
    cost = profile_latency(model, X, lambda items: [fake_cost(m) + 10.0 for m, _ in items], KEY, tmp_path, step=1)
    assert cost.rest_ms == pytest.approx(10.0)
    assert cost.tables["3"].at(4, 4) == pytest.approx(16.0) and cost.tables["3"].at(1, 1) == pytest.approx(1.0)
    assert cost.cost(analysed_copy(model, X), {}, ()) == pytest.approx(38.0)


def test_cache_round_trips_and_is_keyed_by_threads_and_batch(tmp_path):
    model = tiny()
    first = Counting()
    cost = profile_latency(model, X, first, KEY, tmp_path)
    assert first.calls > 0 and list(tmp_path.glob("*.json"))
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["key"]["threads"] == 1 and "shape" in stored
    again = Counting()
    cached = profile_latency(model, X, again, KEY, tmp_path)
    assert again.calls == 0  # every table and the fixed rest came from the cache
    assert {n: t.ms for n, t in cached.tables.items()} == {n: t.ms for n, t in cost.tables.items()}
    for other in ({**KEY, "threads": 2}, {**KEY, "batch": 8}):
        fresh = Counting()
        profile_latency(model, X, fresh, other, tmp_path)
        assert fresh.calls == first.calls  # a different thread count or batch misses the cache


def test_latency_target_removes_the_hand_worked_channels(tmp_path):
    """Costs: conv1 = w1, conv2 = w1*w2, linear = 2*w2 (28 unpruned, goal 14 at R = 0.5). The cheapest
    score per ms saved goes first: bn2 ch1 (0.05/6 -> 22), bn1 ch0 (0.1/4 -> 18). Then both offers reach
    the goal (bn1 ch3 -> 14, bn2 ch0 -> 13): the one landing closest below it goes (14)."""
    model = tiny()
    cost = profile_latency(model, X, fake_ms, KEY, tmp_path, step=1)
    decision = decide(analysed_copy(model, X), "latency-target", target_latency_reduction=0.5, cost=cost)
    assert decision.bn_keep["1"].tolist() == [False, True, True, False]
    assert decision.bn_keep["4"].tolist() == [True, False, True, True]
    assert decision.estimated_cost == pytest.approx(14.0) and decision.estimated_cost_before == pytest.approx(28.0)
    pruned, report = prune_model(model, X, "latency-target", target_latency_reduction=0.5, cost=cost)
    assert (pruned[0].out_channels, pruned[3].in_channels, pruned[3].out_channels, pruned[8].in_features) == (2, 2, 3, 3)
    assert any("predicted" in note for note in report.notes)


def test_latency_target_stops_where_the_target_is_met(tmp_path):
    """Goal 25.2 at R = 0.1: bn1 ch0 (-> 23) and bn2 ch1 (-> 22) both reach it; 23 lands closest."""
    cost = profile_latency(tiny(), X, fake_ms, KEY, tmp_path, step=1)
    decision = decide(analysed_copy(tiny(), X), "latency-target", target_latency_reduction=0.1, cost=cost)
    assert decision.estimated_cost == pytest.approx(23.0)
    assert decision.bn_keep["1"].tolist() == [False, True, True, True] and decision.bn_keep["4"].all()


def test_latency_target_prunes_a_cifar_resnet_with_the_fake_runtime(tmp_path):
    """A family with the original's accounting (CIFAR ResNets): latency-target has no per-BN choice to
    account, so the report says so instead of failing; the predicted cut reaches the target."""
    torch.manual_seed(0)
    model = create("resnet20", 10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.0, 1.0)
    x = torch.randn(1, 3, 32, 32)
    cost = profile_latency(model, x, fake_ms, KEY, tmp_path)
    pruned, report = prune_model(model, x, "latency-target", target_latency_reduction=0.3, cost=cost)
    predicted = cost.cost(analysed_copy(pruned, x), {}, ()) / cost.cost(analysed_copy(model, x), {}, ())
    assert 0.6 < predicted <= 0.7 + 1e-9 and report.macs_original_accounting is None
    assert pruned(x).shape == (1, 10) and report.channels_after < report.channels_before


def test_latency_threshold_removes_the_smallest_gammas_wherever_they_are(tmp_path):
    """The same costs (28 unpruned, goal ratio 0.5). One global threshold: removing |gamma| < t gives 22
    (bn2 0.05), 18 (+ bn1 0.1), 13 (+ bn2 0.2), 10 (+ bn1 0.3); 13 / 28 = 0.464 is the closest to 0.5. So bn2's
    0.2 goes where latency-target's greedy removed bn1's 0.3 (it saves more) and landed at 14."""
    model = tiny()
    cost = profile_latency(model, X, fake_ms, KEY, tmp_path, step=1)
    decision = decide(analysed_copy(model, X), "latency-threshold", target_latency_reduction=0.5, cost=cost)
    assert decision.bn_keep["1"].tolist() == [False, True, True, True]
    assert decision.bn_keep["4"].tolist() == [False, False, True, True]
    assert decision.estimated_cost == pytest.approx(13.0) and 0.2 < decision.threshold <= 0.3
    pruned, report = prune_model(model, X, "latency-threshold", target_latency_reduction=0.5, cost=cost)
    assert (pruned[0].out_channels, pruned[3].in_channels, pruned[3].out_channels, pruned[8].in_features) == (3, 3, 2, 2)
    assert any("latency-threshold: threshold" in note for note in report.notes)


@pytest.mark.parametrize("strategy", ["latency-target", "latency-threshold"])
def test_latency_strategies_refuse_a_macs_cost_model(strategy):
    with pytest.raises(PolarpruneError, match=f"strategy '{strategy}' needs a latency cost model"):
        decide(analysed_copy(tiny(), X), strategy, target_latency_reduction=0.5)


def test_latency_target_without_a_latency_cost_model_is_one_line():
    with pytest.raises(PolarpruneError, match="needs a latency cost model"):
        decide(analysed_copy(tiny(), X), "latency-target", target_latency_reduction=0.5)


@pytest.mark.parametrize("value", [0, 1.2, 1.0, -0.1])
def test_target_latency_reduction_outside_zero_one_is_one_line(value):
    with pytest.raises(PolarpruneError, match="target_latency_reduction"):
        parse_options("latency-target", target_latency_reduction=value)


def test_latency_target_needs_its_target():
    with pytest.raises(PolarpruneError, match="needs target_latency_reduction"):
        parse_options("latency-target")
