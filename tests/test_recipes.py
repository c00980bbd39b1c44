"""Every shipped recipe validates and runs its first training steps on fixture data of its shape."""

from __future__ import annotations

import pytest
import torch

from fixtures import make_cifar10, make_cifar100, make_imagefolder
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.workflows.kinds import stage_kind
from polarprune.workflows.recipe import builtin_recipes, load_recipe, stage_config
from polarprune.workflows.train import run_training

RECIPES = sorted(builtin_recipes())


def test_the_papers_recipes_are_shipped():
    expected = {
        "cifar10-resnet56-polarization", "cifar10-resnet56-l1", "cifar100-resnet56-polarization",
        "cifar100-resnet56-l1", "cifar10-vgg16-polarization", "cifar10-vgg16-l1",
        "cifar100-vgg16-polarization", "cifar100-vgg16-l1", "cifar10-resnet56-masksparsity",
        "cifar10-resnet110-masksparsity", "imagenet-resnet50-polarization",
        "imagenet-resnet50-masksparsity", "imagenet-mobilenetv2-polarization",
        "demo-polarization", "demo-l1", "demo-masksparsity",
    }
    assert expected <= set(RECIPES)


def test_paper_hyperparameters_are_encoded():
    r56 = load_recipe("cifar10-resnet56-polarization")
    cfg = stage_config(r56, "sparsity", __import__("pathlib").Path("/tmp/x"))
    assert (cfg.sparsity.lbd, cfg.sparsity.t, cfg.model.bn_init) == (5e-5, 1.4, 0.5)
    assert cfg.train.schedule.milestones == [60, 120, 160] and cfg.train.schedule.first_epoch_lr == 0.01
    vgg = stage_config(load_recipe("cifar10-vgg16-polarization"), "sparsity", __import__("pathlib").Path("/tmp/x"))
    assert (vgg.sparsity.lbd, vgg.sparsity.t) == (3e-5, 1.5)
    mbv2 = stage_config(load_recipe("imagenet-mobilenetv2-polarization"), "sparsity", __import__("pathlib").Path("/tmp/x"))
    assert mbv2.sparsity.target_macs_ratio == 0.7 and mbv2.train.bn_weight_decay is False


def fixture_overrides(name: str, tmp_path) -> list[str]:
    """Point a recipe at tiny data of the shape it expects."""
    if name.startswith("cifar100"):
        root = tmp_path / "c100"
        make_cifar100(root, n_train=20, n_test=10)
        data = ["data.name=cifar100", f"data.root={root}"]
    elif name.startswith("cifar10"):
        root = tmp_path / "c10"
        make_cifar10(root, n_train=20, n_test=10)
        data = ["data.name=cifar10", f"data.root={root}"]
    elif name.startswith("imagenet"):
        root = tmp_path / "inet"
        make_imagefolder(root, n_per_class=2, size=80, classes=3)  # larger than in-memory size: file loader, 224 crops
        data = ["data.name=imagefolder", f"data.root={root}", "data.workers=0", "data.image_size=224"]
    else:
        data = []
    model = load_recipe(name).model
    if model.get("weights"):  # a pretrained start: a state-dict file of the recipe's model for the fixture's 3 classes
        weights = tmp_path / "pretrained.pth"
        torch.save(create(model["name"], 3).state_dict(), weights)
        data.append(f"model.weights={weights}")
    return data + ["data.batch_size=2", "data.eval_batch_size=4", "data.eval_subset=4", "train.progress=false"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_first_training_steps(name, tmp_path):
    recipe = load_recipe(name, fixture_overrides(name, tmp_path))
    first = next(s for s in recipe.present_stages() if stage_kind(s).trains)
    cfg = stage_config(
        recipe, first, tmp_path / "run",
        device="cpu", train={"epochs": 1, "max_steps_per_epoch": 2}, model={"num_classes": None},
    )
    if cfg.data.name == "imagefolder":
        cfg.train.amp = False  # bf16 autocast of ResNet-50 on a CPU is slow; the AMP path has its own test
    result = run_training(cfg)
    assert result.history[0]["epoch"] == 1
    assert result.history[0]["train_loss"] > 0
    assert (tmp_path / "run" / first / "last.pt").is_file()


def test_unknown_recipe_and_bad_override():
    with pytest.raises(PolarpruneError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(PolarpruneError, match="stages.sparsity: train.lr"):
        load_recipe("demo-polarization", ["stages.sparsity.train.lr=-3"])
    with pytest.raises(PolarpruneError, match="unknown key 'stages.prun'"):
        load_recipe("demo-polarization", ["stages.prun.strategy=grad"])
    with pytest.raises(PolarpruneError, match="needs percent"):
        load_recipe("demo-polarization", ["stages.prune.strategy=percent"])


# ----------------------------------------------------------------------------- overrides reach the stages


@pytest.mark.parametrize(("argv", "fragment"), [
    (["demo", "sparsity.lbd=-0.002"], "stages.sparsity: sparsity.lbd: Input should be greater than or equal to 0 (got -0.002)"),
    (["run", "cifar10-resnet56-polarization", "sparsity.lbd=-1"], "stages.sparsity: sparsity.lbd: Input should be greater than or equal to 0 (got -1)"),
    (["demo", "sparsity.lbdd=1"], "unknown key 'sparsity.lbdd'"),
    (["demo", "--method", "l1", "sparsity.t=1.2"], "unknown key 'sparsity.t'"),  # polarization's key, not l1's
])
def test_a_bad_top_level_override_stops_the_command_before_training(argv, fragment, tmp_path, capsys):
    """Issue 27: these were accepted (the stage's own lbd won) and the demo trained; now one line, nothing written."""
    from polarprune.cli import main

    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err
    assert not (tmp_path / "run").exists()


def test_a_top_level_override_reaches_the_stages_that_read_its_section(tmp_path):
    recipe = load_recipe("demo-polarization", ["sparsity.lbd=0.003", "train.epochs=2"])
    sparsity = stage_config(recipe, "sparsity", tmp_path)
    assert sparsity.sparsity.lbd == 0.003 and sparsity.sparsity.t == 1.2  # the stage's other values stay
    assert sparsity.train.epochs == stage_config(recipe, "finetune", tmp_path).train.epochs == 2
    assert stage_config(recipe, "finetune", tmp_path).sparsity.regularizer == "none"  # sparsity does not reach it
    masked = load_recipe("demo-masksparsity", ["sparsity.lbd=0.2"])
    assert stage_config(masked, "sparsity", tmp_path).sparsity.lbd == stage_config(masked, "mask_sparsity", tmp_path).sparsity.lbd == 0.2
    assert stage_config(masked, "baseline", tmp_path).sparsity.regularizer == "none"


def test_a_section_no_stage_reads_is_refused_with_where_the_key_must_go(tmp_path):
    recipe = tmp_path / "base.yaml"
    recipe.write_text("name: base\nmodel: {name: small_cnn}\nstages:\n  baseline: {}\n")
    with pytest.raises(PolarpruneError, match=r"^override 'sparsity.lbd=0.1': no stage of this recipe reads its top-level "
                                              r"sparsity section; set stages.<stage>.sparsity.lbd instead$"):
        load_recipe(str(recipe), ["sparsity.lbd=0.1"])
    recipe.write_text("name: base\nsparsity: {lbd: 0.1}\nstages:\n  baseline: {}\n")
    with pytest.raises(PolarpruneError, match="no stage of this recipe reads the recipe's sparsity section"):
        load_recipe(str(recipe))
