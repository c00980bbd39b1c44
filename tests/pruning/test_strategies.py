"""Threshold strategies: valley finding, counts, min_channels, errors."""

from __future__ import annotations

import logging

import pytest
import torch

from polarprune.errors import PolarpruneError
from polarprune.pruning.strategies import (
    GRAD_FALLBACK_THRESHOLD,
    count_to_remove,
    grad_threshold,
    histogram_valley,
    select_channels,
)


def bimodal(seed: int = 0) -> torch.Tensor:
    """Polarized gammas: 35 near 0 with decreasing counts over bins 0..2, 60 spread over 0.5..0.7."""
    g = torch.Generator().manual_seed(seed)
    low = torch.cat([torch.full((20,), 0.004), torch.full((10,), 0.015), torch.full((5,), 0.025)])
    high = 0.5 + torch.rand(60, generator=g) * 0.2
    return torch.cat([low, high])


def increasing_histogram() -> torch.Tensor:
    """Bin k of 100 on [0, 1] holds k+1 values: strictly increasing counts, no valley."""
    return torch.cat([torch.full((k + 1,), (k + 0.5) / 100) for k in range(100)])


def test_histogram_valley_hand_computed() -> None:
    # counts 5 3 1 2 4: d = -2 -2 1 2 -> first i with d[i] <= 0 <= d[i+1] is i=1 -> bin 2
    assert histogram_valley(torch.tensor([5.0, 3, 1, 2, 4])) == 2
    assert histogram_valley(torch.tensor([1.0, 2, 3, 4])) is None
    assert histogram_valley(torch.tensor([4.0, 3, 2, 1])) is None


def test_grad_threshold_hand_computed_edges() -> None:
    # 10 bins on [0, 1]: 3 values in bin 0, 1 in bin 1, 0 in bin 2, 2 in bin 5 -> d = -2,-1,0,...
    values = torch.tensor([0.01, 0.02, 0.03, 0.15, 0.55, 0.56])
    cut, how = grad_threshold(values, bins=10)
    # d[0]=-2, d[1]=-1, d[2]=0 -> i=1 (d[1]<=0<=d[2]) -> left edge of bin 2 = 0.2
    assert how == "valley"
    assert cut == pytest.approx(0.2)


def test_grad_finds_valley_of_bimodal() -> None:
    values = bimodal()
    cut, how = grad_threshold(values)
    # counts 20, 10, 5, 0: d = -10, -5, -5, 0 -> valley at bin 3 -> threshold 0.03
    assert how == "valley"
    assert cut == pytest.approx(0.03)
    assert int((values > cut).sum()) == 60  # exactly the high cluster survives


def test_grad_fallback_without_valley() -> None:
    # strictly increasing counts: no valley
    values = torch.tensor([0.5] + [0.9] * 2 + [0.99] * 3)
    assert grad_threshold(values, bins=3) == (GRAD_FALLBACK_THRESHOLD, "fallback-fixed")
    assert grad_threshold(increasing_histogram()) == (GRAD_FALLBACK_THRESHOLD, "fallback-fixed")


def test_grad_leading_empty_bins_cut_at_first_edge() -> None:
    # no gamma in bin 0: d[0] = 0 <= 0 <= d[1] -> the valley is bin 1 (as in the seed code)
    cut, how = grad_threshold(torch.tensor([0.5, 0.6, 0.6]))
    assert how == "valley" and cut == pytest.approx(0.01)


def test_grad_warns_above_point_two(caplog: pytest.LogCaptureFixture) -> None:
    # 10 bins, counts 6 5 4 1 3: d = -1 -1 -3 2 -> valley at bin 3 -> 0.3
    values = torch.tensor([0.05] * 6 + [0.15] * 5 + [0.25] * 4 + [0.35] + [0.45] * 3)
    with caplog.at_level(logging.WARNING):
        cut, how = grad_threshold(values, bins=10)
    assert how == "valley" and cut == pytest.approx(0.3)
    assert any("exceeds" in r.message for r in caplog.records)


def test_select_grad_per_layer_and_notes() -> None:
    scores = {"a": bimodal(seed=1), "b": increasing_histogram()}
    res = select_channels(scores, "grad")
    assert res.kept_counts()["a"] == 60
    assert res.thresholds["a"] == pytest.approx(0.03)
    assert res.thresholds["b"] == GRAD_FALLBACK_THRESHOLD
    assert res.kept_counts()["b"] == 5050 - 1  # only bin 0 (one value at 0.005) is <= 0.01
    assert any("no histogram valley" in n for n in res.notes)


