"""Your own CNN end to end: plain nn.Module instances are pruned, saved and loaded into a fresh
instance with identical logits; import-path models go through train, prune and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

import polarprune
from polarprune.cli import main
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import prune_model

import own_models
from prune_roundtrip import logits, prune_save_load, zero_half_of_every_bn

def test_own_cnn_with_residual_concat_and_depthwise(tmp_path: Path) -> None:
    result = prune_save_load(lambda: own_models.build_net(num_classes=10), tmp_path, size=32)
    # every BN lost half its channels: every conv/linear keeps at most half its inputs or outputs
    assert result["macs_after"] < 0.5 * result["macs_before"]


def test_torchvision_resnet18_instance(tmp_path: Path) -> None:
    prune_save_load(lambda: torchvision.models.resnet18(num_classes=10), tmp_path, size=64)


def test_torchvision_shufflenet_instance(tmp_path: Path) -> None:
    prune_save_load(lambda: torchvision.models.shufflenet_v2_x1_0(num_classes=10), tmp_path, size=64)


def test_mnasnet_pruned_saves_and_loads(tmp_path: Path) -> None:
    """MNASNet checks its state-dict version while loading; the file keeps the versions."""
    prune_save_load(lambda: torchvision.models.mnasnet0_5(num_classes=10), tmp_path, size=64)
    torch.manual_seed(0)
    model = create("mnasnet0_5", num_classes=10).eval()
    zero_half_of_every_bn(model)
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = prune_model(model, x, "fixed")
    path = polarprune.save(pruned, tmp_path / "registry.safetensors")
    assert polarprune.serialization.read_metadata(path)["versions"][""] == 2  # MNASNet's own version
    assert torch.allclose(logits(polarprune.load(path), x), logits(model, x), atol=1e-5)


def test_registry_file_loads_into_an_instance_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10).eval()
    zero_half_of_every_bn(model)
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = prune_model(model, x[:1], "fixed")
    path = polarprune.save(pruned, tmp_path / "r20.safetensors")
    fresh = create("resnet20", num_classes=10)
    loaded = polarprune.load(path, model=fresh)
    assert loaded is fresh and loaded.polarprune_spec["plan"] == pruned.polarprune_spec["plan"]
    assert torch.allclose(logits(loaded, x), logits(model, x), atol=1e-5)


def test_file_of_a_plain_module_needs_an_instance(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = own_models.build_net(num_classes=4, width=8).eval()
    path = polarprune.save(model, tmp_path / "plain.safetensors")
    spec = polarprune.serialization.read_spec(path)
    assert spec["name"] is None and spec["class"] == "own_models.OwnNet"
    with pytest.raises(PolarpruneError, match=r"polarprune.load\(path, model=instance\)") as info:
        polarprune.load(path)
    assert "\n" not in str(info.value)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(logits(polarprune.load(path, model=own_models.build_net(num_classes=4, width=8)), x), logits(model, x))


def test_file_that_does_not_fit_names_the_first_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = torchvision.models.resnet18(num_classes=10).eval()
    zero_half_of_every_bn(small)
    pruned, _ = prune_model(small, torch.randn(1, 3, 64, 64), "fixed")
    path = polarprune.save(pruned, tmp_path / "r18.safetensors")
    with pytest.raises(PolarpruneError) as info:
        polarprune.load(path, model=torchvision.models.resnet34(num_classes=10))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    # resnet34's layer1 has a third block, which resnet18's file lacks: the first misfit in model order
    assert "layer 'layer1.2.conv1' does not fit" in message
    with pytest.raises(PolarpruneError, match="the plan names layer 'conv1', which the architecture does not have"):
        polarprune.load(path, model=own_models.build_net(num_classes=10))


# ----------------------------------------------------------------------------- commands


def _cli(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.mark.slow
def test_train_prune_eval_an_import_path_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "own.yaml"
    config.write_text(
        "model: {name: 'own_models:build_net', options: {width: 8}, bn_init: 0.5}\n"
        "data: {name: fake, train_subset: 64, eval_subset: 32, image_size: 16, batch_size: 32, workers: 0}\n"
        "train: {epochs: 1, lr: 0.05, progress: false}\n"
        "sparsity: {regularizer: polarization, lbd: 0.001, t: 1.2}\n"
        "device: cpu\n"
    )
    run_dir = tmp_path / "run"
    # without --trust-code the config's import path is refused, one line, nothing run
    assert _cli("train", config, "--out", run_dir) == 1
    err = capsys.readouterr().err
    assert "import path" in err and "--trust-code" in err and len(err.strip().splitlines()) == 1
    assert _cli("train", config, "--out", run_dir, "--trust-code") == 0
    checkpoint = run_dir / "last.pt"
    assert checkpoint.is_file()
    capsys.readouterr()

    pruned = tmp_path / "pruned.safetensors"
    assert _cli("prune", checkpoint, "--strategy", "percent", "--percent", "0.3", "--input-size", "16", "--out", pruned) == 1
    assert "--trust-code" in capsys.readouterr().err
    assert _cli("prune", checkpoint, "--strategy", "percent", "--percent", "0.3", "--input-size", "16", "--out", pruned, "--trust-code") == 0
    spec = polarprune.serialization.read_spec(pruned)
    assert spec["name"] == "own_models:build_net" and spec["plan"]["modules"]
    capsys.readouterr()

    assert _cli("eval", pruned, "--data", "fake", "--subset", "32", "--device", "cpu", "--json", "--trust-code") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    unpruned = polarprune.count_model(own_models.build_net(num_classes=10, width=8), (3, 16, 16)).macs
    assert 0 <= result["top1"] <= 100 and result["images"] == 32
    loaded = polarprune.load(pruned, trust_code=True)
    assert polarprune.count_model(loaded, (3, 16, 16)).macs < unpruned


@pytest.mark.slow
def test_commands_take_an_import_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """flops, inspect, mask and prune take the import path itself (a fresh model) with --trust-code."""
    monkeypatch.chdir(tmp_path)
    name = "own_models:build_net"
    assert _cli("flops", name, "--input-size", "16", "--json") == 1
    err = capsys.readouterr().err
    assert "not imported" in err and len(err.strip().splitlines()) == 1
    assert _cli("flops", name, "--input-size", "16", "--json", "--trust-code") == 0
    macs = json.loads(capsys.readouterr().out)["macs"]
    assert macs == polarprune.count_model(own_models.build_net(num_classes=10), (3, 16, 16)).macs
    assert _cli("inspect", name, "--input-size", "16", "--json", "--trust-code") == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert {row["name"] for row in layers} >= {"stem.1", "res.bn2", "mix.depthwise.1"}
    assert _cli("mask", name, "--strategy", "uniform", "--ratio", "0.5", "--input-size", "16", "--out", "mask.json", "--trust-code") == 0
    assert _cli("prune", name, "--strategy", "mask", "--mask", "mask.json", "--input-size", "16", "--out", "p.safetensors", "--trust-code") == 0
    capsys.readouterr()
    loaded = polarprune.load(tmp_path / "p.safetensors", model=own_models.build_net(num_classes=10))
    assert polarprune.count_model(loaded, (3, 16, 16)).macs < macs
