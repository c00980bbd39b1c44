"""The MaskSparsity ResNet-50 recipe selects all 53 BNs and its mask/prune stages remove
residual-stream (bn3), downsample and stem channels, as the original does (issue 13, point 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polarprune import models
from polarprune.pruning import plan_pruning, prune_model
from polarprune.sparsity.selection import regularized_bn_names
from polarprune.workflows.recipe import load_recipe, stage_config
from polarprune.workflows.stages import prune_kwargs

pytestmark = pytest.mark.slow


def half_zero_resnet50(seed: int = 0) -> torch.nn.Module:
    """torchvision ResNet-50 whose 53 BNs each have a random half of their gammas and betas at 0."""
    torch.manual_seed(seed)
    model = models.create("resnet50", num_classes=10)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                c = bn.num_features
                bn.weight.copy_(0.2 + 0.8 * torch.rand(c, generator=g))
                bn.bias.copy_(0.1 * torch.randn(c, generator=g))
                dead = torch.randperm(c, generator=g)[: c // 2]
                bn.weight[dead] = 0.0
                bn.bias[dead] = 0.0
    return model.eval()


def test_recipe_masks_and_prunes_the_residual_stream() -> None:
    recipe = load_recipe("imagenet-resnet50-masksparsity")
    model = half_zero_resnet50()
    example = torch.randn(1, 3, 64, 64)
    sparsity = stage_config(recipe, "sparsity", Path("/tmp/unused"))
    names = regularized_bn_names(model, example, sparsity.sparsity.include, sparsity.sparsity.exclude)
    assert len(names) == 53
    assert recipe.stages.mask.group_rule == recipe.stages.prune.group_rule == "masksparsity"

    masks = plan_pruning(model, example, **prune_kwargs(recipe.stages.mask), bn_names=names)
    for bn in ("bn1", "layer1.0.bn3", "layer1.0.downsample.1", "layer4.2.bn3", "layer4.0.downsample.1"):
        assert int((~masks[bn]).sum()) >= masks[bn].numel() // 2  # at least the smallest per-BN count
    pruned, report = prune_model(model, example, **prune_kwargs(recipe.stages.prune), bn_names=names)
    assert pruned.layer1[0].conv3.out_channels <= 128 and pruned.layer1[0].downsample[0].out_channels <= 128
    assert pruned.conv1.out_channels <= 32 and pruned.layer4[2].conv3.out_channels <= 1024

    # the same gammas, only bn1/bn2 selected (polarprune's previous recipe): the stream stays whole
    inner = regularized_bn_names(model, example, method="polarization")
    assert len(inner) == 32
    inner_pruned, inner_report = prune_model(model, example, **prune_kwargs(recipe.stages.prune), bn_names=inner)
    assert inner_pruned.layer1[0].conv3.out_channels == 256
    assert report.macs_after < inner_report.macs_after
