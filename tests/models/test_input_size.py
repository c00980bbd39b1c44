"""The input a model takes (issue 27 point 2): recorded when training or pruning, kept in model files
and checkpoints, and the default of every command, so that prune, flops, eval, export and latency
report the same MACs for a model trained at 32 px."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import polarprune
from polarprune.cli import main
from polarprune.errors import PolarpruneError
from polarprune.flops import count_model, example_input
from polarprune.models import create, input_shape_of, record_input_shape, recorded_input_shape
from polarprune.serialization import load_any_model, read_checkpoint, read_spec, same_architecture

OWN = "own_models:build_net"  # tests/own_models.py: its import-path entry knows no input size


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: object) -> dict:
    """Run one command in-process; its stdout's last line as JSON."""
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def own_file(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A user's own model (an import path) saved with the 32 px input it was trained at."""
    torch.manual_seed(0)
    model = create(OWN, 10, trust_code=True, width=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)  # distinct gammas: a ratio prune has a clear choice
    assert record_input_shape(model, (3, 32, 32))
    return model, polarprune.save(model, tmp_path / "mine.safetensors")


# ----------------------------------------------------------------------------- the policy


def test_given_beats_recorded_beats_family_and_unknown_is_an_error() -> None:
    model = create("resnet20")
    assert input_shape_of(model) == (3, 32, 32)  # the CIFAR family
    assert input_shape_of(create("small_cnn", width=4)) == (1, 8, 8)  # the digits: 1 channel
    record_input_shape(model, (3, 40, 48))
    assert recorded_input_shape(model) == (3, 40, 48) and input_shape_of(model) == (3, 40, 48)
    assert input_shape_of(model, 16) == (3, 16, 16) and input_shape_of(model, 16, 1) == (1, 16, 16)
    assert example_input(model).shape == (1, 3, 40, 48)
    assert example_input(model, input_size=8, batch=2).shape == (2, 3, 8, 8)
    assert example_input(model, (3, 4, 4)).shape == (1, 3, 4, 4)
    with pytest.raises(PolarpruneError, match="records no input size and no model family knows it; pass --input-size"):
        input_shape_of(create(OWN, 10, trust_code=True))
    with pytest.raises(PolarpruneError, match="--input-size must be >= 1, got 0"):
        input_shape_of(model, 0)
    with pytest.raises(PolarpruneError, match=r"3 positive integers \[C, H, W\]"):
        record_input_shape(model, (3, 32))


def test_channels_come_from_the_family_or_the_model() -> None:
    """``create`` builds the family's channels (small_cnn: 1), and a plain module's first conv says its own."""
    assert create("small_cnn", width=4).polarprune_spec["in_channels"] == 1
    plain = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
    assert input_shape_of(plain, 10) == (2, 10, 10)


def test_file_keeps_the_recorded_input_and_an_old_file_falls_back(own_file, tmp_path: Path) -> None:
    model, path = own_file
    assert read_spec(path)["input_shape"] == [3, 32, 32]
    assert recorded_input_shape(polarprune.load(path, trust_code=True)) == (3, 32, 32)
    old = polarprune.save(create("small_cnn", width=4), tmp_path / "old.safetensors")  # records nothing
    assert "input_shape" not in read_spec(old) and input_shape_of(polarprune.load(old)) == (1, 8, 8)


def test_a_bad_recorded_input_is_a_one_line_error(tmp_path: Path) -> None:
    model = create("small_cnn", width=4)
    model.polarprune_spec = {**model.polarprune_spec, "input_shape": [1, -8, 8]}
    with pytest.raises(PolarpruneError, match=r"bad.safetensors: the recorded input shape must be 3 positive integers"):
        polarprune.save(model, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_same_architecture_ignores_only_the_input() -> None:
    spec = create("small_cnn", width=4).polarprune_spec
    assert same_architecture(spec, {**spec, "input_shape": [1, 8, 8]})
    assert not same_architecture(spec, {**spec, "options": {"width": 8}})


# ----------------------------------------------------------------------------- the user's session


def test_every_command_reports_the_macs_of_the_recorded_input(own_file, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A 32 px model file: prune, flops, eval, export and latency all work at 32 px (not 224)."""
    model, path = own_file
    before = count_model(model, (3, 32, 32)).macs
    assert _cli_json(capsys, "flops", path, "--json", "--trust-code")["macs"] == before
    pruned, report = tmp_path / "pruned.safetensors", tmp_path / "report.json"
    assert main([str(a) for a in ("prune", path, "--strategy", "uniform", "--ratio", "0.5", "--out", pruned,
                                  "--report", report, "--trust-code")]) == 0
    capsys.readouterr()
    result = json.loads(report.read_text())
    assert result["input_shape"] == [3, 32, 32] and result["macs_before"] == before
    after = result["macs_after"]
    assert 0 < after < before and read_spec(pruned)["input_shape"] == [3, 32, 32]
    assert _cli_json(capsys, "flops", pruned, "--json", "--trust-code")["macs"] == after
    evaluated = _cli_json(capsys, "eval", pruned, "--data", "fake", "--subset", "8", "--device", "cpu", "--json", "--trust-code")
    assert evaluated["macs"] == after
    fmt = "onnx" if importlib.util.find_spec("onnxscript") else "torchscript"
    exported = _cli_json(capsys, "export", pruned, "--format", fmt, "--out", tmp_path / f"p.{fmt}", "--json", "--trust-code")
    assert exported["input_shape"] == [3, 32, 32]
    timing = tmp_path / "latency.json"
    assert main([str(a) for a in ("latency", path, pruned, "--default-malloc", "--rounds", "1", "--warmup", "0",
                                  "--batch", "1", "--threads", "1", "--json", timing, "--trust-code")]) == 0
    timed = json.loads(timing.read_text())
    assert timed["input_shape"] == [3, 32, 32] and timed["macs"] == {str(path): before, str(pruned): after}


def test_a_pruned_file_records_the_given_size(own_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``prune --input-size 16`` traces at 16 px, and the pruned file says so to the next command."""
    _, path = own_file
    pruned = tmp_path / "p16.safetensors"
    assert main([str(a) for a in ("prune", path, "--strategy", "uniform", "--ratio", "0.5", "--input-size", "16",
                                  "--out", pruned, "--trust-code")]) == 0
    capsys.readouterr()
    assert read_spec(pruned)["input_shape"] == [3, 16, 16]
    loaded = polarprune.load(pruned, trust_code=True)
    macs = count_model(loaded, (3, 16, 16)).macs
    assert _cli_json(capsys, "flops", pruned, "--json", "--trust-code")["macs"] == macs
    # eval loads the data at the recorded side (fake images are 32 px unless told)
    evaluated = _cli_json(capsys, "eval", pruned, "--data", "fake", "--subset", "8", "--device", "cpu", "--json", "--trust-code")
    assert evaluated["macs"] == macs


def test_a_training_checkpoint_records_the_data_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """small_cnn (a digits family, 1x8x8) trained one step on 3x32x32 images: its checkpoint says 3x32x32,
    and prune and flops count it there; a checkpoint written before the shape was recorded still resumes."""
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text("model: {name: small_cnn, options: {width: 4}}\n"
                      "data: {name: fake, train_subset: 16, eval_subset: 8, batch_size: 8, workers: 0}\n"
                      "train: {epochs: 1, max_steps_per_epoch: 1, progress: false}\ndevice: cpu\n")
    assert main(["train", str(config), "--out", str(out)]) == 0
    checkpoint = out / "last.pt"
    assert read_checkpoint(checkpoint)["spec"]["input_shape"] == [3, 32, 32]
    expected = count_model(load_any_model(checkpoint), (3, 32, 32)).macs
    capsys.readouterr()
    assert _cli_json(capsys, "flops", checkpoint, "--json")["macs"] == expected
    report = tmp_path / "r.json"
    assert main(["prune", str(checkpoint), "--strategy", "uniform", "--ratio", "0.5", "--out",
                 str(tmp_path / "p.safetensors"), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["macs_before"] == expected

    ckpt = torch.load(checkpoint, weights_only=True)
    del ckpt["spec"]["input_shape"]  # as written before the shape was recorded
    torch.save(ckpt, checkpoint)
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    assert main(["train", str(config), "--out", str(out)]) == 0  # resumes: the architecture is the same
    assert read_checkpoint(checkpoint)["epoch"] == 2 and read_checkpoint(checkpoint)["spec"]["input_shape"] == [3, 32, 32]


def test_latency_refuses_models_that_take_different_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    """small_cnn takes 1x8x8, resnet20 3x32x32: one line naming both, not a shape error inside torch."""
    assert main(["latency", "small_cnn", "resnet20", "--default-malloc", "--rounds", "1", "--batch", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["polarprune: error: the models take different inputs (small_cnn: 1x8x8, resnet20: 3x32x32); "
                   "time models that take the same input (--input-size S sets the size)"]


def test_prune_model_records_the_input_it_traced() -> None:
    """``prune_model`` called from Python records the image size it traced at, as the command does."""
    from polarprune.pruning import prune_model

    model = create("small_cnn", 10)
    pruned, _ = prune_model(model, torch.randn(2, 1, 12, 12), "fixed", threshold=0.0)
    assert pruned.polarprune_spec["input_shape"] == [1, 12, 12]
    assert "input_shape" not in model.polarprune_spec
