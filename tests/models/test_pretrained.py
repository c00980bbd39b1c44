"""Pretrained starts: the built-in pretrained recipes train from the state-dict file given by
``model.weights`` (made here, since nothing can be downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polarprune import models
from polarprune.errors import PolarpruneError
from polarprune.workflows.recipe import load_recipe, stage_config
from polarprune.workflows.train import build_trainer

PRETRAINED_RECIPES = ["imagenet-resnet50-pretrained-polarization", "imagenet-mobilenetv2-pretrained-polarization"]


def tiny_data(tmp_path: Path) -> list[str]:
    """Three-class 32x32 fake images, one step of batch 4: enough to take one training step."""
    return [
        "device=cpu", "data.name=fake", "data.num_classes=3", "data.image_size=32", "data.train_subset=8",
        "data.eval_subset=4", "data.batch_size=4", "data.eval_batch_size=4", "data.workers=0",
        "train.amp=false", "train.progress=false", "train.max_steps_per_epoch=1", "stages.sparsity.train.epochs=1",
        "stages.sparsity.sparsity.monitor=false",
    ]


def pretrained_file(name: str, path: Path, gamma: float) -> dict[str, torch.Tensor]:
    """A state-dict file of ``name`` with 3 classes whose every BN gamma is ``gamma`` (not a
    value any fresh init has), as a downloaded pretrained file would be."""
    torch.manual_seed(123)
    model = models.create(name, 3)
    models.init_bn_gamma(model, gamma)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return state


@pytest.mark.parametrize("recipe_name", PRETRAINED_RECIPES)
def test_pretrained_recipe_declares_a_weights_file_and_keeps_gammas_unclamped(recipe_name: str) -> None:
    cfg = stage_config(load_recipe(recipe_name), "sparsity", Path("/tmp/unused"))
    assert cfg.model.weights and cfg.model.weights.endswith(".pth")
    assert cfg.model.bn_init is None and cfg.sparsity.clamp is None
    assert cfg.sparsity.regularizer == "polarization" and cfg.train.epochs <= 30


def test_sparsity_training_starts_from_the_weights_file(tmp_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2-pretrained.pth"
    state = pretrained_file("mobilenet_v2", weights, gamma=1.5)
    recipe = load_recipe(PRETRAINED_RECIPES[1], [f"model.weights={weights}", *tiny_data(tmp_path)])
    trainer = build_trainer(stage_config(recipe, "sparsity", tmp_path / "run"))
    loaded = trainer.model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())  # every tensor, not just a few

    trainer.fit()
    after = trainer.model.state_dict()
    gamma = after["features.1.conv.0.1.weight"]
    # it trained (one SGD step moved the weights) starting from the file, and the pretrained
    # gammas above 1 were not clamped to the [0, 1] of from-scratch polarization
    assert not torch.equal(after["classifier.1.weight"].cpu(), state["classifier.1.weight"])
    assert (gamma - 1.5).abs().max().item() < 0.05 and gamma.min().item() > 1.0


def test_weights_that_do_not_fit_stop_with_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "ten-classes.pth"
    torch.save(models.create("mobilenet_v2", 10).state_dict(), weights)
    recipe = load_recipe(PRETRAINED_RECIPES[1], [f"model.weights={weights}", *tiny_data(tmp_path)])
    with pytest.raises(PolarpruneError, match="do not fit") as info:
        build_trainer(stage_config(recipe, "sparsity", tmp_path / "run"))
    assert "\n" not in str(info.value)
