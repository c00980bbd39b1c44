"""The records of pruning (strategies, group rules), the cost seam, the one bisection, one counter for
every MACs/FLOPs figure, the paper accounting only on request, and the prune command's negating flags."""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import pytest
import torch
from torch import nn

from polarprune.errors import PolarpruneError
from polarprune.flops import count_model
from polarprune.models import create
from polarprune.pruning import TrialAnalysis, prune_model
from polarprune.pruning import api as pruning_api
from polarprune.pruning.api import analysed_copy
from polarprune.pruning.base import OUT, kept_width
from polarprune.pruning.cost import MacsCost
from polarprune.pruning.options import PruneOptions, parse_options
from polarprune.pruning.registry import (GROUP_RULES, PROGRESSIVE_KNOBS, SCORE_STRATEGIES, STRATEGIES, GroupRule, Strategy,
                                         register_group_rule, register_strategy, unregister_strategy)
from polarprune.pruning.resolve import decide
from polarprune.pruning.search import bisect_knob
from fixtures import tiny_digits_recipe
from test_pruning import one_thread  # noqa: F401  (one_thread: autouse fixture)


def graded_small_cnn(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = create("small_cnn", 10, in_channels=1, width=width).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.01)
                bn.running_var.uniform_(0.5, 1.5, generator=g)
    return model


def keep_first_half(scores: Mapping[str, torch.Tensor], args: dict[str, Any]) -> tuple[dict, dict, list]:
    """A toy selection: every layer keeps its first half of channels, whatever the scores."""
    keep = {}
    for name, layer in scores.items():
        keep[name] = torch.arange(layer.numel()) < (layer.numel() + 1) // 2
    return keep, {name: float("nan") for name in scores}, []


@pytest.fixture
def toy_strategy():
    record = register_strategy(Strategy("keep-first-half", "bn", select=keep_first_half, progressive=False))
    yield record
    unregister_strategy("keep-first-half")


def test_a_toy_strategy_is_one_record_plus_its_function(toy_strategy) -> None:
    # every reader of the registry sees it at call time: options, the score strategies, the CLI's choices
    assert "keep-first-half" in STRATEGIES and "keep-first-half" in SCORE_STRATEGIES
    assert "keep-first-half" not in PROGRESSIVE_KNOBS  # no knob: the progressive stage cannot aim it
    assert parse_options("keep-first-half").strategy == "keep-first-half"
    from polarprune.commands import prune as prune_command

    assert "keep-first-half" in tuple(prune_command.STRATEGY_CHOICES)
    model, x = graded_small_cnn(), torch.randn(2, 1, 8, 8)
    pruned, report = prune_model(model, x, "keep-first-half")
    convs = [m for m in pruned.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]
    # the first half, exactly: the pruned first conv is the original's first four filters
    assert torch.equal(convs[0].weight, model.features[0].weight[:4])
    assert report.strategy == "keep-first-half" and report.macs_after < report.macs_before


def test_an_unknown_strategy_names_the_registered_ones(toy_strategy) -> None:
    with pytest.raises(PolarpruneError, match="unknown pruning strategy 'nope'; choose one of .*keep-first-half"):
        parse_options("nope")
    with pytest.raises(PolarpruneError, match="decides by 'bn': it needs a select function"):
        register_strategy(Strategy("broken", "bn"))


def test_records_say_what_each_strategy_needs_and_aims() -> None:
    assert STRATEGIES["mask"].needs_mask_file and not STRATEGIES["fixed"].needs_mask_file
    assert STRATEGIES["flops-target"].needs_cost_model and STRATEGIES["flops-target"].aims == "fixed"
    assert dict(PROGRESSIVE_KNOBS) == {"fixed": "threshold", "percent": "percent", "uniform": "ratio", "l1-norm": "ratio",
                                       "random": "ratio", "flops-target": "target_macs_reduction"}
    assert set(SCORE_STRATEGIES) == set(STRATEGIES) - {"mask", "flops-target", "latency-target", "latency-threshold"}
    assert STRATEGIES["latency-target"].needs_cost_model and STRATEGIES["latency-target"].cost == "latency"
    assert STRATEGIES["flops-target"].cost == "macs" and STRATEGIES["latency-target"].needs == "target_latency_reduction"
    with pytest.raises(PolarpruneError, match="strategy 'percent' needs percent in \\[0, 1\\]"):
        parse_options("percent")


def test_a_toy_group_rule_is_one_record_plus_its_vote() -> None:
    """A rule that keeps a group channel only where no scored BN removes it, and more than one BN votes."""
    model = create("resnet20").eval()
    with torch.no_grad():
        model.layer1[0].bn2.weight[0] = 0.0  # one of four voters of stage 1's residual group removes channel 0
    analysis = analysed_copy(model, torch.zeros(1, 3, 32, 32))
    register_group_rule(GroupRule("veto", lambda yes, total, own: yes == total, "min"))
    try:
        vetoed = decide(analysis, "fixed", group_rule="veto")
        from polarprune.cli import build_parser

        for command in ("prune", "mask"):  # the commands offer a registered rule too
            assert build_parser().parse_args([command, "m.pt", "--group-rule", "veto", "--out", "x"]).group_rule == "veto"
    finally:
        GROUP_RULES.pop("veto")
    default = decide(analysis, "fixed")
    assert bool(vetoed.bn_keep["layer1.0.bn2"][0]) is False and bool(default.bn_keep["layer1.0.bn2"][0]) is True
    with pytest.raises(PolarpruneError, match="unknown group rule 'veto'"):
        parse_options("fixed", group_rule="veto")


