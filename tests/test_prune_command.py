"""``polarprune prune`` end to end through ``polarprune.cli.main`` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polarprune import serialization
from polarprune.cli import main
from polarprune.errors import PolarpruneError
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
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.3 + 0.7 * torch.rand(m.num_features, generator=generator))
        model.bn1.weight.fill_(0.001)  # the stem BN alone would remove every channel it votes on
    ckpt = tmp_path / "last.pt"
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "spec": model.polarprune_spec, "model": model.state_dict()}, ckpt)

    def prune(name: str, *options: str) -> tuple[dict, torch.nn.Module]:
        out, report = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json"
        assert main(["prune", str(ckpt), *options, "--out", str(out), "--report", str(report)]) == 0
        return json.loads(report.read_text()), serialization.load(out)

    def stem_width(data: dict) -> int:
        return next(row for row in data["layers"] if row["group"] == "bn1")["channels_after"]

    target = ["--strategy", "flops-target", "--target-macs-reduction", "0.3"]
    data, pruned = prune("excluded", *target, "--bn-exclude", "bn1")
    assert abs(data["macs_reduction"] - 0.3) <= 0.005  # flops-target's tolerance: half a point
    assert stem_width(data) == 16  # no bn1 channel removed
    assert torch.equal(pruned.bn1.weight, model.bn1.weight) and pruned.conv1.out_channels == 16
    assert any(row["channels_after"] < row["channels_before"] for row in data["layers"])
    # under the `all` rule a scored stem BN under the threshold removes its whole group (down to
    # min_channels), as the `fixed` strategy shows; excluded, its gammas do not count
    fixed_all = ["--strategy", "fixed", "--threshold", "0.01", "--group-rule", "all"]
    assert stem_width(prune("all-excluded", *fixed_all, "--bn-exclude", "bn1")[0]) == 16
    assert stem_width(prune("all-scored", *fixed_all, "--bn-include", "*bn*")[0]) == 1


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
    """The commands take their strategy names from the one torch-free table of the library."""
    import typing

    from polarprune.commands import mask, prune
    from polarprune.pruning.options import PruneOptions
    from polarprune.pruning.resolve import ALL_STRATEGIES
    from polarprune.pruning.strategies import SELECTORS

    assert set(prune.STRATEGY_CHOICES) == set(ALL_STRATEGIES)
    assert set(typing.get_args(PruneOptions.model_fields["strategy"].annotation)) == set(ALL_STRATEGIES)
    assert set(mask.STRATEGY_CHOICES) == set(ALL_STRATEGIES) - {"mask", "flops-target", "latency-target"} == set(SELECTORS)


def test_command_options_are_the_prune_options() -> None:
    """Every option of ``prune`` / ``mask`` is a ``PruneOptions`` field with the model's default."""
    import argparse

    from polarprune.commands import mask, prune
    from polarprune.pruning.options import PruneOptions

    for module, fields in ((prune, prune.PRUNE_FIELDS), (mask, mask.MASK_FIELDS)):
        parser = argparse.ArgumentParser()
        module.register(parser.add_subparsers())
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = next(iter(sub.choices.values()))
        defaults = {a.dest: a.default for a in command._actions}
        for name in fields:
            expected = PruneOptions.model_fields[name].get_default(call_default_factory=True)
            assert defaults[name] == expected, (module.__name__, name)
        args = command.parse_args(["x.pt", "--out", "o"])
        assert module.options_from_args(args, fields) == PruneOptions()
    args = command.parse_args(["x.pt", "--out", "o", "--strategy", "percent"])
    with pytest.raises(PolarpruneError, match="needs --percent"):
        prune.options_from_args(args, mask.MASK_FIELDS)
