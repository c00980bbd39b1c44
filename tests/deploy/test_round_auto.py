"""``round_to: auto`` (the default outside the test suite): kept widths snap up to the widths the runtime's
latency tables say pay, and a pruned model that is not faster than the unpruned one is reported with a
warning naming the runtime. The runtime is a fake whose costs are known exactly (``latency_fakes.blocked_ms``:
latency flat between multiples of a block), the end-to-end comparison a fixed answer."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import polarprune
import polarprune.deploy.latency_cost as lc
from polarprune.cli import main
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import options as prune_options
from polarprune.pruning import prune_model
from polarprune.pruning.resolve import snapped_width

from latency_fakes import blocked_ms

X = torch.randn(1, 1, 8, 8)
# small_cnn's prunable BNs, their widths and how many channels the threshold 0.5 keeps in each
KEPT = {"features.1": (32, 19), "features.4": (32, 9), "features.8": (64, 33), "features.11": (64, 40),
        "classifier.1": (64, 64)}


@pytest.fixture(autouse=True)
def auto_default(monkeypatch):
    """This module tests the real default (tests/conftest.py sets it to 1 for the rest of the suite)."""
    monkeypatch.setattr(prune_options, "DEFAULT_ROUND_TO", "auto")


def model() -> torch.nn.Module:
    """small_cnn whose BNs keep ``KEPT`` channels at the threshold 0.5 (kept gammas >= 0.6, removed ones < 0.5,
    all distinct and shuffled, so the best removed channels are known)."""
    torch.manual_seed(0)
    net = create("small_cnn", 10, in_channels=1).eval()
    with torch.no_grad():
        for name, (width, kept) in KEPT.items():
            values = torch.cat([0.6 + torch.arange(kept) / 100, 0.45 - torch.arange(width - kept) / 1000])
            net.get_submodule(name).weight.copy_(values[torch.randperm(width)])
    return net


def widths(report) -> dict[str, int]:
    return {row.group: row.channels_after for row in report.rows}


def answer(ratio: float):
    """An end-to-end comparison answering ``ratio`` (pruned / unpruned)."""
    return lambda unpruned, pruned: ratio


def test_snapped_width_is_the_smallest_step_at_or_above() -> None:
    assert snapped_width(19, [8, 16, 24, 32], 32) == 24
    assert snapped_width(16, [8, 16, 24, 32], 32) == 16
    assert snapped_width(3, [8, 16, 24, 32], 32) == 8
    assert snapped_width(19, [16, 32], 32) == 32
    assert snapped_width(5, [], 32) == 32  # no step at all: the full width


def test_auto_is_the_default() -> None:
    assert prune_options.PruneOptions().round_to == "auto"
    assert prune_options.parse_options(round_to="8").round_to == 8
    for bad in (0, "seven", 2.5, True):
        with pytest.raises(PolarpruneError, match="prune option round_to: must be an integer >= 1 or 'auto'"):
            prune_options.parse_options(round_to=bad)


@pytest.mark.parametrize(("block", "expected"), [
    (8, {"features.1": 24, "features.4": 16, "features.8": 40, "features.11": 40, "classifier.1": 64}),
    # a width that costs as much as a wider one is never kept: 24 costs what 32 does, 40 what 48 does
    (16, {"features.1": 32, "features.4": 16, "features.8": 48, "features.11": 48, "classifier.1": 64}),
])
def test_auto_snaps_up_to_the_runtime_steps(tmp_path, block, expected) -> None:
    net = model()
    pruned, report, check = lc.prune_with_cost_model(net, X, strategy="fixed", threshold=0.5, cache_dir=tmp_path,
                                                     measure=blocked_ms(block), compare=answer(0.8))
    assert widths(report) == expected
    for name, after in expected.items():  # the channels added back are the best removed ones
        gammas = net.get_submodule(name).weight.detach()
        kept = torch.sort(torch.topk(gammas, after).indices).values
        assert torch.equal(pruned.get_submodule(name).weight.detach(), gammas[kept])
    assert check is not None and check.measured_ratio == 0.8 and not check.slower
    assert "measured latency in eager (batch 1, 1 thread): 0.80x the unpruned model's" in report.notes


def test_flops_target_searches_among_the_runtime_widths(tmp_path) -> None:
    """flops-target's bisection decides with the snapped widths, so every group lands on a step (a multiple of 8)
    and the MACs cut is the one of those widths."""
    _, report, _ = lc.prune_with_cost_model(model(), X, strategy="flops-target", target_macs_reduction=0.5, cache_dir=tmp_path,
                                            measure=blocked_ms(8), compare=answer(0.7))
    assert all(width % 8 == 0 for width in widths(report).values()), widths(report)
    assert min(widths(report).values()) < 32 and abs(report.macs_reduction - 0.5) < 0.1


def test_exact_counts_without_a_runtime(tmp_path) -> None:
    """round_to 1 never times anything; pruning.prune_model without a widths model keeps the exact counts."""
    def never(*args):
        raise AssertionError("timed without a runtime in play")

    exact = {name: kept for name, (_, kept) in KEPT.items()}
    _, report, check = lc.prune_with_cost_model(model(), X, strategy="fixed", threshold=0.5, round_to=1, cache_dir=tmp_path,
                                                measure=never, compare=never)
    assert widths(report) == exact and check is None
    assert widths(prune_model(model(), X, "fixed", threshold=0.5)[1]) == exact
    _, report, _ = lc.prune_with_cost_model(model(), X, strategy="fixed", threshold=0.5, round_to=8, cache_dir=tmp_path,
                                            measure=never, compare=never)
    assert widths(report)["features.4"] == 16 and widths(report)["features.11"] == 40
    linear = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))  # not an image model: exact widths
    assert lc.runtime_widths(linear, torch.randn(2, 4), prune_options.parse_options(), measure=never) is None
    scatter = prune_options.parse_options(residual="scatter")  # the original's accounting ignores rounding
    assert scatter.round_to == "auto" and lc.runtime_widths(model(), X, scatter, measure=never) is None


def test_a_slower_pruned_model_is_reported_naming_the_runtime(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="polarprune"):
        _, report, check = lc.prune_with_cost_model(model(), X, strategy="fixed", threshold=0.5, cache_dir=tmp_path,
                                                    measure=blocked_ms(8), compare=answer(1.25))
    assert check.slower and check.as_dict()["slower_than_unpruned"] is True
    warning = [n for n in report.notes if n.startswith("warning:")]
    assert warning == ["warning: the pruned model is not faster than the unpruned one in eager (batch 1, 1 thread): "
                       "measured 1.25x its latency (try another round_to, or --strategy latency-target)"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning[0].removeprefix("warning: ")]


def test_the_check_times_both_models_in_the_runtime(tmp_path, monkeypatch) -> None:
    """The real side-by-side check with fake timers (every timed call lasts 1 ms): equal latency is 'not faster'."""
    from latency_fakes import fixed_rounds

    net = model()
    pruned, report = prune_model(net, X, "fixed", threshold=0.5, round_to=8)
    fixed_rounds(monkeypatch, [0.001])
    check = lc.check_latency(net, pruned, X, prune_options.parse_options(runtime="eager", batch=2), report)
    assert (check.measured_ratio, check.slower, check.batch) == (1.0, True, 2)
    assert report.notes[-1].startswith("warning: the pruned model is not faster than the unpruned one in eager (batch 2, 1 thread)")


def test_no_measure_skips_the_check(tmp_path) -> None:
    def never(*args):
        raise AssertionError("timed with measure_latency off")

    _, report, check = lc.prune_with_cost_model(model(), X, strategy="fixed", threshold=0.5, measure_latency=False,
                                                cache_dir=tmp_path, measure=blocked_ms(8), compare=never)
    assert check is None and widths(report)["features.1"] == 24


def test_the_python_api_prunes_to_the_runtime_widths(tmp_path) -> None:
    """``polarprune.prune_model`` is the runtime-aware entry point; its report carries the check."""
    pruned, report = polarprune.prune_model(model(), X, "fixed", threshold=0.5, cache_dir=tmp_path, measure=blocked_ms(8),
                                            compare=answer(1.0))
    assert widths(report)["features.1"] == 24 and pruned.features[0].out_channels == 24
    assert any("not faster than the unpruned one in eager" in note for note in report.notes)


def test_inplace_is_timed_against_the_unpruned_model(tmp_path) -> None:
    """``inplace=True`` prunes the caller's model; the check still compares with a copy of it before pruning."""
    net = model()
    seen = []
    compare = lambda unpruned, pruned: seen.append((unpruned.features[0].out_channels, pruned.features[0].out_channels)) or 0.9
    pruned, _ = polarprune.prune_model(net, X, "fixed", threshold=0.5, inplace=True, cache_dir=tmp_path, measure=blocked_ms(8),
                                       compare=compare)
    assert pruned is net and seen == [(32, 24)]
    with pytest.raises(PolarpruneError, match="drop inplace=True"):
        polarprune.prune_model(model(), X, "latency-target", target_latency_reduction=0.3, inplace=True, cache_dir=tmp_path,
                               measure=blocked_ms(8), compare=answer(0.7))