def test_bisect_knob_finds_the_closest_probe() -> None:
    calls: list[float] = []

    def falling(x: float) -> tuple[float, str]:
        calls.append(x)
        return 1.0 - x, f"at {x}"

    best = bisect_knob(falling, 0.3, 0.0, 1.0, rounds=30)
    assert best.knob == pytest.approx(0.7, abs=1e-8) and best.result == f"at {best.knob}"
    calls.clear()
    early = bisect_knob(falling, 0.52, 0.0, 1.0, rounds=30, tolerance=0.05)
    assert calls == [0.0, 1.0, 0.5] and early.knob == 0.5  # stops at the first probe within tolerance
    calls.clear()
    beyond = bisect_knob(falling, -0.5, 0.0, 1.0, rounds=30)  # no knob reaches it: the end of the range
    assert calls == [0.0, 1.0] and beyond.knob == 1.0


class FirstLayerCost:
    """A fake cost model: only the first conv's MACs count (known exactly)."""

    name = "first-conv MACs"

    def cost(self, analysis, removed, removed_modules=()) -> float:
        layer = analysis.layer_costs["features.0"]
        return float(layer.macs(layer.in_channels, kept_width(layer.out_channels, removed, "features.0", OUT)))

    def steps(self, analysis, group):
        return range(1, group.num_channels + 1)


def test_flops_target_and_trials_aim_with_the_given_cost_model() -> None:
    model, x = graded_small_cnn(), torch.randn(2, 1, 8, 8)
    trial = TrialAnalysis(model, x, cost=FirstLayerCost())
    decision = trial.decide(model, "flops-target", target_macs_reduction=0.5)
    kept = int(decision.bn_keep["features.1"].sum())
    assert decision.cost_ratio == kept / 8 and abs(decision.cost_ratio - 0.5) <= 0.13  # 8 channels: steps of 1/8
    assert decision.macs_ratio != decision.cost_ratio  # the MACs are reported too, but not what was aimed at
    assert trial.cost_ratio(model, "fixed", threshold=0.0) == 1.0
    macs = TrialAnalysis(model, x).decide(model, "flops-target", target_macs_reduction=0.5)
    assert macs.cost_ratio == macs.macs_ratio and MacsCost() == MacsCost()


def test_a_no_op_prune_counts_what_flops_counts() -> None:
    """One counter: the report's MACs and FLOPs before and after a prune that removes nothing equal
    ``flops.count_model`` of the model (its option-A shortcut's index bookkeeping costs nothing)."""
    model = create("resnet20").eval()
    expected = count_model(model, (3, 32, 32))
    pruned, report = prune_model(model, torch.randn(1, 3, 32, 32), "fixed", threshold=0.0)
    assert (report.macs_before, report.flops_before, report.params_before) == (expected.macs, expected.flops, expected.params)
    assert (report.macs_after, report.flops_after) == (expected.macs, expected.flops)
    assert count_model(pruned, (3, 32, 32)) == expected


def test_the_paper_accounting_runs_only_where_the_family_declares_it(monkeypatch) -> None:
    calls: list[str] = []
    original = pruning_api.original_accounting
    monkeypatch.setattr(pruning_api, "original_accounting", lambda model, *a, **k: calls.append(type(model).__name__) or original(model, *a, **k))
    _, report = prune_model(graded_small_cnn(), torch.randn(2, 1, 8, 8), "fixed", threshold=0.5)
    assert report.macs_original_accounting is None and calls == []
    assert "original code's accounting" not in report.table()
    _, report = prune_model(create("resnet20").eval(), torch.randn(1, 3, 32, 32), "fixed")
    assert calls == ["CifarResNet"] and report.macs_original_accounting == report.macs_after  # nothing is pruned


class DictOutput(nn.Module):
    """A segmentation-style model: its output is a dict (as torchvision's DeepLabV3)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}


def test_a_dict_output_model_prunes_without_a_torch_warning() -> None:
    model = DictOutput().eval()
    with torch.no_grad():
        model.body[1].weight[:4] = 0.0
        model.body[1].bias[:4] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = prune_model(model, torch.randn(1, 3, 8, 8), "fixed")
    assert [str(w.message) for w in caught] == []
    assert pruned.body[0].out_channels == 4 and report.max_abs_output_diff < 1e-5


def test_negating_flags_say_what_they_do(capsys) -> None:
    from polarprune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-compensate do not fold removed channels' constant shift into their consumers" in text
    assert "--keep-empty-blocks keep an emptied residual branch" in text
    assert "an emptied residual branch is removed" not in text
    assert PruneOptions.model_fields["compensate"].description.startswith("fold removed")  # the option itself


TOY_STRATEGY_RECIPE = tiny_digits_recipe("toy-strategy", "  baseline: {}\n  prune: {strategy: keep-first-half}\n", width=8)


def test_a_toy_strategy_runs_through_the_cli_and_a_recipe(toy_strategy, tmp_path, capsys) -> None:
    """The record alone makes the strategy a choice of ``polarprune prune`` and of a recipe's prune stage."""
    import json

    from polarprune.cli import main
    from polarprune.serialization import load, save

    model = graded_small_cnn()
    save(model, tmp_path / "model.safetensors")
    out = tmp_path / "pruned.safetensors"
    assert main(["prune", str(tmp_path / "model.safetensors"), "--strategy", "keep-first-half", "--out", str(out)]) == 0
    convs = [m for m in load(out).features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(TOY_STRATEGY_RECIPE)
    assert main(["--debug", "run", str(recipe), "--out", str(tmp_path / "run"), "--no-plots"]) == 0
    report = json.loads((tmp_path / "run" / "prune" / "report.json").read_text())
    assert report["strategy"] == "keep-first-half"
    pruned = load(tmp_path / "run" / "prune" / "pruned.safetensors")
    assert [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)] == [4, 4, 8, 8]
    capsys.readouterr()
