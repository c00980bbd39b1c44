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


# ---------------------------------------------------------------------------------------------
# The published hyperparameters of every shipped recipe, written down from /work/shared's
# REFERENCE.md section 6 (and section 2: clamp 1.0, BN init 0.5) for the papers' recipes, and from
# each recipe's own description for what it states beyond them (prune strategy, per-process batch
# x 8 GPUs, short schedules of the pretrained starts). Learning rates are checked through the schedule
# at the epochs on both sides of every milestone, so "x0.2 at 60/120/160" means what the paper means, not merely the YAML text.

CIFAR_SPARSITY = {"epochs": 200, "batch": 128, "weight_decay": 5e-4, "bn_weight_decay": True, "bn_init": 0.5,
                  "lr": {0: 0.01, 1: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008, 199: 0.0008}}
RESNET56_FINETUNE = {"epochs": 200, "weight_decay": 5e-4, "lr": {0: 1e-3, 29: 1e-3, 30: 5e-4, 79: 5e-4, 80: 2.5e-4, 149: 2.5e-4, 150: 1e-4, 199: 1e-4}}
VGG16_FINETUNE = {"epochs": 200, "weight_decay": 5e-4, "lr": {0: 5e-4, 59: 5e-4, 60: 2.5e-4, 149: 2.5e-4, 150: 1e-4, 199: 1e-4}}
POLARIZATION = {"clamp": 1.0}


def cifar(model: str, method: str) -> dict:
    """The polarization paper's CIFAR recipe; L1 is Network Slimming's s on the same schedule."""
    if method == "polarization":
        regularizer = {"regularizer": "polarization", "lbd": 5e-5, "t": 1.4, **POLARIZATION} if model == "resnet56" \
            else {"regularizer": "polarization", "lbd": 3e-5, "t": 1.5, **POLARIZATION}
    else:
        regularizer = {"regularizer": "l1", "lbd": 1e-5 if model == "resnet56" else 1e-4}
    return {"stages": ["sparsity", "prune", "finetune"], "sparsity": {**CIFAR_SPARSITY, **regularizer},
            "finetune": RESNET56_FINETUNE if model == "resnet56" else VGG16_FINETUNE}


def cifar_masksparsity() -> dict:
    """Only what the description states (REFERENCE gives no CIFAR MaskSparsity schedule)."""
    return {"stages": ["baseline", "sparsity", "mask", "mask_sparsity", "prune", "finetune"],
            "sparsity": {"regularizer": "l1"}, "mask_sparsity": {"regularizer": "mask-l1"},
            "mask": {"strategy": "fixed", "threshold": 0.01}, "prune": {"strategy": "fixed", "threshold": 0.01}}


RESNET50_MASKSPARSITY_TRAIN = {"epochs": 100, "batch": 256, "nesterov": True, "weight_decay": 1e-4,
                               "lr": {0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001, 89: 0.001, 90: 1e-4, 99: 1e-4}}
