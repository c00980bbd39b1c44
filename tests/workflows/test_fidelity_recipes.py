"""The recipes that reproduce a paper carry the original code's values (issue 13, points 2, 6, 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polarprune import models
from polarprune.sparsity.selection import regularized_bn_names
from polarprune.training.schedule import lr_at
from polarprune.workflows.recipe import load_recipe, stage_config

RUN = Path("/tmp/unused-run-dir")


def test_mobilenetv2_finetune_is_the_originals() -> None:
    recipe = load_recipe("imagenet-mobilenetv2-polarization")
    finetune = stage_config(recipe, "finetune", RUN).train
    assert (finetune.epochs, finetune.lr, finetune.schedule.type, finetune.schedule.warmup_epochs) == (256, 0.05, "cosine", 0.0)


def test_mobilenetv2_sparsity_warms_up_from_zero() -> None:
    cfg = stage_config(load_recipe("imagenet-mobilenetv2-polarization"), "sparsity", RUN)
    schedule = cfg.train.schedule
    assert lr_at(schedule, 0.4, 0.0, 256) == 0.0
    assert lr_at(schedule, 0.4, 2.5, 256) == pytest.approx(0.2)  # half-way through the 5 warm-up epochs
    assert cfg.sparsity.target_macs_ratio == 0.7 and cfg.sparsity.freeze_on_target


@pytest.mark.parametrize("name", ["cifar10-resnet56-polarization", "cifar100-vgg16-polarization", "imagenet-resnet50-polarization",
                                  "imagenet-mobilenetv2-polarization"])
def test_polarization_recipes_clamp_every_bn(name: str) -> None:
    assert stage_config(load_recipe(name), "sparsity", RUN).sparsity.clamp_scope == "all"


def test_masksparsity_resnet50_recipe_values() -> None:
    recipe = load_recipe("imagenet-resnet50-masksparsity")
    baseline = stage_config(recipe, "baseline", RUN)
    assert baseline.model.options == {"zero_init_residual": True}
    model = models.create("resnet50", num_classes=10, **baseline.model.options)
    assert all(float(block.bn3.weight.detach().abs().max()) == 0.0 for block in model.modules() if hasattr(block, "bn3"))
    scratch = stage_config(recipe, "scratch", RUN).train
    assert (scratch.epochs, scratch.lr, scratch.schedule.milestones) == (110, 0.05, [30, 60, 90, 100])
    assert recipe.stages.scratch.budget == "E"
    finetune = stage_config(recipe, "finetune", RUN).train
    assert (finetune.epochs, finetune.lr, finetune.schedule.milestones) == (40, 5e-4, [10, 20, 30])
    # all 53 BNs are regularized by the global L1 and by mask-L1 (stem, bn1-bn3, downsample)
    for stage in ("sparsity", "mask_sparsity"):
        cfg = stage_config(recipe, stage, RUN).sparsity
        names = regularized_bn_names(model, None, cfg.include, cfg.exclude)
        assert len(names) == 53 and "bn1" in names and "layer1.0.downsample.1" in names and "layer4.2.bn3" in names


@pytest.mark.parametrize("name", ["cifar10-resnet56-l1", "cifar100-resnet56-l1"])
def test_l1_recipes_cover_every_bn_as_the_original(name: str) -> None:
    cfg = stage_config(load_recipe(name), "sparsity", RUN).sparsity
    model = models.create("resnet56", num_classes=10)
    names = regularized_bn_names(model, torch.zeros(1, 3, 32, 32), cfg.include, cfg.exclude)
    assert len(names) == 55 and names[0] == "bn1"  # the stem BN and the 54 block BNs
