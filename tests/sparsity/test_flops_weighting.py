"""The original FLOPs weighting of the polarization regularizer, checked on ResNet-56 by hand.

The original prices a basic block's ``bn1`` channel as its conv1 output plus its conv2 input,
a ``bn2`` channel as its conv2 output only; one output channel of a 3x3 conv costs
``9 * C_in * H_out * W_out`` MACs, one input channel ``9 * C_out * H_out * W_out``. The raw
values are min-max normalised over the 54 regularized BNs and mapped into [0.5, 1.5].
"""

from __future__ import annotations

import pytest
import torch

from polarprune import models
from polarprune.errors import PolarpruneError
from polarprune.pruning.graph import analysed_copy
from polarprune.sparsity.flops_weighting import original_channel_macs
from polarprune.sparsity.regularizers import flops_weights
from polarprune.sparsity.selection import regularized_bn_names


@pytest.fixture(scope="module")
def resnet56_weights() -> tuple[dict[str, float], dict[str, float]]:
    model = models.create("resnet56", num_classes=10)
    example = torch.zeros(1, 3, 32, 32)
    names = regularized_bn_names(model, example, method="polarization")
    raw = original_channel_macs(model, analysed_copy(model, example).layer_shapes(), names)
    return raw, flops_weights(raw, 0.5, 1.5)


def test_raw_costs_of_three_layers(resnet56_weights: tuple[dict[str, float], dict[str, float]]) -> None:
    raw, _ = resnet56_weights
    assert len(raw) == 54
    # stage 1 (16 channels, 32x32): conv1 out 9*16*1024 + conv2 in 9*16*1024
    assert raw["layer1.0.bn1"] == 9 * 16 * 1024 + 9 * 16 * 1024 == 294912
    # bn2: conv2's outputs only (the residual stream keeps its width)
    assert raw["layer1.3.bn2"] == 9 * 16 * 1024 == 147456
    # first block of stage 2: conv1 16->32 at stride 2 (16x16 out), conv2 32->32
    assert raw["layer2.0.bn1"] == 9 * 16 * 256 + 9 * 32 * 256 == 110592
    # first block of stage 3: conv1 32->64 (8x8 out), conv2 64->64
    assert raw["layer3.0.bn1"] == 9 * 32 * 64 + 9 * 64 * 64 == 55296
    # the cheapest: a stage-3 bn2, 9*64*64
    assert min(raw.values()) == raw["layer3.8.bn2"] == 36864


def test_weights_of_three_layers_in_the_range(resnet56_weights: tuple[dict[str, float], dict[str, float]]) -> None:
    _, weights = resnet56_weights
    low, high = 36864, 294912  # stage-3 bn2, stage-1 bn1
    span = high - low  # 258048 = 14 * 18432
    assert weights["layer1.0.bn1"] == pytest.approx(1.5)
    assert weights["layer3.8.bn2"] == pytest.approx(0.5)
    # 0.5 + (147456 - 36864) / 258048 = 0.5 + 6/14
    assert weights["layer1.3.bn2"] == pytest.approx(0.5 + (147456 - low) / span) == pytest.approx(0.5 + 3 / 7)
    # 0.5 + (110592 - 36864) / 258048 = 0.5 + 4/14
    assert weights["layer2.0.bn1"] == pytest.approx(0.5 + 2 / 7)
    # 0.5 + (55296 - 36864) / 258048 = 0.5 + 1/14
    assert weights["layer3.0.bn1"] == pytest.approx(0.5 + 1 / 14)


def test_unknown_bn_is_a_one_line_error() -> None:
    model = models.create("resnet20", num_classes=10)
    layers = analysed_copy(model, torch.zeros(1, 3, 32, 32)).layer_shapes()
    with pytest.raises(PolarpruneError, match="layer1.0.conv1"):
        original_channel_macs(model, layers, ["layer1.0.conv1"])
