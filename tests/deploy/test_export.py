"""Export round-trips (ONNX through onnxruntime, TorchScript, torch.export) within 1e-4 of
PyTorch on a probe batch, for every model family polarprune prunes; broken exports fail with
one line naming the module and leave no file behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import polarprune
from polarprune.cli import main
from polarprune.deploy import EXPORT_FORMATS, export_model, load_artifact
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.models.layers import ChannelPlacementShortcut, ShortcutOnlyBlock
from polarprune.pruning import prune_model



def _onnx_available() -> bool:
    """ONNX export and its check need the deploy extra (onnxscript, onnxruntime); the other formats do not."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "onnxscript"))


HAS_ONNX = _onnx_available()
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
# the formats this machine can check: torchscript and exported-program need torch only
FORMATS = tuple(fmt for fmt in EXPORT_FORMATS if HAS_ONNX or fmt != "onnx")
ARTIFACT_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "exported-program": "model.pt2"}


def zero_half_of_each_bn(model: nn.Module, seed: int = 0) -> None:
    """Sparsity-trained stand-in: half of every BN's channels get gamma = beta = 0, the rest random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                dead = torch.randperm(n, generator=g)[: n // 2]
                m.weight[dead] = 0.0
                m.bias[dead] = 0.0


def pruned(model: nn.Module, size: int, *, kill: str | None = None) -> nn.Module:
    """``model`` after zeroing half of each BN (and all of ``kill``) and ``prune_model``."""
    zero_half_of_each_bn(model)
    if kill is not None:
        with torch.no_grad():
            bn = model.get_submodule(kill)
            bn.weight.zero_()
            bn.bias.zero_()
    result, _ = prune_model(model.eval(), torch.randn(1, 3, size, size), "fixed", threshold=1e-6)
    return result.eval()


def round_trip_all_formats(model: nn.Module, folder, size: int | None = None) -> dict[str, float]:
    """Export to every format; each report's max abs difference (checked against a fresh run too)."""
    diffs = {}
    for fmt in FORMATS:
        path = folder / ARTIFACT_NAMES[fmt]
        report = export_model(model, path, fmt, input_size=size)
        assert path.is_file() and report.bytes == path.stat().st_size
        shape = report.input_shape
        x = torch.randn(4, *shape)  # a batch size the export never saw
        with torch.no_grad():
            again = float((load_artifact(path, fmt)(x) - model(x)).abs().max())
        assert again <= 1e-4, (fmt, again)
        diffs[fmt] = report.max_abs_diff
    assert all(d <= 1e-4 for d in diffs.values()), diffs
    assert sorted(p.name for p in folder.iterdir()) == sorted(ARTIFACT_NAMES[f] for f in FORMATS)  # no temporary left
    return diffs


class CustomCNN(nn.Module):
    """An own CNN with a residual add, a concatenation and a depthwise conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.side = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.branch(x))
        x = torch.cat([self.depthwise(x), self.side(x)], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))


def test_cifar_resnet20_option_a_round_trips(tmp_path):
    model = create("resnet20").eval()
    zero_half_of_each_bn(model)  # non-trivial BN statistics
    diffs = round_trip_all_formats(model, tmp_path)
    assert set(diffs) == set(FORMATS)


def test_pruned_resnet56_with_removed_first_block_of_a_stage_round_trips(tmp_path):
    model = pruned(create("resnet56"), 32, kill="layer2.0.bn1")
    assert isinstance(model.layer2[0], ShortcutOnlyBlock)  # the stage's first block lost its branch
    assert isinstance(model.layer2[0].downsample, ChannelPlacementShortcut)
    assert model.layer1[0].conv1.out_channels < 16  # channels really removed
    round_trip_all_formats(model, tmp_path)


def test_pruned_cifar_vgg_round_trips(tmp_path):
    model = pruned(create("vgg11"), 32)
    assert model.features[0].out_channels < 64
    round_trip_all_formats(model, tmp_path)


def test_pruned_custom_cnn_with_add_concat_depthwise_round_trips(tmp_path):
    model = CustomCNN().eval()
    model = pruned(model, 16)
    assert model.side[0].out_channels < 8 and model.depthwise[0].groups == model.depthwise[0].out_channels < 16
    round_trip_all_formats(model, tmp_path, size=16)


def test_placement_shortcut_export_path_matches_eager():
    """The static-shape path used under tracing/export equals the eager placement, dropped
    inputs and non-zero fill included."""
    layer = ChannelPlacementShortcut(2, 5, 7, [3, -1, 0, 6, -1])
    layer.fill.copy_(torch.arange(7, dtype=torch.float32))
    x = torch.randn(2, 5, 6, 6)
    eager = layer(x)
    assert torch.equal(layer._gathered(x), eager)
    assert torch.equal(eager[:, 3], x[:, 0, ::2, ::2]) and torch.equal(eager[:, 1], torch.full((2, 3, 3), 1.0))


@needs_onnx
def test_fixed_and_dynamic_batch(tmp_path):
    import onnxruntime as ort

    model = create("resnet20").eval()
    fixed = export_model(model, tmp_path / "b5.onnx", batch=5, opset=18)
    dynamic = export_model(model, tmp_path / "dyn.onnx")
    assert (fixed.batch, fixed.probe_batch) == (5, 5) and (dynamic.batch, dynamic.probe_batch) == ("dynamic", 3)
    assert ort.InferenceSession(str(tmp_path / "b5.onnx")).get_inputs()[0].shape[0] == 5
    assert isinstance(ort.InferenceSession(str(tmp_path / "dyn.onnx")).get_inputs()[0].shape[0], str)
    assert fixed.opset == 18 and dynamic.opset is not None and dynamic.opset >= 18


class DataDependent(nn.Module):
    """A module whose control flow depends on the values: torch.export cannot follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else -x


