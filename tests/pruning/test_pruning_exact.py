"""Exact pruning through grouped convs, squeeze-excitation and concatenations; flops-target with round_to.

A channel whose BN has gamma = beta = 0 outputs exactly zero (ReLU/SiLU of 0 is 0), so removing
every such channel must leave the logits unchanged up to float rounding. Half the channels of
every BN are set so (each BN its own random half); a coupled channel goes only when all its
BNs say so (the default ``any`` rule). torchvision's RegNet-Y (grouped convs + SE), ResNeXt
(grouped convs), DenseNet (concatenations) and EfficientNet (depthwise convs + SE) at 64 px.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polarprune.flops import count_model
from polarprune.models import create
from polarprune.pruning import prune_model
from test_pruning import one_thread, randomise_bns  # noqa: F401  (one_thread: autouse fixture)

BN = nn.modules.batchnorm._BatchNorm


def zero_half_of_every_bn(model: nn.Module, seed: int = 0) -> None:
    """Random statistics in every BN; a random half of each BN's channels get gamma = beta = 0."""
    randomise_bns(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                off = torch.randperm(m.num_features, generator=g)[: m.num_features // 2]
                m.weight[off] = 0.0
                m.bias[off] = 0.0


def grouped_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("name", [
    pytest.param("regnet_y_400mf", marks=pytest.mark.slow),
    "resnext50_32x4d",
    pytest.param("densenet121", marks=pytest.mark.slow),
    "efficientnet_b0",
])
def test_zero_channels_are_removed_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10).eval()
    zero_half_of_every_bn(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    pruned, report = prune_model(model, x, "fixed", threshold=0.01)
    with torch.no_grad():
        logits = pruned(x)
    assert (logits - reference).abs().max().item() < 1e-5
    assert report.channels_after < 0.9 * report.channels_before  # a real share of channels went
    assert report.macs_after == count_model(pruned, x).macs < report.macs_before
    for conv in grouped_convs(pruned):  # grouped convs stay consistent: whole groups per conv group
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
    if name != "densenet121":
        assert grouped_convs(pruned), "the grouped/depthwise convs are still there"


def test_flops_target_with_round_to_16() -> None:
    torch.manual_seed(0)
    model = create("resnet56").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                m.weight.copy_(torch.rand(m.num_features, generator=g))
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune_model(model, x, "flops-target", target_macs_reduction=0.5, round_to=16)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 for c in convs), [c.out_channels for c in convs]
    assert all(row.channels_after % 16 == 0 for row in report.rows)
    # the target within 2 points: whole blocks of 16 channels make the MACs move in steps
    assert abs(report.macs_reduction - 0.5) <= 0.02
    assert report.macs_after == count_model(pruned, x).macs
    unrounded, _ = prune_model(model, x, "flops-target", target_macs_reduction=0.5)
    assert any(m.out_channels % 16 for m in unrounded.modules() if isinstance(m, nn.Conv2d))
