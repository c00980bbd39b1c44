"""Which BNs are regularized by default, per architecture, and include/exclude patterns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.sparsity.selection import all_bn_names, regularized_bn_names


def test_cifar_resnet56_block_bns_only() -> None:
    model = create("resnet56", 10)
    names = regularized_bn_names(model)
    assert len(names) == 54  # 27 blocks x (bn1, bn2)
    assert names[:2] == ["layer1.0.bn1", "layer1.0.bn2"] and names[-1] == "layer3.8.bn2"
    assert "bn1" not in names  # stem


def test_cifar_resnet_option_b_skips_shortcut_bn() -> None:
    model = create("resnet20", 10, shortcut="B")
    names = regularized_bn_names(model)
    assert "layer2.0.downsample.1" in all_bn_names(model)
    assert not any("downsample" in n for n in names) and len(names) == 18


def test_cifar_vgg_every_bn_including_fc_head() -> None:
    model = create("vgg16", 100)
    names = regularized_bn_names(model)
    assert len(names) == 14  # 13 conv blocks + BN1d of the 512-unit FC
    assert names[-1] == "classifier.1" and isinstance(model.get_submodule("classifier.1"), nn.BatchNorm1d)


def test_small_cnn_all_bns() -> None:
    model = create("small_cnn", 10, in_channels=1)
    assert regularized_bn_names(model) == ["features.1", "features.4", "features.8", "features.11", "classifier.1"]


def test_torchvision_resnet50_bottleneck_bn1_bn2() -> None:
    model = create("resnet50", 10)
    names = regularized_bn_names(model)
    assert len(names) == 32  # 16 bottlenecks x (bn1, bn2)
    assert not any(n.endswith("bn3") or "downsample" in n for n in names) and "bn1" not in names


def test_torchvision_resnet18_basic_block_bn1() -> None:
    model = create("resnet18", 10)
    names = regularized_bn_names(model)
    assert names == [f"layer{s}.{b}.bn1" for s in range(1, 5) for b in range(2)]


def test_mobilenet_v2_expansion_and_projection() -> None:
    model = create("mobilenet_v2", 10)
    names = regularized_bn_names(model)
    # block 1 (expand ratio 1): projection only; blocks 2..17: expansion + projection
    assert names[0] == "features.1.conv.2"
    assert names[1:3] == ["features.2.conv.0.1", "features.2.conv.3"]
    assert len(names) == 1 + 2 * 16
    assert "features.2.conv.1.1" not in names  # depthwise
    assert "features.0.1" not in names and "features.18.1" not in names  # stem, last conv


def test_other_models_use_prunable_groups() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4),
    )
    # the last BN acts on the model's outputs: its group cannot be pruned
    assert regularized_bn_names(model.eval(), torch.randn(2, 3, 8, 8)) == ["1", "4"]
    with pytest.raises(PolarpruneError, match="no default list"):
        regularized_bn_names(model)


def test_include_exclude_patterns() -> None:
    model = create("resnet20", 10)
    assert regularized_bn_names(model, include=["layer1.*.bn2"]) == ["layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    assert regularized_bn_names(model, include=["bn1"]) == ["bn1"]  # include replaces the default
    names = regularized_bn_names(model, exclude=["layer3.*"])
    assert len(names) == 12 and not any(n.startswith("layer3") for n in names)


def test_include_matching_nothing_is_an_error() -> None:
    model = create("resnet20", 10)
    with pytest.raises(PolarpruneError, match=r"'layer9\.\*' matches no BatchNorm"):
        regularized_bn_names(model, include=["layer1.*.bn1", "layer9.*"])
    with pytest.raises(PolarpruneError, match="left to regularize"):
        regularized_bn_names(model, exclude=["*"])