class ViaNumpy(nn.Module):
    """A module that leaves torch: tracing records its result as a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_numpy(x.detach().numpy().copy()).mean()


def net_with(bad: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), bad), nn.Flatten()).eval()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "exported-program"])
def test_unsupported_module_is_named_and_nothing_written(tmp_path, fmt):
    path = tmp_path / ARTIFACT_NAMES[fmt]
    with pytest.raises(PolarpruneError) as info:
        export_model(net_with(DataDependent()), path, fmt, input_size=8)
    message = str(info.value)
    assert "\n" not in message and "'1.1' (DataDependent)" in message and fmt in message
    assert list(tmp_path.iterdir()) == []


def test_artifact_outside_tolerance_fails_and_nothing_written(tmp_path):
    with pytest.raises(PolarpruneError, match=r"differs from PyTorch by .* above the tolerance 0.0001( x the output scale [0-9.]+)?; nothing written"):
        export_model(net_with(ViaNumpy()), tmp_path / "m.ts", "torchscript", input_size=8)
    assert list(tmp_path.iterdir()) == []


class Amplified(nn.Module):
    """A linear map times 1e4 with a rounding error of the artifact's known size: the output's scale is about
    1e4, so an artifact that differs by 1e-3 is within 1e-4 of the scale, and by 10 is not."""

    def __init__(self, error: float) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ones_like(x) * 1e4
        return out + self.error if torch.jit.is_tracing() else out


def test_tolerance_is_relative_to_the_output_scale(tmp_path):
    report = export_model(Amplified(1e-3), tmp_path / "m.ts", "torchscript", input_size=8)
    assert report.output_scale == pytest.approx(1e4) and report.max_abs_diff == pytest.approx(1e-3, rel=0.05)  # float32 near 1e4
    assert report.max_abs_diff > report.tolerance  # above the bar in absolute terms, within it relative to 1e4
    with pytest.raises(PolarpruneError, match=r"differs from PyTorch by 10 \(max abs\) .* above the tolerance 0.0001 x the "
                                              r"output scale 1e\+04; nothing written"):
        export_model(Amplified(10.0), tmp_path / "n.ts", "torchscript", input_size=8)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ts"]


def test_bad_arguments_are_one_line_errors(tmp_path):
    model = create("resnet20")
    with pytest.raises(PolarpruneError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "m", "tflite")
    with pytest.raises(PolarpruneError, match=r"\.pt2"):
        export_model(model, tmp_path / "m.pt", "exported-program")
    with pytest.raises(PolarpruneError, match="opset applies to the onnx format only"):
        export_model(model, tmp_path / "m.ts", "torchscript", opset=17)
    with pytest.raises(PolarpruneError, match="batch must be 'dynamic' or a positive integer"):
        export_model(model, tmp_path / "m.onnx", batch="many")
    with pytest.raises(PolarpruneError, match=r"does not run on input \(3, 1, 32, 32\)"):
        export_model(model, tmp_path / "m.onnx", in_channels=1)
    assert list(tmp_path.iterdir()) == []


@needs_onnx
def test_export_command_on_a_pruned_model_file(tmp_path):
    model = pruned(create("resnet20"), 32)
    polarprune.save(model, tmp_path / "pruned.safetensors")
    proc = subprocess.run([sys.executable, "-m", "polarprune", "export", str(tmp_path / "pruned.safetensors"),
                           "--format", "onnx", "--out", str(tmp_path / "pruned.onnx"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["input_shape"] == [3, 32, 32] and report["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((load_artifact(tmp_path / "pruned.onnx", "onnx")(x) - model(x)).abs().max()) <= 1e-4


def test_export_command_names_the_pt2_suffix(tmp_path):
    polarprune.save(create("small_cnn", 10, in_channels=1, width=4).eval(), tmp_path / "m.safetensors")
    bad = subprocess.run([sys.executable, "-m", "polarprune", "export", str(tmp_path / "m.safetensors"),
                          "--format", "exported-program", "--out", str(tmp_path / "x.pt")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"polarprune: error: {tmp_path / 'x.pt'}: an exported program is a .pt2 archive; name the file *.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.fixture()
def small_cnn_file(tmp_path):
    """A small CNN whose BN statistics are not the identity, so an artifact's float rounding shows."""
    torch.manual_seed(0)
    model = create("small_cnn", 10, in_channels=1, width=8).eval()
    zero_half_of_each_bn(model)
    return polarprune.save(model, tmp_path / "small.safetensors"), model