def test_fixed_counts() -> None:
    scores = {"a": torch.tensor([0.0, 0.005, 0.02, 0.5]), "b": torch.tensor([0.011, 0.009])}
    res = select_channels(scores, "fixed", threshold=0.01)
    assert res.keep["a"].tolist() == [False, False, True, True]
    assert res.keep["b"].tolist() == [True, False]
    assert res.thresholds == {"a": 0.01, "b": 0.01}


def test_percent_is_global_and_exact() -> None:
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([0.05, 0.9, 0.8, 0.7])}
    res = select_channels(scores, "percent", percent=0.5)
    # 4 smallest of 8 overall: 0.05 (b), 0.1 0.2 0.3 (a)
    assert res.keep["a"].tolist() == [False, False, False, True]
    assert res.keep["b"].tolist() == [False, True, True, True]
    assert res.thresholds["a"] == pytest.approx(0.3)


def test_percent_ties_exact_count() -> None:
    scores = {"a": torch.zeros(10)}
    res = select_channels(scores, "percent", percent=0.3, min_channels=0)
    assert res.kept_counts()["a"] == 7


@pytest.mark.parametrize("strategy", ["uniform", "l1-norm"])
def test_uniform_and_l1_remove_smallest_per_layer(strategy: str) -> None:
    scores = {"a": torch.tensor([4.0, 1.0, 3.0, 2.0]), "b": torch.arange(10, dtype=torch.float32)}
    res = select_channels(scores, strategy, ratio=0.5)
    assert res.keep["a"].tolist() == [True, False, True, False]
    assert res.keep["b"].tolist() == [False] * 5 + [True] * 5


def test_ratio_dict_and_rounding() -> None:
    scores = {"a": torch.arange(10, dtype=torch.float32), "b": torch.arange(3, dtype=torch.float32)}
    res = select_channels(scores, "uniform", ratio={"a": 0.25})
    assert res.kept_counts() == {"a": 7, "b": 3}  # 2.5 rounds half up to 3; b missing -> 0
    assert count_to_remove(0.3, 16) == 5
    assert count_to_remove(1.0, 4) == 4


def test_random_counts_and_seed() -> None:
    scores = {"a": torch.ones(32), "b": torch.ones(20)}
    r1 = select_channels(scores, "random", ratio=0.25, seed=3)
    r2 = select_channels(scores, "random", ratio=0.25, seed=3)
    r3 = select_channels(scores, "random", ratio=0.25, seed=4)
    assert r1.kept_counts() == {"a": 24, "b": 15}
    assert all(torch.equal(r1.keep[k], r2.keep[k]) for k in scores)
    assert not all(torch.equal(r1.keep[k], r3.keep[k]) for k in scores)


def test_min_channels_keeps_largest() -> None:
    scores = {"a": torch.tensor([0.001, 0.003, 0.002, 0.0])}
    res = select_channels(scores, "fixed", threshold=0.01, min_channels=2)
    assert res.keep["a"].tolist() == [False, True, True, False]
    assert any("min_channels" in n for n in res.notes)
    res = select_channels(scores, "uniform", ratio=1.0, min_channels=1)
    assert res.keep["a"].tolist() == [False, True, False, False]
    res = select_channels(scores, "uniform", ratio=1.0, min_channels=0)
    assert res.kept_counts()["a"] == 0


def test_errors_are_one_line() -> None:
    with pytest.raises(PolarpruneError, match="unknown pruning strategy"):
        select_channels({"a": torch.ones(3)}, "search")
    with pytest.raises(PolarpruneError, match="needs a ratio"):
        select_channels({"a": torch.ones(3)}, "uniform")
    with pytest.raises(PolarpruneError, match="nonnegative"):
        select_channels({"a": torch.tensor([-1.0, 1.0])}, "fixed")
    with pytest.raises(PolarpruneError, match="1-D"):
        select_channels({"a": torch.ones(2, 2)}, "fixed")
    with pytest.raises(PolarpruneError, match="percent"):
        select_channels({"a": torch.ones(3)}, "percent", percent=50)
