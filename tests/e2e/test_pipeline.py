"""The pipeline: stages, skipping, SIGKILL anywhere + rerun == uninterrupted, summary, demo criteria."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polarprune.config import Section
from polarprune.errors import PolarpruneError
from polarprune.serialization import read_checkpoint, save
from polarprune.workflows import STAGE_KINDS, Pipeline, StageKind, load_recipe, register_stage_kind, summarize
from polarprune.workflows.context import StageContext
from polarprune.workflows.kinds import unregister_stage_kind
from polarprune.workflows.recipe import default_init, stage_config
from fixtures import tiny_digits_recipe

FAULT_RUNNER = str(Path(__file__).resolve().parents[1] / "fault_runner.py")

# MaskSparsity has every kind of stage: training, mask, mask-sparsity, prune, fine-tune (+ scratch).
TINY_MASKSPARSITY = [
    "stages.prune.round_to=1",  # exact widths in a subprocess (tests/conftest.py)
    "model.options.width=8",
    "stages.baseline.train.epochs=2",
    "stages.sparsity.train.epochs=2",
    "stages.mask_sparsity.train.epochs=2",
    "stages.finetune.train.epochs=2",
    "stages.sparsity.sparsity.lbd=0.05",
    "stages.mask_sparsity.sparsity.lbd=0.5",  # strong enough to take the masked gammas under 0.01 in 2 epochs
    "stages.mask.strategy=percent",
    "stages.mask.percent=0.4",
    "stages.scratch.budget=B",
    "stages.scratch.train.epochs=1",
    "train.progress=false",
]


def run_cli(args: list[str], fault: list[str] | None = None) -> subprocess.CompletedProcess:
    """``polarprune ARGS`` in a subprocess; ``fault``: options of tests/fault_runner.py to install one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, FAULT_RUNNER, *fault, "--"] if fault else [sys.executable, "-m", "polarprune"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)


def final_state(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / stage / "last.pt")["model"]


def test_recipe_validation_errors():
    with pytest.raises(PolarpruneError, match="needs a stages.mask stage"):
        load_recipe("demo-masksparsity", ["stages.mask=null"])
    with pytest.raises(PolarpruneError, match="not an earlier stage"):
        load_recipe("demo-polarization", ["stages.sparsity.init=finetune"])
    with pytest.raises(PolarpruneError, match="round_to"):
        load_recipe("demo-polarization", ["stages.prune.round_to=0"])


def test_prune_stage_passes_its_options_to_prune_model():
    from polarprune.models import create
    from polarprune.pruning import prune_model
    from polarprune.workflows.stages import prune_kwargs

    # small_cnn's conv BNs (32, 32, 64, 64 channels) with 5, 20, 40 and 10 gammas under 0.01:
    # a fixed threshold keeps 27, 12, 24, 54; rounded up to multiples of 16: 32, 16, 32, 64
    model = create("small_cnn", 10, in_channels=1).eval()
    bns = [model.features[i] for i in (1, 4, 8, 11)]
    with torch.no_grad():
        for bn, low in zip(bns, (5, 20, 40, 10)):
            bn.weight.copy_(torch.linspace(0.5, 1.0, bn.num_features))
            bn.weight[:low] = torch.linspace(0.001, 0.002, low)
    x = torch.randn(2, 1, 8, 8)
    fixed = ["stages.prune.strategy=fixed", "stages.prune.threshold=0.01"]

    def widths(overrides: list[str], m=model) -> list[int]:
        pruned, _ = prune_model(m, x, **prune_kwargs(load_recipe("demo-polarization", fixed + overrides).stages.prune))
        return [pruned.features[i].num_features for i in (1, 4, 8, 11)]

    assert widths([]) == [27, 12, 24, 54]
    assert widths(["stages.prune.round_to=16"]) == [32, 16, 32, 64]
    with torch.no_grad():
        bns[1].weight.copy_(torch.linspace(0.001, 0.005, 32))  # every gamma of features.4 under 0.01
    assert widths(["stages.prune.min_channels=2"])[1] == 2
    assert widths([])[1] == 1  # the default min_channels