def test_the_prune_command_measures_and_warns(tmp_path, monkeypatch, capsys) -> None:
    """``polarprune prune`` with the default round_to: says it measures, prunes to the steps, warns when slower."""
    monkeypatch.setattr(lc, "runtime_measure", lambda *args, **kwargs: blocked_ms(8))
    monkeypatch.setattr(lc, "runtime_compare", lambda *args, **kwargs: answer(1.1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source, out, report_file = tmp_path / "m.safetensors", tmp_path / "p.safetensors", tmp_path / "r.json"
    polarprune.save(model(), source)
    assert main(["prune", str(source), "--strategy", "fixed", "--threshold", "0.5", "--out", str(out),
                 "--report", str(report_file)]) == 0
    printed, logged = capsys.readouterr()
    assert "measuring the latency of 6 layer shapes in eager at batch 1, 1 thread(s)" in logged
    assert "\nwarning: the pruned model is not faster than the unpruned one in eager" in printed
    result = json.loads(report_file.read_text())
    assert result["slower_than_unpruned"] is True and result["latency_runtime"] == "eager"
    assert {g["group"]: g["channels_after"] for g in result["layers"]}["features.4"] == 16
    assert main(["prune", str(source), "--strategy", "fixed", "--round-to", "x", "--out", str(out)]) == 1
    assert "--round-to: must be an integer >= 1 or 'auto', got 'x'" in capsys.readouterr().err
