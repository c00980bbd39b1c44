"""Progressive pruning: rounds aimed at a MACs target, any aimable strategy, resumable at every step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import TrialAnalysis, prune_model
from polarprune.pruning.options import PruneOptions
from polarprune.serialization import load_any_model, read_checkpoint
from polarprune.workflows import load_recipe
from polarprune.workflows.pipeline import Pipeline
from polarprune.workflows.progressive import aimed_options, step_targets
from latency_fakes import fake_cost, fake_ms
from test_pipeline import run_cli  # polarprune in a subprocess, optionally with a fault installed



def test_step_targets_remove_the_same_share_every_round() -> None:
    targets = step_targets(1000.0, 0.5, 3)
    assert targets[-1] == pytest.approx(500.0)
    shares = [targets[0] / 1000.0] + [b / a for a, b in zip(targets, targets[1:])]
    assert shares == pytest.approx([0.5 ** (1 / 3)] * 3)
    assert step_targets(80.0, 0.25, 1) == pytest.approx([60.0])
    with pytest.raises(ValueError):
        step_targets(1.0, 1.0, 2)


def graded_small_cnn() -> torch.nn.Module:
    """small_cnn whose BN gammas are all different (so every strategy's knob acts smoothly)."""
    torch.manual_seed(0)
    model = create("small_cnn", 10, in_channels=1).eval()
    with torch.no_grad():
        for bn in (model.features[i] for i in (1, 4, 8, 11)):
            bn.weight.copy_(torch.rand(bn.num_features) + 0.01)
    return model


@pytest.mark.parametrize("strategy", ["flops-target", "percent", "fixed", "uniform", "l1-norm", "random"])
def test_every_aimable_strategy_is_aimed_at_the_wanted_macs(strategy: str) -> None:
    model, x = graded_small_cnn(), torch.randn(2, 1, 8, 8)
    placeholder = {"flops-target": {"target_macs_reduction": 0.5}, "percent": {"percent": 0.0},
                   "uniform": {"ratio": 0.0}, "l1-norm": {"ratio": 0.0}, "random": {"ratio": 0.0}}.get(strategy, {})
    options = PruneOptions(strategy=strategy, **placeholder)
    aimed, ratio = aimed_options(TrialAnalysis(model, x), model, options, 0.6)
    assert abs(ratio - 0.6) <= 0.02, (strategy, ratio)
    _, report = prune_model(model, x, options=aimed)  # the real pruning gives what the trial said
    assert report.macs_after / report.macs_before == pytest.approx(ratio, abs=1e-9)


def test_a_strategy_without_a_knob_is_refused() -> None:
    with pytest.raises(PolarpruneError, match="strategy 'grad' has no option to aim at a MACs target"):
        load_recipe("demo-polarization", ["stages.progressive={target_macs_reduction: 0.5, strategy: grad}"])
    with pytest.raises(PolarpruneError, match="prune.ratio is set by the stage itself"):
        load_recipe("demo-polarization",
                    ["stages.progressive={target_macs_reduction: 0.5, strategy: uniform, prune: {ratio: 0.2}}"])


# sparsity (2 epochs) -> progressive: 3 rounds of l1-norm pruning + 2 fine-tune epochs, to -50% MACs
TINY_PROGRESSIVE = [
    "model.options.width=8",
    "stages.sparsity.train.epochs=2",
    "stages.prune=null",
    "stages.finetune=null",
    "stages.progressive={steps: 3, target_macs_reduction: 0.5, strategy: l1-norm, prune: {round_to: 1}, "  # exact widths in a subprocess (tests/conftest.py)
    "train: {epochs: 2, lr: 0.01, schedule: {type: cosine}}}",
    "train.progress=false",
]


@pytest.mark.slow
def test_progressive_stage_reaches_its_target_and_resumes_after_a_kill_at_any_step(tmp_path: Path) -> None:
    """Acceptance: MACs target within 2 points; SIGKILL in any round (while fine-tuning, right after
    a round's pruning, before the stage's done.json) + rerun ends with the uninterrupted weights."""
    args = ["run", "demo-polarization", *TINY_PROGRESSIVE]
    straight = tmp_path / "straight"
    proc = run_cli(args + ["--out", str(straight)])
    assert proc.returncode == 0, proc.stderr[-1500:]
    done = json.loads((straight / "progressive" / "done.json").read_text())
    assert abs(done["macs_reduction"] - 0.5) <= 0.02
    macs = [done["macs_before"]] + [r["macs_after"] for r in done["steps"]]
    assert macs == sorted(macs, reverse=True) and len(done["steps"]) == 3
    for k, (before, after) in enumerate(zip(macs, macs[1:]), start=1):  # each round removed about a third
        assert after / before == pytest.approx(0.5 ** (1 / 3), abs=0.05), k
    assert done["epochs"] == 6
    summary = {r["name"]: r for r in json.loads((straight / "summary.json").read_text())["stages"]}
    assert summary["progressive"]["macs"] == done["macs_after"]
    assert summary["progressive"]["top1"] == pytest.approx(done["top1"], abs=1e-3)
    rows = [json.loads(line) for line in (straight / "progressive" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7)) and [r["round"] for r in rows] == [1, 1, 2, 2, 3, 3]

    run = tmp_path / "killed"
    steps_per_epoch = 1437 // 64
    for kill in (
        ["--kill-at", f"killed/progressive/step-1:{steps_per_epoch + 3}"],  # round 1, fine-tune epoch 2
        ["--kill-at", "killed/progressive/step-2:0"],  # round 2 pruned, nothing trained yet
        ["--kill-at", "killed/progressive/step-3:5"],  # round 3, fine-tune epoch 1
        ["--kill-before-done", "progressive"],  # every round complete, the stage's done.json not written
    ):
        proc = run_cli(args + ["--out", str(run), "--no-plots"], kill)
        assert proc.returncode == -9, (kill, proc.stderr[-1500:])
    proc = run_cli(args + ["--out", str(run), "--no-plots"])
    assert proc.returncode == 0, proc.stderr[-1500:]
    for k in (1, 2, 3):
        a = read_checkpoint(straight / "progressive" / f"step-{k}" / "last.pt")["model"]
        b = read_checkpoint(run / "progressive" / f"step-{k}" / "last.pt")["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), k
    again = json.loads((run / "progressive" / "done.json").read_text())
    assert [r["macs_after"] for r in again["steps"]] == macs[1:] and math.isclose(again["top1"], done["top1"])


def test_a_progressive_stage_takes_exactly_one_target() -> None:
    for both in ("{target_macs_reduction: 0.5, target_latency_reduction: 0.5}", "{steps: 2}"):
        with pytest.raises(PolarpruneError, match="exactly one of target_macs_reduction and target_latency_reduction"):
            load_recipe("demo-polarization", [f"stages.progressive={both}"])
    with pytest.raises(PolarpruneError, match="target_latency_reduction"):
        load_recipe("demo-polarization", ["stages.progressive={target_latency_reduction: 1.5}"])
    with pytest.raises(PolarpruneError, match=r"stages.progressive.prune.runtime: .*'nope'") as info:
        load_recipe("demo-polarization", ["stages.progressive={target_latency_reduction: 0.5, prune: {runtime: nope}}"])
    assert "\n" not in str(info.value)
    with pytest.raises(PolarpruneError, match=r"stages.sparsity.sparsity.latency_runtime: .*'nope'"):
        load_recipe("demo-polarization", ["sparsity.target_latency_ratio=0.5", "sparsity.latency_runtime=nope"])


def test_the_progressive_latency_target_with_the_fake_runtime(tmp_path: Path, monkeypatch) -> None:
    """Two rounds of l1-norm to half the predicted latency of the fake runtime (tests/latency_fakes.py: a conv
    costs in * out * kernel area, nothing else, so the prediction is the fake cost exactly); one step
    per epoch keeps it cheap. Each round removes about 1 - 0.5 ** (1/2) of the latency."""
    monkeypatch.setattr("polarprune.deploy.latency_cost.runtime_measure", lambda *args, **kwargs: fake_ms)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    recipe = load_recipe("demo-polarization", [
        "model.options.width=8", "stages.sparsity.train.epochs=1", "stages.prune=null", "stages.finetune=null",
        "stages.progressive={steps: 2, target_latency_reduction: 0.5, strategy: l1-norm, train: {epochs: 1}}",
        "train.progress=false", "train.max_steps_per_epoch=1"])
    records = Pipeline(recipe, tmp_path / "run").run()
    done = json.loads((tmp_path / "run" / "progressive" / "done.json").read_text())
    assert abs(done["latency_reduction"] - 0.5) <= 0.02 and done["target_macs_reduction"] is None
    latency = [done["latency_before_ms"]] + [r["latency_after_ms"] for r in done["steps"]]
    for before, after in zip(latency, latency[1:]):
        assert after / before == pytest.approx(0.5 ** 0.5, abs=0.05)
    source = load_any_model(records["sparsity"].model_path)
    final = load_any_model(done["model_path"])
    assert fake_cost(source) == pytest.approx(done["latency_before_ms"], rel=1e-9)
    assert fake_cost(final) / fake_cost(source) == pytest.approx(1 - done["latency_reduction"], rel=1e-9)