@pytest.mark.slow
def test_sigkill_in_any_stage_then_rerun_matches_uninterrupted(tmp_path):
    """Acceptance: kill (SIGKILL) in the middle of stages; the rerun skips what is complete and ends identical."""
    args = ["run", "demo-masksparsity", *TINY_MASKSPARSITY, "--no-plots"]
    straight = tmp_path / "straight"
    proc = run_cli(args + ["--out", str(straight)])
    assert proc.returncode == 0, proc.stderr[-800:]

    run = tmp_path / "killed"
    kills = [
        ["--kill-at", "killed/baseline:30"],  # during baseline training (epoch 2)
        ["--kill-at", "killed/mask_sparsity:25"],  # during mask-sparsity training
        ["--kill-before-done", "prune"],  # after pruning, before its done.json
        ["--kill-at", "killed/finetune:25"],  # during fine-tuning (epoch 2: the rerun resumes it)
    ]
    for kill in kills:
        proc = run_cli(args + ["--out", str(run)], kill)
        assert proc.returncode == -9, (kill, proc.stderr[-800:])
    proc = run_cli(args + ["--out", str(run)])
    assert proc.returncode == 0, proc.stderr[-800:]
    # completed stages were not redone: the last rerun only had fine-tune and scratch left
    assert "[baseline] complete, skipped" in proc.stderr and "[prune] complete, skipped" in proc.stderr
    assert "resumed from" in proc.stderr

    for stage in ("baseline", "sparsity", "mask_sparsity", "finetune", "scratch"):
        a, b = final_state(straight, stage), final_state(run, stage)
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    assert (straight / "mask" / "mask.json").read_text() == (run / "mask" / "mask.json").read_text()
    s1 = json.loads((straight / "summary.json").read_text())
    s2 = json.loads((run / "summary.json").read_text())
    for r1, r2 in zip(s1["stages"], s2["stages"]):
        assert (r1["name"], r1["top1"], r1["macs"], r1["params"]) == (r2["name"], r2["top1"], r2["macs"], r2["params"])
    # Scratch-B: epochs scaled by the MACs ratio of the pruned model
    scratch = json.loads((straight / "scratch" / "done.json").read_text())
    prune = json.loads((straight / "prune" / "done.json").read_text())
    assert scratch["epochs"] == max(1, round(prune["macs_before"] / prune["macs_after"]))
    # MaskSparsity really removed the masked channels: mask-L1 drove them under the 0.01 threshold
    assert prune["macs_after"] < 0.9 * prune["macs_before"]