PAPER = {
    "cifar10-resnet56-polarization": {**cifar("resnet56", "polarization"), "prune": {"strategy": "grad"}},
    "cifar100-resnet56-polarization": {**cifar("resnet56", "polarization"), "prune": {"strategy": "grad"}},
    "cifar10-vgg16-polarization": {**cifar("vgg16", "polarization"), "prune": {"strategy": "grad"}},
    "cifar100-vgg16-polarization": {**cifar("vgg16", "polarization"), "prune": {"strategy": "grad"}},
    "cifar10-resnet56-l1": {**cifar("resnet56", "l1"), "prune": {"strategy": "percent", "percent": 0.4}},
    "cifar100-resnet56-l1": {**cifar("resnet56", "l1"), "prune": {"strategy": "percent", "percent": 0.3}},
    "cifar10-vgg16-l1": {**cifar("vgg16", "l1"), "prune": {"strategy": "percent", "percent": 0.7}},
    "cifar100-vgg16-l1": {**cifar("vgg16", "l1"), "prune": {"strategy": "percent", "percent": 0.5}},
    "cifar10-resnet56-masksparsity": cifar_masksparsity(),
    "cifar10-resnet110-masksparsity": cifar_masksparsity(),
    "imagenet-resnet50-polarization": {
        "stages": ["sparsity", "prune", "finetune"], "prune": {"strategy": "grad"},
        "sparsity": {"epochs": 120, "batch": 512, "regularizer": "polarization", "lbd": 8e-5, "t": 1.2, **POLARIZATION,
                     "bn_init": 0.5, "lr": {0: 0.1, 39: 0.1, 40: 0.01, 79: 0.01, 80: 0.001, 119: 0.001}},
        "finetune": {"epochs": 128, "batch": 512, "lr": {0: 0.05, 64: 0.025}},
    },
    "imagenet-mobilenetv2-polarization": {
        "stages": ["sparsity", "prune", "finetune"], "prune": {"strategy": "grad"},
        "sparsity": {"epochs": 256, "batch": 1024, "regularizer": "polarization", "lbd": 2.5e-5, "t": 1.0, **POLARIZATION,
                     "target_macs_ratio": 0.7, "weight_decay": 4e-5, "bn_weight_decay": False,
                     "lr": {0: 0.0, 2.5: 0.2, 5: 0.4, 5 + 251 / 2: 0.2}},
        "finetune": {"epochs": 256, "lr": {0: 0.05, 128: 0.025}},
    },
    "imagenet-resnet50-masksparsity": {
        "stages": ["baseline", "sparsity", "mask", "mask_sparsity", "prune", "finetune", "scratch"],
        "baseline": RESNET50_MASKSPARSITY_TRAIN,
        "sparsity": {**RESNET50_MASKSPARSITY_TRAIN, "regularizer": "l1", "lbd": 5e-4},
        "mask_sparsity": {**RESNET50_MASKSPARSITY_TRAIN, "regularizer": "mask-l1", "lbd": 5e-4},
        "mask": {"strategy": "fixed", "threshold": 0.01}, "prune": {"strategy": "fixed", "threshold": 0.01},
        "finetune": {"epochs": 40, "lr": {0: 5e-4}}, "scratch": {"epochs": 110, "batch": 128, "lr": {0: 0.05}},
    },
    "imagenet-resnet50-pretrained-polarization": {
        "stages": ["sparsity", "prune", "finetune"], "prune": {"strategy": "grad"},
        "sparsity": {"epochs": 30, "batch": 512, "regularizer": "polarization", "lbd": 8e-5, "t": 1.2, "clamp": None,
                     "lr": {1: 0.01}},
        "finetune": {"epochs": 20},
    },
    "imagenet-mobilenetv2-pretrained-polarization": {
        "stages": ["sparsity", "prune", "finetune"], "prune": {"strategy": "grad"},
        "sparsity": {"epochs": 30, "batch": 1024, "regularizer": "polarization", "lbd": 2.5e-5, "t": 1.0, "clamp": None,
                     "target_macs_ratio": 0.7, "lr": {1: 0.01}},
        "finetune": {"epochs": 30},
    },
    "demo-polarization": {"stages": ["sparsity", "prune", "finetune"], "sparsity": {"regularizer": "polarization"},
                          "prune": {"strategy": "grad"}},
    "demo-l1": {"stages": ["sparsity", "prune", "finetune"], "sparsity": {"regularizer": "l1"}, "prune": {"strategy": "percent"}},
    "demo-masksparsity": {"stages": ["baseline", "sparsity", "mask", "mask_sparsity", "prune", "finetune"],
                          "sparsity": {"regularizer": "l1"}, "mask_sparsity": {"regularizer": "mask-l1"},
                          "mask": {"strategy": "percent", "percent": 0.5}, "prune": {"strategy": "fixed", "threshold": 0.01}},
}
GPUS = 8  # the ImageNet recipes' descriptions: batch per process x 8 GPUs


def training_value(cfg, key: str, name: str):
    """What a training stage's merged config says for one of PAPER's keys."""
    from polarprune.training.schedule import lr_at

    train = cfg.train
    if key == "lr":
        return lambda epoch: lr_at(train.schedule, train.lr, epoch, train.epochs)
    if key == "batch":
        return cfg.data.batch_size * (GPUS if name.startswith("imagenet") else 1)
    if key in ("regularizer", "lbd", "t", "clamp", "target_macs_ratio"):
        return getattr(cfg.sparsity, key)
    if key == "bn_init":
        return cfg.model.bn_init
    return getattr(train, key)


def test_every_recipe_has_its_published_hyperparameters():
    assert set(PAPER) == set(RECIPES) and QUICK_STEPS < set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_paper_hyperparameters_are_encoded(name):
    from pathlib import Path

    expected = PAPER[name]
    recipe = load_recipe(name)
    assert recipe.present_stages() == expected["stages"]
    for stage, values in expected.items():
        if stage == "stages":
            continue
        stages = recipe.stages
        spec = stages[stage] if isinstance(stages, dict) else getattr(stages, stage)  # a mapping after the stage records
        if hasattr(spec, "strategy"):  # mask / prune: the stage's pruning options
            for key, value in values.items():
                assert getattr(spec, key) == value, (stage, key)
            continue
        cfg = stage_config(recipe, stage, Path("/nonexistent-run"))
        for key, value in values.items():
            got = training_value(cfg, key, name)
            if key == "lr":
                assert {epoch: pytest.approx(got(epoch), rel=1e-9, abs=1e-12) for epoch in value} == value, stage
            else:
                assert got == value, (stage, key)


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


# One recipe per family and data shape runs in the quick suite; the others (ResNet-50/110 and
# VGG-16 steps take 3-15 s each on 2 shared cores) carry the slow marker. Every recipe's values
# are checked above either way.
QUICK_STEPS = {"demo-polarization", "demo-l1", "demo-masksparsity", "cifar10-resnet56-polarization",
               "cifar100-resnet56-l1", "cifar10-resnet56-masksparsity", "imagenet-mobilenetv2-polarization"}


@pytest.mark.parametrize("name", [n if n in QUICK_STEPS else pytest.param(n, marks=pytest.mark.slow) for n in RECIPES])
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
