"""Bad input at the command line: one line `polarprune: error: ...`, non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from polarprune.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polarprune", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("polarprune: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_data_folder(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{name: cifar10, root: {tmp_path / 'nowhere'}}}\nmodel: {{name: resnet20}}\n")
    assert_one_line_error(run_cli("train", str(cfg), f"out={tmp_path / 'out'}"), "nowhere")


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train: {epochs: 1, learning_rate: 0.1}\n")
    assert_one_line_error(run_cli("train", str(cfg)), "unknown key 'train.learning_rate'")


def test_wrong_type_value(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    assert_one_line_error(run_cli("train", str(cfg), "train.lr=fast"), "train.lr")


def test_truncated_checkpoint(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "out"
    cfg.write_text(f"model: {{name: small_cnn, options: {{width: 4}}}}\ntrain: {{epochs: 1, max_steps_per_epoch: 1}}\nout: {out}\n")
    assert run_cli("train", str(cfg)).returncode == 0
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    assert_one_line_error(run_cli("train", str(cfg)), "truncated or corrupt")


def test_unknown_model_in_flops():
    assert_one_line_error(run_cli("flops", "resnet58"), "unknown model 'resnet58'")


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "train", str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "config file not found" in proc.stderr


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "flops", "demo", "run", "models", "recipes", "eval"):
        assert command in out


def test_train_json_summary(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{name: small_cnn, options: {{width: 4}}}}\ntrain: {{epochs: 1, progress: false}}\nout: {tmp_path / 'o'}\n")
    assert main(["train", str(cfg), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from polarprune.serialization import read_model
    from test_command_options import digits_accuracy

    assert set(result) == {"top1", "top5", "best_top1", "out", "epochs"}
    assert result["out"] == str(tmp_path / "o") and result["epochs"] == 1
    top1, top5 = digits_accuracy(read_model(tmp_path / "o" / "last.pt"))  # the trained model, evaluated here
    assert result["top1"] == round(top1, 4) and result["top5"] == round(top5, 4)
    assert result["best_top1"] == result["top1"]  # one epoch: the best is the last
    assert result["top1"] > 15.0  # it learned something in an epoch (chance is 10%)
    assert 0 <= result["top1"] <= 100


# ----------------------------------------------------------------------------- usage errors


def assert_usage_error(err: str, fragment: str, command: str | None) -> None:
    """argparse errors: ``polarprune: error: ...`` and one hint line naming the help to read, no usage block."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2, err
    assert lines[0].startswith("polarprune: error: ") and fragment in lines[0], err
    assert lines[1] == f"see 'polarprune{' ' + command if command else ''} --help'"