@pytest.mark.slow
def test_polarization_demo_prunes_and_keeps_accuracy(tmp_path):
    """The demo's criteria on a shortened run: >= 30% fewer MACs, top-1 within 2 points of the unpruned
    stage (in float32: the recipe's float64 is for process-count invariance, tests/e2e/test_world_size.py)."""
    recipe = load_recipe("demo-polarization", ["stages.sparsity.train.epochs=30", "stages.finetune.train.epochs=5",
                                               "train.dtype=float32", "train.progress=false"])
    pipeline = Pipeline(recipe, tmp_path / "run")
    pipeline.run()
    summary = summarize(pipeline.context)
    rows = {r["name"]: r for r in summary["stages"]}
    assert set(rows) == {"sparsity", "prune", "finetune"}
    assert summary["reductions"]["macs_reduction"] >= 0.30
    assert rows["finetune"]["top1"] >= rows["sparsity"]["top1"] - 2.0
    assert rows["finetune"]["macs"] == rows["prune"]["macs"] < rows["sparsity"]["macs"]
    for key in ("name", "top1", "macs", "flops", "params", "latency_ms"):
        assert key in rows["finetune"]
    for png in ("gamma_histograms.png", "channels_per_layer.png", "accuracy_curves.png", "accuracy_vs_macs.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| finetune |" in md and "MACs reduction" in md
    # a second run is a pure report: every stage skipped, same numbers
    again = Pipeline(recipe, tmp_path / "run")
    again.run()
    assert all(r.data == pipeline.context.records[n].data for n, r in again.context.records.items())


# ----------------------------------------------------------------------------- a new stage kind


class CopyStage(Section):
    """The toy kind's schema: which stage's model it copies."""

    init: str | None = None


def copy_stage(ctx: StageContext, stage: str, stage_dir: Path) -> dict:
    """Load the previous stage's model and save it again (a stage that changes nothing)."""
    source = default_init(ctx.recipe, stage)
    out = save(ctx.model_of(source), stage_dir / "copy.safetensors")
    return {"kind": "copy", "source": source, "model_path": str(out), "top1": ctx.records[source].data["top1"]}


@pytest.fixture
def copy_kind():
    """A 'copy' stage kind registered through the registry alone (and removed afterwards)."""
    register_stage_kind(StageKind("copy", CopyStage, copy_stage, sources=("baseline",)))
    yield
    unregister_stage_kind("copy")


TOY_RECIPE = tiny_digits_recipe("toy-copy", "  baseline: {}\n  copy: {}\n")


def test_a_stage_kind_added_through_the_registry_runs_in_a_recipe_and_through_the_cli(copy_kind, tmp_path, capsys):
    from polarprune.cli import main

    recipe_file = tmp_path / "toy.yaml"
    recipe_file.write_text(TOY_RECIPE)
    with pytest.raises(PolarpruneError, match=r"^recipe toy.yaml: unknown key 'stages\.copy\.epochs'$"):
        load_recipe(str(recipe_file), ["stages.copy.epochs=3"])  # the kind's own schema checks its settings
    pipeline = Pipeline(load_recipe(str(recipe_file)), tmp_path / "api")
    records = pipeline.run()
    assert list(records) == ["baseline", "copy"] and records["copy"].data["source"] == "baseline"
    original, copied = (pipeline.context.model_of(s).state_dict() for s in ("baseline", "copy"))
    assert original.keys() == copied.keys() and all(torch.equal(original[k], copied[k]) for k in original)
    rows = {row["name"]: row for row in summarize(pipeline.context, plots=False)["stages"]}
    assert rows["copy"]["macs"] == rows["baseline"]["macs"] and rows["copy"]["top1"] == rows["baseline"]["top1"]

    assert main(["run", str(recipe_file), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert [row["name"] for row in summary["stages"]] == ["baseline", "copy"]
    assert json.loads((tmp_path / "cli" / "copy" / "done.json").read_text())["kind"] == "copy"
    assert "copy" in capsys.readouterr().out  # the summary table printed by the command


def test_stage_kinds_are_records_read_by_recipes():
    """The built-in kinds in run order, and what the records say (no stage name branches elsewhere)."""
    assert list(STAGE_KINDS) == ["baseline", "sparsity", "mask", "mask_sparsity", "prune", "progressive",
                                 "finetune", "scratch"]
    assert [n for n, k in STAGE_KINDS.items() if not k.produces_model] == ["mask"]
    assert [n for n, k in STAGE_KINDS.items() if k.reads_section("sparsity")] == ["sparsity", "mask_sparsity"]
    recipe = load_recipe("demo-masksparsity")
    assert [default_init(recipe, s) for s in recipe.present_stages()] == [
        None, "baseline", "sparsity", "baseline", "mask_sparsity", "prune"]
    cfg = stage_config(recipe, "mask_sparsity", Path("/run"))
    assert (cfg.sparsity.regularizer, cfg.sparsity.mask, cfg.sparsity.lbd) == ("mask-l1", "/run/mask/mask.json", 3e-2)
    assert stage_config(recipe, "finetune", Path("/run")).sparsity.regularizer == "none"


def test_a_stage_without_a_model_to_start_from_is_refused_up_front(tmp_path):
    recipe = tmp_path / "prune-only.yaml"
    recipe.write_text("name: prune-only\nstages:\n  prune: {strategy: grad}\n")
    with pytest.raises(PolarpruneError, match=r"stages.prune needs a stage whose model it takes: "
                                              r"one of mask_sparsity, sparsity, baseline, or init$"):
        load_recipe(str(recipe))
