"""``polarprune prune`` end to end through ``polarprune.cli.main`` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polarprune import serialization
from polarprune.cli import main
from polarprune.models import create

REPORT_KEYS = {
    "strategy", "options", "macs_before", "macs_after", "macs_reduction", "flops_before", "flops_after",
    "params_before", "params_after", "params_reduction", "max_abs_output_diff",
    "max_abs_output_diff_uncompensated", "layers", "notes", "removed_blocks", "source", "out", "input_shape",
}


@pytest.fixture()
def tiny_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.0, 1.0)
            m.running_var.uniform_(0.5, 1.5)
    return serialization.save(model, tmp_path / "tiny.safetensors")


def test_prune_command_end_to_end(tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report, plot = tmp_path / "pruned.safetensors", tmp_path / "report.json", tmp_path / "channels.png"
    code = main(["prune", str(tiny_file), "--strategy", "uniform", "--ratio", "0.5", "--out", str(out),
                 "--report", str(report), "--plot", str(plot)])
    assert code == 0
    data = json.loads(report.read_text())
    assert REPORT_KEYS <= set(data)
    assert data["strategy"] == "uniform" and data["input_shape"] == [1, 8, 8]
    assert all(row["channels_after"] == row["channels_before"] // 2 for row in data["layers"])
    assert data["macs_after"] < data["macs_before"]
    pruned = serialization.load(out)
    assert pruned.features[0].out_channels == 4
    assert serialization.read_metadata(out)["extra"]["report"]["macs_after"] == data["macs_after"]
    assert plot.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "MACs" in printed and "wrote" in printed


def test_prune_command_mask_and_data(tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polarprune.sparsity.masks import save_mask

    mask = tmp_path / "mask.json"
    save_mask({"features.1": torch.tensor([True, False] * 4)}, mask, "small_cnn")
    out, report = tmp_path / "m.safetensors", tmp_path / "m.json"
    code = main(["prune", str(tiny_file), "--strategy", "mask", "--mask", str(mask), "--out", str(out), "--report", str(report),
                 "--data", "digits", "--subset", "64"])
    assert code == 0
    data = json.loads(report.read_text())
    assert 0.0 <= data["top1_before"] <= 100.0 and 0.0 <= data["top1_after"] <= 100.0
    assert [r["channels_after"] for r in data["layers"] if r["group"] == "features.1"] == [4]
    assert "top-1" in capsys.readouterr().out


def test_prune_command_from_training_checkpoint(tmp_path: Path) -> None:
    from polarprune.training.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save

    model = create("resnet20", num_classes=10)
    ckpt = tmp_path / "last.pt"
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "spec": model.polarprune_spec, "model": model.state_dict()}, ckpt)
    out = tmp_path / "r20.safetensors"
    assert main(["prune", str(ckpt), "--strategy", "flops-target", "--target-macs-reduction", "0.3",
                 "--bn-exclude", "bn1", "--out", str(out)]) == 0
    assert serialization.read_spec(out)["plan"]["modules"]


def test_prune_command_errors(tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.safetensors"
    assert main(["prune", str(tmp_path / "missing.pt"), "--out", str(out)]) == 1
    assert main(["prune", str(tiny_file), "--strategy", "uniform", "--out", str(out)]) == 1
    assert main(["prune", str(tiny_file), "--bn-include", "nothing*", "--out", str(out)]) == 1
    assert main(["prune", str(tiny_file), "--out", str(tmp_path / "no" / "x.safetensors")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 4 and all(line.startswith("polarprune: error: ") for line in errors)
    assert "needs --ratio" in errors[1] and "nothing*" in errors[2]
    assert not out.exists()


def test_command_strategy_lists_match_the_library() -> None:
    """The commands keep their own strategy tuples (``--help`` must not import torch)."""
    import typing

    from polarprune.commands import mask, prune
    from polarprune.pipeline import PruneOptions
    from polarprune.pruning.resolve import ALL_STRATEGIES

    assert set(prune.STRATEGY_CHOICES) == set(ALL_STRATEGIES)
    assert set(typing.get_args(PruneOptions.model_fields["strategy"].annotation)) == set(ALL_STRATEGIES)
    assert set(mask.STRATEGY_CHOICES) == set(ALL_STRATEGIES) - {"mask", "flops-target"}
