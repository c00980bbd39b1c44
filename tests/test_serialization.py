"""Model files: round trips (plain and pruned), and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from polarprune import serialization
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import prune_model


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def pruned_small() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("resnet20", num_classes=7).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0, 1)
    pruned, _ = prune_model(model, torch.randn(1, 3, 32, 32), "fixed", threshold=0.4)
    return pruned


def test_round_trip_unpruned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    model.features[1].running_mean.normal_()
    path = serialization.save(model, tmp_path / "plain.safetensors", extra={"epoch": 3})
    loaded = serialization.load(path)
    x = torch.randn(2, 1, 8, 8)
    assert not loaded.training
    assert torch.equal(outputs(loaded, x), outputs(model, x))
    assert loaded.polarprune_spec == {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "options": {"width": 8}}
    meta = serialization.read_metadata(path)
    assert meta["format"] == "polarprune" and meta["extra"] == {"epoch": 3}
    assert meta["polarprune_version"]
    # buffers travel too
    assert torch.equal(loaded.features[1].running_mean, model.features[1].running_mean)
    assert int(loaded.features[1].num_batches_tracked) == int(model.features[1].num_batches_tracked)
    assert [p.name for p in tmp_path.iterdir()] == ["plain.safetensors"]  # no temp file left


def test_round_trip_pruned(tmp_path: Path, pruned_small: torch.nn.Module) -> None:
    path = tmp_path / "pruned.safetensors"
    serialization.save(pruned_small, path)
    spec = serialization.read_spec(path)
    assert spec["plan"]["modules"]  # shapes changed
    assert spec["name"] == "resnet20" and spec["num_classes"] == 7
    loaded = serialization.load(path)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(outputs(loaded, x), outputs(pruned_small, x))
    rebuilt = serialization.build_model(spec)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned_small.parameters())


def test_not_a_polarprune_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PolarpruneError, match="not a polarprune model file") as info:
        serialization.load(text)
    assert "\n" not in str(info.value) and str(text) in str(info.value)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(PolarpruneError, match="metadata 'format' is 'pt'"):
        serialization.load(other)
    with pytest.raises(PolarpruneError, match="no such file"):
        serialization.load(tmp_path / "missing.safetensors")


def test_truncated_file(tmp_path: Path, pruned_small: torch.nn.Module) -> None:
    path = tmp_path / "model.safetensors"
    serialization.save(pruned_small, path)
    data = path.read_bytes()
    for cut in (len(data) - 1000, 40):
        short = tmp_path / f"short{cut}.safetensors"
        short.write_bytes(data[:cut])
        with pytest.raises(PolarpruneError) as info:
            serialization.load(short)
        assert str(short) in str(info.value) and "\n" not in str(info.value)


def _rewrite(path: Path, out: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    spec = json.loads(metadata["spec"])
    edit(spec)
    metadata["spec"] = json.dumps(spec)
    save_file(load_file(str(path)), str(out), metadata=metadata)


def test_tampered_plan(tmp_path: Path, pruned_small: torch.nn.Module) -> None:
    path = tmp_path / "model.safetensors"
    serialization.save(pruned_small, path)
    name = next(n for n, s in serialization.read_spec(path)["plan"]["modules"].items() if s["type"] == "Conv2d")

    def wrong_shape(spec: dict) -> None:
        spec["plan"]["modules"][name]["out_channels"] += 1

    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, wrong_shape)
    with pytest.raises(PolarpruneError, match=rf"tensor '{name}.weight' has shape .* expects") as info:
        serialization.load(bad)
    assert "\n" not in str(info.value)

    def unknown_layer(spec: dict) -> None:
        spec["plan"]["modules"]["layer9.conv1"] = {"type": "Conv2d", "in_channels": 1, "out_channels": 1, "groups": 1, "bias": False}

    _rewrite(path, bad, unknown_layer)
    with pytest.raises(PolarpruneError, match="the plan names layer 'layer9.conv1'"):
        serialization.load(bad)

    def wrong_type(spec: dict) -> None:
        spec["plan"]["modules"][name]["type"] = "Linear"

    _rewrite(path, bad, wrong_type)
    with pytest.raises(PolarpruneError, match="is a Linear, the layer is a Conv2d"):
        serialization.load(bad)


def test_missing_and_extra_tensors(tmp_path: Path) -> None:
    model = create("small_cnn", width=4)
    path = tmp_path / "m.safetensors"
    serialization.save(model, path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors.pop("classifier.3.bias")
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(PolarpruneError, match="tensor 'classifier.3.bias' is missing"):
        serialization.load(path)


def test_save_errors_leave_no_file(tmp_path: Path) -> None:
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(PolarpruneError, match="no polarprune_spec"):
        serialization.save(plain, tmp_path / "x.safetensors")
    model = create("small_cnn", width=4)
    with pytest.raises(PolarpruneError, match="not JSON-serializable"):
        serialization.save(model, tmp_path / "y.safetensors", extra={"bad": object()})
    with pytest.raises(PolarpruneError, match="does not exist"):
        serialization.save(model, tmp_path / "nofolder" / "z.safetensors")
    assert list(tmp_path.iterdir()) == []
