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


# ----------------------------------------------------------------------------- entries and register


class TwoBlockNet(nn.Module):
    """A user family: two conv-BN-ReLU blocks; its entry says only the second BN is regularized."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


@pytest.fixture
def two_block_registered(monkeypatch):
    from polarprune.models import entry

    monkeypatch.setattr(entry, "_BY_NAME", dict(entry._BY_NAME))
    monkeypatch.setattr(entry, "_BY_CLASS", dict(entry._BY_CLASS))
    calls = []

    def only_b(model: nn.Module, method: str | None) -> list[str]:
        calls.append(method)
        return ["b.1"]

    models.register("two_block", TwoBlockNet, input_size=12, classes=(TwoBlockNet,), bn_selection=only_b)
    return calls


def test_registered_family_is_used_by_create_selection_and_input_size(two_block_registered) -> None:
    from polarprune.sparsity.selection import regularized_bn_names

    model = models.create("two_block", 5, in_channels=1, width=6)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 5) and model.a[0].in_channels == 1
    assert "two_block" in models.list_models()
    assert models.entry_for(model).name == "two_block"
    assert models.default_input_size(model) == 12 and models.default_input_size("two_block") == 12
    # the generic selection asks the entry (the graph default would take both BNs)
    assert regularized_bn_names(model) == ["b.1"]
    assert regularized_bn_names(model, method="masksparsity") == ["b.1"]
    assert two_block_registered == [None, "masksparsity"]
    # an instance built without polarprune is recognised by its class
    assert models.entry_for(TwoBlockNet()).name == "two_block"


def test_register_rejects_unknown_field() -> None:
    with pytest.raises(PolarpruneError, match="unknown entry field 'input_sise'"):
        models.register("typo_net", TwoBlockNet, input_sise=12)


def test_entry_for_plain_torchvision_instances() -> None:
    import torchvision

    resnet = torchvision.models.resnet34(num_classes=3)  # no polarprune_spec
    entry = models.entry_for(resnet)
    assert entry is not None and entry.family == "torchvision_resnet" and entry.input_size == 224
    assert entry.regularized_bns(resnet) == [f"layer{s}.{b}.bn1" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
    mobilenet = torchvision.models.mobilenet_v2(num_classes=3)
    assert models.entry_for(mobilenet).family == "torchvision_mobilenet_v2"
    assert models.entry_for(torchvision.models.densenet121()) is None  # no family rule: graph defaults
    assert models.entry_for(nn.Linear(2, 2)) is None
    assert models.entry_for(models.create("densenet121", 10)).family == "torchvision"  # by its name
    assert models.default_input_size(nn.Linear(2, 2)) is None  # unknown: the commands ask for --input-size
    with pytest.raises(PolarpruneError, match="records no input size and no model family knows it; pass --input-size"):
        models.input_shape_of(nn.Linear(2, 2))


def test_family_input_sizes() -> None:
    assert [models.default_input_size(n) for n in ("resnet56", "vgg16", "small_cnn", "resnet50", "tv:vgg16")] == [32, 32, 8, 224, 224]
    assert models.get_entry("no_such_net") is None
