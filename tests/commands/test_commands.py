"""The listing commands (``recipes``, ``models``) and ``demo``: what they print and write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from polarprune.cli import main
from polarprune.commands import demo
from polarprune.models import create, list_models
from polarprune.workflows import load_recipe
from polarprune.workflows.recipe import builtin_recipes

RECIPE_DIR = Path(__file__).resolve().parents[2] / "polarprune" / "recipes"


def test_recipes_lists_every_shipped_file_with_its_description(capsys) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shipped = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert [line.split()[0] for line in lines] == shipped
    for line in lines:
        name = line.split()[0]
        description = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text()).get("description", "")
        assert line.rstrip().endswith(description.strip()), name
    assert set(builtin_recipes()) == set(shipped)


def test_recipes_show_prints_the_yaml(capsys) -> None:
    assert main(["recipes", "--show", "demo-polarization"]) == 0
    assert capsys.readouterr().out == (RECIPE_DIR / "demo-polarization.yaml").read_text()
    assert main(["recipes", "--show", "no-such-recipe"]) == 1
    assert capsys.readouterr().err.startswith("polarprune: error: ")


def test_models_lists_names_that_create_accepts(capsys) -> None:
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert names == list_models()
    assert {"resnet20", "resnet56", "vgg16", "small_cnn", "resnet50", "mobilenet_v2"} <= set(names)
    assert len(names) == len(set(names))
    for name in ("resnet20", "vgg11", "small_cnn"):  # the small ones build quickly
        assert create(name, num_classes=10).polarprune_spec["name"] == name


@pytest.mark.parametrize("method", demo.METHODS)
def test_every_demo_method_has_its_recipe(method: str) -> None:
    recipe = load_recipe(f"demo-{method}", [])
    assert recipe.data["name"] == "digits" and recipe.model["name"] == "small_cnn"
    regularizer = {"polarization": "polarization", "l1": "l1", "masksparsity": "l1"}[method]
    assert recipe.stages.sparsity.sparsity["regularizer"] == regularizer
    # MaskSparsity adds the mask and mask-L1 stages; the others go straight to pruning
    assert (recipe.stages.mask is not None) == (recipe.stages.mask_sparsity is not None) == (method == "masksparsity")


@pytest.mark.slow
def test_demo_prints_and_writes_its_summary_and_rerun_only_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    tiny = ["stages.sparsity.train.epochs=1", "stages.finetune.train.epochs=1", "data.train_subset=64",
            "data.eval_subset=50", "train.progress=false"]
    assert main(["demo", "--out", str(out), *tiny]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["sparsity", "prune", "finetune"]
    for stage in summary["stages"]:  # the printed table is the summary's
        row = next(line for line in printed.splitlines() if line.startswith(stage["name"] + " "))
        assert f"{stage['top1']:.2f}" in row
    for name in ("summary.md", "gamma_histograms.png", "channels_per_layer.png", "accuracy_curves.png"):
        assert (out / name).is_file(), name
    assert main(["demo", "--out", str(out), *tiny]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("complete, skipped") == 3
    assert [s["top1"] for s in json.loads((out / "summary.json").read_text())["stages"]] == [
        s["top1"] for s in summary["stages"]]
