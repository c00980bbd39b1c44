"""The scratch stage's epoch budgets (Liu et al., "Rethinking the value of network pruning").

Scratch-E trains the pruned architecture for the recipe's epochs; Scratch-B for the same
computation budget, i.e. the epochs times MACs before / MACs after pruning, rounded, at least
one. The prune record below says 1,000 -> 300 MACs, so with 1 epoch in the recipe Scratch-B
trains round(1 * 1000 / 300) = round(3.33) = 3 epochs and Scratch-E 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polarprune import serialization
from polarprune.models import create
from polarprune.pruning import prune_model
from polarprune.workflows import load_recipe
from polarprune.workflows.stages import StageContext, StageRecord, scratch_stage


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    pruned, _ = prune_model(model, torch.randn(2, 1, 8, 8), "uniform", ratio=0.5)
    return serialization.save(pruned, tmp_path_factory.mktemp("prune") / "pruned.safetensors")


@pytest.mark.parametrize(("budget", "epochs"), [("E", 1), ("B", 3)])
def test_scratch_epochs_follow_the_budget(budget: str, epochs: int, pruned_file: Path, tmp_path: Path) -> None:
    recipe = load_recipe("demo-polarization", [
        f"stages.scratch.budget={budget}", "stages.scratch.train.epochs=1",
        "data.train_subset=64", "data.eval_subset=32", "train.progress=false",
    ])
    ctx = StageContext(recipe, tmp_path)
    ctx.records["prune"] = StageRecord("prune", {"model_path": str(pruned_file), "macs_before": 1000, "macs_after": 300})
    stage_dir = tmp_path / "scratch"
    payload = scratch_stage(ctx, "scratch", stage_dir)
    assert payload["budget"] == budget and payload["epochs"] == epochs
    logged = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert max(int(row["epoch"]) for row in logged if "epoch" in row) == epochs
    trained = serialization.read_checkpoint(stage_dir / "last.pt")["model"]
    widths = {k: tuple(v.shape) for k, v in serialization.load(pruned_file).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in trained.items()} == widths  # the pruned architecture