@pytest.mark.parametrize("argv, fragment, command", [
    (["flops"], "the following arguments are required: MODEL", "flops"),
    (["prune", "x.pt"], "the following arguments are required: --out", "prune"),
    (["latency", "resnet20", "--runtime", "tpu"], "argument --runtime: invalid choice: 'tpu'", "latency"),
    (["flops", "resnet20", "--input-size", "big"], "argument --input-size: invalid int value: 'big'", "flops"),
    (["frobnicate"], "invalid choice: 'frobnicate'", None),
    (["flops", "resnet20", "--bogus"], "unrecognized arguments: --bogus", "flops"),
    (["--bogus"], "unrecognized arguments: --bogus", None),
])
def test_usage_errors_are_one_line_and_a_hint(argv: list[str], fragment: str, command: str | None, capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_usage_error(captured.err, fragment, command)


def test_usage_error_from_the_console_script() -> None:
    proc = run_cli("train")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_usage_error(proc.stderr, "the following arguments are required: config", "train")


def test_debug_after_the_command(tmp_path, capsys) -> None:
    """``polarprune train --debug ...`` works as ``polarprune --debug train ...``: the traceback, no usage error."""
    assert main(["train", str(tmp_path / "missing.yaml"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "config file not found" in err and "unrecognized" not in err
    assert main(["prune", "--debug", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("polarprune: error: ")


# ----------------------------------------------------------------------------- --help without torch


def imported_modules(*args: str) -> set[str]:
    """Top-level names of the modules ``python -X importtime -m polarprune ARGS`` imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "polarprune", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: polarprune" in proc.stdout
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "polarprune.cli" in names  # the log really lists polarprune's own imports
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("command", [None, "flops", "prune", "latency"])
def test_help_does_not_import_torch(command: str | None) -> None:
    modules = imported_modules(*([command] if command else []), "--help")
    assert "torch" not in modules and "torchvision" not in modules


def test_every_command_module_is_torch_free_at_import() -> None:
    """Every command module's top level (what --help imports) imports no torch, in one fresh process."""
    from polarprune.cli import COMMAND_MODULES

    code = ("import importlib, sys\n"
            f"for name in {COMMAND_MODULES!r}: importlib.import_module('polarprune.commands.' + name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'onnx')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- missing extras, forward errors


def test_missing_optional_module_names_the_extra(monkeypatch, tmp_path, capsys) -> None:
    """Without the deploy extra (onnxscript / onnxruntime not importable) or timm, the error says what to install."""
    from polarprune.errors import PolarpruneError, require_extra

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    with pytest.raises(PolarpruneError) as info:
        require_extra("onnxscript", "deploy", "onnx export")
    assert str(info.value) == ("onnx export needs the deploy extra: pip install 'polarprune[deploy]' "
                               "(missing module onnxscript)")
    out = tmp_path / "m.onnx"
    assert main(["export", "small_cnn", "--input-size", "8", "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("polarprune: error: onnx export needs the deploy extra: pip install 'polarprune[deploy]' "
                   "(missing module onnxscript)")
    assert not out.exists()
    monkeypatch.undo()  # onnxscript back; now onnxruntime is missing
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["latency", "small_cnn", "--input-size", "8", "--runtime", "onnxruntime", "--default-malloc"]) == 1
    assert capsys.readouterr().err.strip() == (
        "polarprune: error: the onnxruntime runtime needs the deploy extra: pip install 'polarprune[deploy]' "
        "(missing module onnxruntime)")
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["flops", "timm:resnet18"]) == 1
    assert capsys.readouterr().err.strip() == (
        "polarprune: error: a timm model needs the timm extra: pip install 'polarprune[timm]' (missing module timm)")


@pytest.mark.parametrize("argv", [
    ["flops", "small_cnn", "--in-channels", "3", "--input-size", "8"],
    ["latency", "small_cnn", "--input-size", "8", "--default-malloc", "--rounds", "1"],
    ["export", "small_cnn", "--input-size", "8", "--format", "torchscript", "--out", "OUT"],
])
def test_model_forward_failure_is_one_line(argv: list[str], tmp_path, capsys) -> None:
    """A model given an input it cannot take: one line naming the model, the input given and the form expected."""
    from polarprune.models import create

    model = create("small_cnn", num_classes=10, in_channels=1, width=4)
    from polarprune import serialization

    path = serialization.save(model, tmp_path / "digits.safetensors")
    argv = [str(path) if a == "small_cnn" else str(tmp_path / "m.pt") if a == "OUT" else a for a in argv]
    if argv[0] != "flops":  # the file records 1 channel: a wrong channel count only through flops' option
        argv = [a if a != "8" else "2" for a in argv]  # too small an image for the network instead
    assert main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"polarprune: error: {path} does not run on input 1x")
    assert "it expects N x 1 x H x W" in err[0]
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------- the README's own-model config


def readme_block(marker: str) -> str:
    """The fenced block between ``<!-- marker -->`` and ``<!-- /marker -->`` in README.md."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    inside = text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    return inside.strip().removeprefix("```yaml").removesuffix("```")


def test_readme_own_model_config_is_valid_and_trains(tmp_path, monkeypatch, capsys) -> None:
    """The README's config for a user's own model and ImageFolder data validates as written, and
    (pointed at a tiny tree and a tiny builder) trains a step through the command."""
    import yaml

    from fixtures import make_imagefolder
    from polarprune.config import TrainConfig, validate

    data = yaml.safe_load(readme_block("own-model-config"))
    cfg = validate(TrainConfig, data, source="README.md")
    assert cfg.model.name == "mynets:build_net" and cfg.data.name == "imagefolder"
    assert cfg.data.train_subset == 5000 and cfg.sparsity.regularizer == "polarization"
    assert cfg.train.schedule.milestones == [0.5, 0.75]
    (tmp_path / "mynets.py").write_text("from own_models import build_net  # the user's builder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = make_imagefolder(tmp_path / "mine", n_per_class=4, size=16, classes=3)
    config = tmp_path / "mine.yaml"
    config.write_text(readme_block("own-model-config"))
    out = tmp_path / "runs" / "mine"
    tiny = [f"data.root={root}", f"out={out}", "train.epochs=1", "train.max_steps_per_epoch=1", "data.batch_size=4",
            "data.train_subset=12", "data.eval_subset=6", "data.workers=0", "train.progress=false", "model.options.width=4"]
    assert main(["train", str(config), *tiny, "--trust-code", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epochs"] == 1 and result["out"] == str(out)
    import polarprune

    model = polarprune.load(out / "last.pt", trust_code=True)  # the training checkpoint, as the README says
    assert type(model).__name__ == "OwnNet" and model.head.out_features == 3  # classes from the data
