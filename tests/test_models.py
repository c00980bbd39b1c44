"""Model registry: names, shapes, options, errors, specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polarprune import models
from polarprune.errors import PolarpruneError
from polarprune.models.cifar_resnet import PadShortcut


def count_blocks(model: nn.Module) -> int:
    return sum(isinstance(m, models.cifar_resnet.BasicBlock) for m in model.modules())


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_resnet_depths(depth):
    model = models.create(f"resnet{depth}", 10)
    assert count_blocks(model) == (depth - 2) // 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_and_b_shortcuts():
    a = models.create("resnet20", 10)
    b = models.create("resnet20", 10, shortcut="B")
    assert sum(isinstance(m, PadShortcut) for m in a.modules()) == 2
    assert sum(isinstance(m, PadShortcut) for m in b.modules()) == 0
    # option B adds two 1x1 projection convs + BNs
    extra = sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters())
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_pad_shortcut_values():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = PadShortcut(2, 2)(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[:, 1:3], x[:, :, ::2, ::2])
    assert y[:, 0].abs().sum() == 0 and y[:, 3].abs().sum() == 0


def test_vgg16_head_and_bn_init():
    model = models.create("vgg16", 100, bn_init=0.5)
    assert isinstance(model.classifier[1], nn.BatchNorm1d) and model.classifier[0].out_features == 512
    gammas = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)])
    assert torch.all(gammas == 0.5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_torchvision_models_and_prefix():
    model = models.create("resnet18", 7)
    assert model.fc.out_features == 7
    assert isinstance(models.create("tv:vgg16", 3).classifier[-1], nn.Linear)
    assert "tv:vgg16" in models.list_models() and "vgg16" in models.list_models()


def test_spec_is_recorded():
    model = models.create("resnet20", 10, shortcut="B")
    assert model.polarprune_spec == {"name": "resnet20", "num_classes": 10, "in_channels": 3, "options": {"shortcut": "B"}}


def test_small_cnn_digits_shape():
    model = models.create("small_cnn", 10, in_channels=1)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_errors_are_one_line():
    with pytest.raises(PolarpruneError, match="unknown model 'resnet58'"):
        models.create("resnet58")
    with pytest.raises(PolarpruneError, match="shortcut"):
        models.create("resnet20", shortcut="C")
    with pytest.raises(PolarpruneError, match="weights file not found"):
        models.create("resnet20", weights="/nonexistent/w.pth")


def test_weights_file_loads(tmp_path):
    src = models.create("resnet20", 10)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = models.create("resnet20", 10, weights=str(path))
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(PolarpruneError, match="do not fit"):
        models.create("resnet32", 10, weights=str(path))
