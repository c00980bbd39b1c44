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


def digits_accuracy(model) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of ``model`` on the digits' 360 test images, counted here."""
    import torch

    from polarprune.config import DataConfig
    from polarprune.data import build_data

    loader = build_data(DataConfig(name="digits", train_subset=None, eval_batch_size=90)).eval_loader
    top1 = top5 = count = 0
    model.eval()
    with torch.no_grad():
        for images, labels in loader:
            ranked = model(images.to(next(model.parameters()).dtype)).argsort(dim=1, descending=True)
            top1 += int((ranked[:, 0] == labels).sum())
            top5 += int((ranked[:, :5] == labels[:, None]).any(dim=1).sum())
            count += len(labels)
    assert count == 360
    return 100.0 * top1 / count, 100.0 * top5 / count


def test_train_json_summary(tmp_path, capsys):
    from polarprune.serialization import read_model

    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "o"
    cfg.write_text(f"model: {{name: small_cnn, options: {{width: 4}}}}\ntrain: {{epochs: 1, progress: false}}\nout: {out}\n")
    assert main(["train", str(cfg), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"top1", "top5", "best_top1", "out", "epochs"}
    assert result["out"] == str(out) and result["epochs"] == 1
    top1, top5 = digits_accuracy(read_model(out / "last.pt"))  # the trained model, evaluated here
    assert result["top1"] == round(top1, 4) and result["top5"] == round(top5, 4)
    assert result["best_top1"] == result["top1"]  # one epoch: the best is the last
    assert result["top1"] > 10.0 * 1.5  # it learned something in an epoch (chance is 10%)


def small_cnn_macs(size: int, channels: int = 3, width: int = 32, classes: int = 10) -> int:
    """small_cnn's conv + linear MACs at ``size`` px, by hand: conv 3x3 c->w and w->w at full size,
    w->2w and 2w->2w at half size, then linear 2w->2w and 2w->classes."""
    full, half = size * size, (size // 2) ** 2
    return 9 * (full * (channels * width + width * width) + half * (width * 2 * width + 4 * width * width)) \
        + 4 * width * width + 2 * width * classes


def small_cnn_params(channels: int = 3, width: int = 32, classes: int = 10) -> int:
    """Conv weights (no bias), two affine parameters per BN channel, linear weights and biases."""
    convs = 9 * (channels * width + width * width + 2 * width * width + 4 * width * width)
    bns = 2 * (width + width + 2 * width + 2 * width) + 2 * (2 * width)
    linears = (2 * width * 2 * width + 2 * width) + (2 * width * classes + classes)
    return convs + bns + linears


def test_flops_json_summary_is_exact(capsys):
    for size, classes in ((8, 10), (16, 10), (32, 100)):
        assert main(["flops", "small_cnn", "--input-size", str(size), "--num-classes", str(classes), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["macs"] == small_cnn_macs(size, classes=classes)
        assert result["params"] == small_cnn_params(classes=classes)
        assert result["flops"] > result["macs"]  # FLOPs add the BN, ReLU and pooling work
