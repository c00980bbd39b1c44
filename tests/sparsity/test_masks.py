"""Mask files: round trip, validation errors, uniform masks, strategy masks shared by residual groups."""

from __future__ import annotations

import json

import pytest
import torch

from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.sparsity.masks import (
    load_mask,
    mask_from_strategy,
    masksparsity_mask,
    save_mask,
    string_to_mask,
    uniform_mask,
)
from polarprune.sparsity.selection import regularized_bn_names


@pytest.fixture()
def resnet() -> torch.nn.Module:
    return create("resnet20", 10)


def test_round_trip(tmp_path, resnet) -> None:
    masks = {"layer1.0.bn1": torch.tensor([True, False] * 8), "layer3.2.bn2": torch.arange(64) % 3 == 0}
    path = save_mask(masks, tmp_path / "sub" / "mask.json", "resnet20", source={"strategy": "fixed", "threshold": 0.01})
    doc = json.loads(path.read_text())
    assert doc["format"] == "polarprune-mask" and doc["version"] == 1 and doc["model"] == "resnet20"
    assert doc["masks"]["layer1.0.bn1"] == "10" * 8 and doc["source"]["threshold"] == 0.01
    loaded = load_mask(path, resnet)
    assert list(loaded) == list(masks)
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    assert [p.name for p in path.parent.iterdir()] == ["mask.json"]  # no temp file left


def test_string_to_mask() -> None:
    assert string_to_mask("101").tolist() == [True, False, True]
    with pytest.raises(ValueError, match="'x'"):
        string_to_mask("10x")


def write(path, **doc) -> str:
    base = {"format": "polarprune-mask", "version": 1, "model": "resnet20", "masks": {"layer1.0.bn1": "1" * 16}}
    base.update(doc)
    path.write_text(json.dumps(base))
    return str(path)


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"masks": {"layer9.bn1": "1"}}, r"layer 'layer9\.bn1' is not in the model"),
        ({"masks": {"layer1.0.conv1": "1" * 16}}, r"layer 'layer1\.0\.conv1' is a Conv2d, not a BatchNorm"),
        ({"masks": {"layer1.0.bn1": "1" * 15}}, r"'layer1\.0\.bn1' has 15 entries, the layer has 16 channels"),
        ({"masks": {"layer1.0.bn1": "1" * 15 + "2"}}, r"mask of layer 'layer1\.0\.bn1': unexpected character '2'"),
        ({"masks": {"layer1.0.bn1": [1] * 16}}, r"must be a string of 0/1"),
        ({"masks": {}}, r"\"masks\" must be a non-empty mapping"),
        ({"format": "something-else"}, r"not a polarprune mask file"),
        ({"version": 7}, r"unsupported mask file version 7"),
    ],
)
def test_validation_errors(tmp_path, resnet, doc, message) -> None:
    path = write(tmp_path / "m.json", **doc)
    with pytest.raises(PolarpruneError, match=message) as info:
        load_mask(path, resnet)
    text = str(info.value)
    assert "\n" not in text and "m.json" in text


def test_not_json_and_missing(tmp_path, resnet) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01 not json")
    with pytest.raises(PolarpruneError, match="bad.json: not a polarprune mask file"):
        load_mask(bad, resnet)
    with pytest.raises(PolarpruneError, match="mask file not found"):
        load_mask(tmp_path / "nope.json", resnet)


def test_uniform_mask_counts() -> None:
    model = create("resnet20", 10)
    torch.manual_seed(0)
    for n in ("layer1.0.bn1", "layer2.0.bn1"):
        model.get_submodule(n).weight.data = torch.rand(model.get_submodule(n).num_features)
    masks = uniform_mask(model, ["layer1.0.bn1", "layer2.0.bn1"], 0.3)
    assert int(masks["layer1.0.bn1"].sum()) == 16 - 5  # round(0.3 * 16 = 4.8) removed
    assert int(masks["layer2.0.bn1"].sum()) == 32 - 10  # round(9.6)
    gamma = model.get_submodule("layer1.0.bn1").weight.detach()
    assert gamma[~masks["layer1.0.bn1"]].max() < gamma[masks["layer1.0.bn1"]].min()  # the smallest go
    assert int(uniform_mask(model, ["layer1.0.bn1"], 1.0)["layer1.0.bn1"].sum()) == 1  # at least one kept
    with pytest.raises(PolarpruneError, match="ratio"):
        uniform_mask(model, ["layer1.0.bn1"], 1.5)


def polarized(model: torch.nn.Module, names: list[str], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for n in names:
        w = model.get_submodule(n).weight
        low = torch.rand(w.shape, generator=g) < 0.5
        w.data = torch.where(low, torch.rand(w.shape, generator=g) * 0.008, 0.3 + 0.5 * torch.rand(w.shape, generator=g))


def test_masksparsity_default_residual_groups_share_a_mask() -> None:
    model = create("resnet20", 10)
    names = regularized_bn_names(model)
    polarized(model, names)
    x = torch.randn(2, 3, 32, 32)
    masks = masksparsity_mask(model, x, names)
    assert list(masks) == names
    for stage in (1, 2, 3):  # the bn2 of a stage are added together: one voted mask
        group = [masks[f"layer{stage}.{i}.bn2"] for i in range(3)]
        assert all(torch.equal(group[0], m) for m in group)
    # bn1 is not coupled: its mask is its own threshold at 0.01 (at least one channel)
    gamma = model.get_submodule("layer1.0.bn1").weight.detach().abs()
    expected = gamma > 0.01
    if not expected.any():
        expected[gamma.argmax()] = True
    assert torch.equal(masks["layer1.0.bn1"], expected)
    # group vote ("any"): a stage channel stays when any of its bn2 keeps it, or when the option-A
    # shortcut carries a kept stage-1 channel into it (stage-1 channel c lands on stage-2 c + 8)
    votes = torch.stack([model.get_submodule(f"layer2.{i}.bn2").weight.detach().abs() > 0.01 for i in range(3)]).any(0)
    votes[8:24] |= masks["layer1.0.bn2"]
    assert torch.equal(masks["layer2.0.bn2"], votes)
    assert not votes.all()


def test_mask_from_strategy_percent() -> None:
    model = create("vgg11", 10)
    names = regularized_bn_names(model)
    polarized(model, names, seed=1)
    masks = mask_from_strategy(model, torch.randn(2, 3, 32, 32), "percent", bn_names=names, percent=0.25)
    total = sum(m.numel() for m in masks.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(0.25 * total)
