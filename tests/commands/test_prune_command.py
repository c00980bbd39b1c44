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


def top1_by_hand(model: torch.nn.Module, name: str, subset: int) -> tuple[float, int]:
    """Percent of the ``subset`` evaluation images of data set ``name`` whose arg-max logit is the label."""
    from polarprune.config import DataConfig
    from polarprune.data import build_data

    loader = build_data(DataConfig(name=name, eval_subset=subset, train_subset=None, workers=0)).eval_loader
    right = seen = 0
    model.eval()
    with torch.no_grad():
        for images, labels in loader:
            right += int((model(images).argmax(dim=1) == labels).sum())
            seen += len(labels)
    return 100.0 * right / seen, seen


def digits_small_cnn() -> torch.nn.Module:
    """A small CNN that classifies digits better than chance without training: BN statistics taken
    from 512 training images and the last layer a least-squares fit of one-hot labels on its features.
    (A random model predicts one class for every image, so pruning could not change its top-1.)"""
    from polarprune.config import DataConfig
    from polarprune.data import build_data

    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=1, width=8)
    bundle = build_data(DataConfig(name="digits", train_subset=512, eval_subset=None, batch_size=512, workers=0))
    images, labels = next(iter(bundle.train_loader))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # one forward in train mode sets the statistics of that batch
    features: list[torch.Tensor] = []
    with torch.no_grad():
        model.train()(images)
        handle = model.classifier[2].register_forward_hook(lambda module, args, out: features.append(out))
        model.eval()(images)
        handle.remove()
        design = torch.cat([features[0], torch.ones(len(images), 1)], dim=1)
        solution = torch.linalg.lstsq(design, torch.nn.functional.one_hot(labels, 10).float()).solution
        model.classifier[3].weight.copy_(solution[:-1].T)
        model.classifier[3].bias.copy_(solution[-1])
    return model


def test_prune_command_mask_and_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polarprune.sparsity.masks import save_mask

    tiny_file = serialization.save(digits_small_cnn(), tmp_path / "digits.safetensors")

    mask = tmp_path / "mask.json"
    save_mask({"features.1": torch.tensor([True, False] * 4)}, mask, "small_cnn")
    out, report = tmp_path / "m.safetensors", tmp_path / "m.json"
    code = main(["prune", str(tiny_file), "--strategy", "mask", "--mask", str(mask), "--out", str(out), "--report", str(report),
                 "--data", "digits", "--subset", "64"])
    assert code == 0
    data = json.loads(report.read_text())
    assert [r["channels_after"] for r in data["layers"] if r["group"] == "features.1"] == [4]
    pruned = serialization.load(out)
    assert pruned.features[0].out_channels == 4

    def macs(first: int) -> int:  # small_cnn (1 channel in, width 8) on 8x8 digits, conv 0 with ``first`` filters
        convs = 8 * 8 * (1 * first + first * 8) + 4 * 4 * (8 * 16 + 16 * 16)
        return 9 * convs + 16 * 16 + 16 * 10

    assert (data["macs_before"], data["macs_after"]) == (macs(8), macs(4))
    # the reported top-1 values are the original's and the written model's, on the same 64 images
    before, seen = top1_by_hand(serialization.load(tiny_file), "digits", 64)
    after, _ = top1_by_hand(pruned, "digits", 64)
    assert seen == 64 and before != after  # the fitted model does lose accuracy to this mask
    assert data["top1_before"] == pytest.approx(before, abs=1e-9) and data["top1_after"] == pytest.approx(after, abs=1e-9)
    assert f"top-1 {before:.2f}% -> {after:.2f}% on the digits evaluation split" in capsys.readouterr().out


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
    assert set(mask.STRATEGY_CHOICES) == set(ALL_STRATEGIES) - {"mask", "flops-target", "latency-target", "latency-threshold"} == set(SELECTORS)


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


@pytest.mark.slow
def test_prune_command_on_a_detector_file_uses_its_input_form(tmp_path: Path) -> None:
    """A torchvision detector file is pruned by the command with the family's input form (a list of images),
    not a 4-D tensor; the report records one image's shape and the pruned file loads from itself."""
    from prune_roundtrip import zero_half_of_every_bn

    torch.manual_seed(0)
    model = create("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5, rpn_pre_nms_top_n_test=50,
                   rpn_post_nms_top_n_test=20, box_detections_per_img=10).eval()
    zero_half_of_every_bn(model)
    source = serialization.save(model, tmp_path / "det.safetensors")
    out, report = tmp_path / "pruned.safetensors", tmp_path / "report.json"
    assert main(["prune", str(source), "--strategy", "fixed", "--out", str(out), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["input_shape"] == [3, 160, 160]
    assert data["macs_after"] < 0.6 * data["macs_before"]
    pruned = serialization.load(out)
    assert type(pruned).__name__ == "FasterRCNN"
    assert sum(p.numel() for p in pruned.parameters()) == data["params_after"]
