"""Bad input at the command line: one line `polarprune: error: ...`, non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

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
