"""``group_rule: masksparsity`` in decide: every residual group of a ResNet-20 (option B) gets
MaskSparsity's relaxing vote over its BNs' own choices."""

from __future__ import annotations

import torch

from polarprune import models
from polarprune.pruning.api import analysed_copy
from polarprune.pruning.resolve import decide
from polarprune.pruning.votes import masksparsity_keep


def test_residual_groups_get_the_relaxing_vote() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, shortcut="B").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                c = bn.num_features
                bn.weight.copy_(0.2 + 0.8 * torch.rand(c, generator=g))
                dead = torch.randperm(c, generator=g)[: c // 2]
                bn.weight[dead] = 0.0
                bn.bias[dead] = 0.0
    analysis = analysed_copy(model, torch.zeros(1, 3, 32, 32))
    relaxed = decide(analysis, "fixed", group_rule="masksparsity", min_channels=0)
    unanimous = decide(analysis, "fixed", min_channels=0)
    residual = [group for group in analysis.prunable_groups() if group.residual]
    assert len(residual) == 3  # one per stage: its bn2s, its projection BN (and the stem in stage 1)
    for group in residual:
        own = []
        for item in group.bn_items():
            mask = torch.ones(group.num_channels, dtype=torch.bool)
            mask[item.root_t] = item.module.weight.detach()[item.idx_t] > 0.01
            own.append(mask)
        assert torch.equal(relaxed.group_keep[group.name], masksparsity_keep(own))
        least = min(int((~m).sum()) for m in own)
        assert int((~relaxed.group_keep[group.name]).sum()) >= least > int((~unanimous.group_keep[group.name]).sum())
    assert relaxed.macs_ratio < unanimous.macs_ratio