def exported_diff(model: nn.Module, path, fmt: str) -> float:
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return float((load_artifact(path, fmt)(x) - model(x)).abs().max())


@pytest.mark.parametrize("fmt,name", [pytest.param("onnx", "m.onnx", marks=needs_onnx), ("torchscript", "m.ts")])
def test_export_command_tolerance(small_cnn_file, tmp_path, capsys, fmt, name):
    """``--tolerance`` is the bar the artifact's difference is held to: a bar below the measured
    difference fails with one line and writes nothing, the default accepts it."""
    source, model = small_cnn_file
    out = tmp_path / name
    assert main(["export", str(source), "--format", fmt, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tolerance"] == 1e-4 and report["max_abs_diff"] <= 1e-4
    measured = report["max_abs_diff"]
    out.unlink()
    if measured == 0.0:  # bit-identical artifact: no tolerance > 0 can fail; the bar is still reported
        assert main(["export", str(source), "--format", fmt, "--out", str(out), "--json", "--tolerance", "1e-30"]) == 0
        assert json.loads(capsys.readouterr().out)["tolerance"] == 1e-30
        return
    assert main(["export", str(source), "--format", fmt, "--out", str(out), "--tolerance", f"{measured / 4:.3g}"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith(f"polarprune: error: {out}: the {fmt} artifact differs from PyTorch by ")
    assert f"above the tolerance {float(f'{measured / 4:.3g}'):g}; nothing written" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]
    assert main(["export", str(source), "--format", fmt, "--out", str(out), "--tolerance", "0"]) == 1
    assert capsys.readouterr().err.strip() == "polarprune: error: tolerance must be > 0, got 0.0"


@needs_onnx
@pytest.mark.parametrize("opset", [18, 20])
def test_export_command_opset_is_the_files_opset(small_cnn_file, tmp_path, capsys, opset):
    import onnx

    source, model = small_cnn_file
    out = tmp_path / f"m{opset}.onnx"
    assert main(["export", str(source), "--out", str(out), "--opset", str(opset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["opset"] == opset
    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == opset
    assert exported_diff(model, out, "onnx") <= 1e-4
    assert main(["export", str(source), "--format", "torchscript", "--out", str(tmp_path / "m.ts"), "--opset", "17"]) == 1
    assert capsys.readouterr().err.strip() == "polarprune: error: opset applies to the onnx format only (got format 'torchscript')"


@needs_onnx
def test_export_command_opset_below_the_exporters_is_written_or_refused(small_cnn_file, tmp_path):
    """torch's exporter writes opset 18 and converts down when it can: the file has the asked
    opset, or the command fails with one line and writes nothing (it used to keep 18 silently)."""
    import onnx

    source, _ = small_cnn_file
    out = tmp_path / "m16.onnx"
    proc = subprocess.run([sys.executable, "-m", "polarprune", "export", str(source), "--out", str(out), "--opset", "16"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == 16
    else:  # one line: the exporter's logged conversion traceback is not shown
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
            f"polarprune: error: {out}: torch's ONNX exporter cannot write this model at opset 16 (it wrote opset 18); "
            "ask for that opset or higher; nothing written"]
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_pruned_torchvision_models_round_trip(tmp_path, name):
    model = pruned(create(name, 10), 64)
    round_trip_all_formats(model, tmp_path, size=64)


class TwoHeads(nn.Module):
    """A model with two tensor outputs (like a segmenter's predictions and prototypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.conv(x)
        return self.fc(maps.mean((2, 3))), maps


@needs_onnx
def test_every_tensor_output_is_exported_and_checked(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    report = export_model(model, tmp_path / "two.onnx", "onnx", input_size=8, batch=1)
    x = torch.randn(1, 3, 8, 8)
    logits, maps = load_artifact(tmp_path / "two.onnx", "onnx", all_outputs=True)(x)
    with torch.no_grad():
        want_logits, want_maps = model(x)
    assert report.max_abs_diff <= 1e-4
    assert maps.shape == (1, 4, 8, 8) and float((maps - want_maps).abs().max()) <= 1e-4
    assert float((load_artifact(tmp_path / "two.onnx", "onnx")(x) - want_logits).abs().max()) <= 1e-4  # the first output


def test_a_dict_output_is_one_line(tmp_path):
    class Named(nn.Module):
        def forward(self, x):
            return {"y": x}

    with pytest.raises(PolarpruneError, match="export needs a model with tensor outputs"):
        export_model(Named(), tmp_path / "named.ts", "torchscript", input_size=8, in_channels=3)
    assert not (tmp_path / "named.ts").exists()
