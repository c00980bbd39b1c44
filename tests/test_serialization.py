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
    missing = dict(tensors)
    missing.pop("classifier.3.bias")
    save_file(missing, str(path), metadata=metadata)
    with pytest.raises(PolarpruneError, match="tensor 'classifier.3.bias' is missing"):
        serialization.load(path)
    extra = {**tensors, "classifier.9.weight": torch.zeros(2, 2)}
    save_file(extra, str(path), metadata=metadata)
    with pytest.raises(PolarpruneError, match="the file has tensor 'classifier.9.weight', the model does not"):
        serialization.load(path)
    save_file(tensors, str(path), metadata=metadata)  # the untouched tensors load again
    assert set(serialization.load(path).state_dict()) == set(tensors)


def test_save_errors_leave_no_file(tmp_path: Path) -> None:
    model = create("small_cnn", width=4)
    with pytest.raises(PolarpruneError, match="not JSON-serializable"):
        serialization.save(model, tmp_path / "y.safetensors", extra={"bad": object()})
    with pytest.raises(PolarpruneError, match="does not exist"):
        serialization.save(model, tmp_path / "nofolder" / "z.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_any_module_saves_and_loads_into_an_instance(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2)).eval()
    plain[1].running_mean.normal_()
    path = serialization.save(plain, tmp_path / "plain.safetensors")
    spec = serialization.read_spec(path)
    assert spec["name"] is None and spec["class"] == "torch.nn.modules.container.Sequential"
    assert spec["plan"]["modules"]["1"] == {"type": "BatchNorm1d", "num_features": 5}
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    x = torch.randn(4, 3)
    assert torch.equal(outputs(serialization.load(path, model=fresh), x), outputs(plain, x))


# ----------------------------------------------------------------------------- import paths and trust

RECORDER = """
from pathlib import Path
Path(__file__).with_suffix(".imported").write_text("imported")
from own_models import build_net
"""


@pytest.fixture()
def recorder_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Path]:
    """A model file whose spec names ``<recorder module>:build_net``; the module records its import."""
    module = f"h6_recorder_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create("own_models:build_net", num_classes=3, width=4, trust_code=True).eval()
    source = tmp_path / "own.safetensors"
    serialization.save(model, source)
    target = tmp_path / "recorder.safetensors"

    def rename(spec: dict) -> None:
        spec["name"] = f"{module}:build_net"

    _rewrite(source, target, rename)
    return target, module, tmp_path / f"{module}.imported"


def test_import_path_file_refused_without_trust(recorder_file: tuple[Path, str, Path]) -> None:
    import sys

    path, module, marker = recorder_file
    with pytest.raises(PolarpruneError) as info:
        serialization.load(path)
    message = str(info.value)
    assert "\n" not in message and "import path" in message and "trust_code=True" in message and module in message
    assert module not in sys.modules and not marker.exists()
    with pytest.raises(PolarpruneError, match="not imported"):
        serialization.load_any_model(path)
    assert module not in sys.modules and not marker.exists()
    # loading into the caller's own instance imports nothing either, and keeps no import-path spec
    from own_models import build_net

    into = serialization.load(path, model=build_net(num_classes=3, width=4))
    assert not hasattr(into, "polarprune_spec")
    assert module not in sys.modules and not marker.exists()

    loaded = serialization.load(path, trust_code=True)
    assert marker.exists() and module in sys.modules
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(outputs(loaded, x), outputs(into, x))


def test_import_path_checkpoint_refused_without_trust(recorder_file: tuple[Path, str, Path], tmp_path: Path) -> None:
    import sys

    path, module, marker = recorder_file
    spec = serialization.read_spec(path)
    checkpoint = tmp_path / "last.pt"
    torch.save({"format": serialization.CHECKPOINT_FORMAT, "spec": spec, "model": load_file(str(path))}, checkpoint)
    with pytest.raises(PolarpruneError, match=f"{module}.*not imported") as info:
        serialization.load_any_model(checkpoint)
    assert "\n" not in str(info.value) and module not in sys.modules and not marker.exists()
    assert serialization.load_any_model(checkpoint, trust_code=True).polarprune_spec["name"] == f"{module}:build_net"
    assert marker.exists()


def test_checkpoints_are_read_without_unpickling_objects(tmp_path: Path) -> None:
    """A checkpoint holding a pickled object (code on load) is refused by weights_only loading."""
    checkpoint = tmp_path / "evil.pt"
    torch.save({"format": serialization.CHECKPOINT_FORMAT, "payload": Path("x")}, checkpoint)
    with pytest.raises(PolarpruneError, match="truncated or corrupt"):
        serialization.read_checkpoint(checkpoint)


def test_subpackages_are_attributes() -> None:
    import polarprune

    assert polarprune.models.create is create
    assert polarprune.serialization is serialization
    assert callable(polarprune.pruning.prune_model) and callable(polarprune.sparsity.selection.regularized_bn_names)
    assert "models" in dir(polarprune)
    with pytest.raises(AttributeError):
        polarprune.no_such_thing  # noqa: B018


def test_load_accepts_a_training_checkpoint(tmp_path: Path, pruned_small: torch.nn.Module) -> None:
    """``polarprune.load("runs/x/last.pt")``: the first file a user has is a training checkpoint."""
    import polarprune
    from polarprune.training.checkpoint import atomic_torch_save

    checkpoint = tmp_path / "runs" / "x" / "last.pt"
    atomic_torch_save({"format": serialization.CHECKPOINT_FORMAT, "version": 1, "epoch": 2,
                       "spec": pruned_small.polarprune_spec, "model": pruned_small.state_dict()}, checkpoint)
    x = torch.randn(2, 3, 32, 32)
    loaded = polarprune.load(checkpoint)
    assert not loaded.training
    assert torch.equal(outputs(loaded, x), outputs(pruned_small, x))
    assert loaded.polarprune_spec["plan"] == pruned_small.polarprune_spec["plan"]
    # into the caller's fresh, unpruned instance: the checkpoint's plan is applied, then its weights
    fresh = create("resnet20", num_classes=7)
    assert polarprune.load(str(checkpoint), model=fresh) is fresh
    assert torch.equal(outputs(fresh, x), outputs(pruned_small, x))
    assert fresh.polarprune_spec["plan"] == pruned_small.polarprune_spec["plan"]
    # a file that is neither still gets the one-line checkpoint error, not "unreadable safetensors"
    bad = tmp_path / "junk.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(PolarpruneError, match="not a polarprune training checkpoint"):
        polarprune.load(bad)
