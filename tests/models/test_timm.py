"""timm models: ``timm:<name>`` through the registry, and pruning equivalence on timm instances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import polarprune
from polarprune.errors import PolarpruneError
from polarprune.models import create, get_entry
from polarprune.models.timm_models import data_settings

timm = pytest.importorskip("timm")

from prune_roundtrip import prune_save_load  # noqa: E402

# (name, whether MACs must drop): convnext_nano has LayerNorm only, so nothing is prunable
EQUIVALENCE_MODELS = [
    ("mobilenetv3_large_100", True),
    ("efficientnet_b0", True),
    ("resnet50", True),
    ("regnety_008", True),
    ("convnext_nano", False),
]


def test_timm_name_builds_without_download() -> None:
    model = create("timm:resnet18", num_classes=7, in_channels=1)
    assert isinstance(model, timm.models.resnet.ResNet)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert model.polarprune_spec["name"] == "timm:resnet18"
    with pytest.raises(PolarpruneError, match="pretrained=True would download"):
        create("timm:resnet18", num_classes=7, pretrained=True)
    with pytest.raises(PolarpruneError, match="unknown timm model 'no_such_net'"):
        create("timm:no_such_net")


def test_pretrained_input_size_and_normalisation() -> None:
    settings = data_settings("timm:vit_base_patch16_384")
    assert settings.input_size == 384 and settings.mean == (0.5, 0.5, 0.5) and settings.std == (0.5, 0.5, 0.5)
    entry = get_entry("timm:efficientnet_b0")
    assert entry is not None and entry.family == "timm"
    assert (entry.input_size, entry.mean, entry.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create("timm:resnet18", num_classes=3)
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    model = create("timm:resnet18", num_classes=3, weights=str(weights))
    assert torch.equal(model.conv1.weight, source.conv1.weight)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fewer_macs"), EQUIVALENCE_MODELS, ids=[n for n, _ in EQUIVALENCE_MODELS])
def test_prune_save_load_timm(name: str, fewer_macs: bool, tmp_path: Path) -> None:
    """A timm instance built by timm itself: pruned, saved, loaded into a fresh instance, same logits."""
    result = prune_save_load(
        lambda: timm.create_model(name, pretrained=False, num_classes=10), tmp_path, size=64, expect_fewer_macs=fewer_macs
    )
    if not fewer_macs:
        assert result["macs_after"] == result["macs_before"]


@pytest.mark.slow
def test_timm_name_file_loads_by_itself(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("timm:mobilenetv3_small_050", num_classes=5).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight[: module.num_features // 2] = 0
                module.bias[: module.num_features // 2] = 0
    x = torch.randn(1, 3, 64, 64)
    pruned, report = polarprune.prune_model(model, x, "fixed")
    assert report.macs_after < report.macs_before
    path = polarprune.save(pruned, tmp_path / "m.safetensors")
    loaded = polarprune.load(path)  # timm: is a registry name, no trust needed
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_data_takes_a_timm_models_normalisation_when_asked() -> None:
    """``data.normalization: model``: the loaders normalise with the timm model's pretrained mean/std
    and use its input size; by default the data set's own values stay."""
    from polarprune.config import TrainConfig
    from polarprune.data import build_data
    from polarprune.workflows.train import data_config_for

    base = {"model": {"name": "timm:inception_v3"}, "data": {"name": "fake", "train_subset": 8, "eval_subset": 8}}
    asked = TrainConfig.model_validate({**base, "data": {**base["data"], "normalization": "model"}})
    data = build_data(data_config_for(asked))
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    assert data.input_size == (299, 299)
    default = build_data(data_config_for(TrainConfig.model_validate(base)))
    assert default.mean != (0.5, 0.5, 0.5) and default.input_size == (32, 32)
    explicit = {**base["data"], "normalization": "model", "mean": [0.1, 0.2, 0.3], "image_size": 16}
    own = build_data(data_config_for(TrainConfig.model_validate({**base, "data": explicit})))
    assert own.mean == (0.1, 0.2, 0.3) and own.std == (0.5, 0.5, 0.5) and own.input_size == (16, 16)
