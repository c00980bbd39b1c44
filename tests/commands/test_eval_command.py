"""``polarprune eval``: its top-1/top-5 against an evaluation loop written here, its costs, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latency_fakes import fixed_rounds
from polarprune import serialization
from polarprune.cli import main
from polarprune.config import DataConfig
from polarprune.data import build_data
from polarprune.flops import count_model
from polarprune.models import create


@pytest.fixture()
def model_file(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A small_cnn for the digits with spread-out weights (its predictions are not constant)."""
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 1.0)
    return model, serialization.save(model, tmp_path / "digits.safetensors")


def reference_accuracy(model: torch.nn.Module, subset: int | None) -> tuple[float, float, int]:
    """Top-1 and top-5 (percent) and the image count, counted image by image."""
    data = build_data(DataConfig(name="digits", eval_batch_size=97, eval_subset=subset, train_subset=None))
    top1 = top5 = count = 0
    with torch.no_grad():
        for images, labels in data.eval_loader:
            for scores, label in zip(model(images).tolist(), labels.tolist()):
                ranked = sorted(range(len(scores)), key=lambda c: -scores[c])
                top1 += int(ranked[0] == label)
                top5 += int(label in ranked[:5])
                count += 1
    return 100.0 * top1 / count, 100.0 * top5 / count, count


def test_eval_top1_equals_an_independent_evaluation(model_file, capsys) -> None:
    model, path = model_file
    assert main(["eval", str(path), "--data", "digits", "--json", "--batch-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    top1, top5, count = reference_accuracy(model, None)
    assert result["images"] == count == 360  # the digits' fixed test split
    assert result["top1"] == pytest.approx(top1, abs=1e-9)
    assert result["top5"] == pytest.approx(top5, abs=1e-9)
    assert 0 < result["top1"] < 100  # not a degenerate model
    cost = count_model(model, (1, 8, 8))
    assert (result["macs"], result["flops"], result["params"]) == (cost.macs, cost.flops, cost.params)
    assert result["latency_ms"] > 0


def test_eval_subset_and_text_output(model_file, capsys) -> None:
    model, path = model_file
    assert main(["eval", str(path), "--data", "digits", "--subset", "100"]) == 0
    out = capsys.readouterr().out
    top1, _, count = reference_accuracy(model, 100)
    assert count == 100
    assert f"top-1 {top1:.2f}%" in out and "on 100 images" in out


def test_eval_errors_are_one_line(model_file, tmp_path: Path, capsys) -> None:
    _, path = model_file
    assert main(["eval", str(tmp_path / "missing.safetensors"), "--data", "digits"]) == 1
    assert main(["eval", str(path), "--data", "digits", "--batch-size", "0"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 2 and all(line.startswith("polarprune: error: ") for line in errors)
    assert "--batch-size must be >= 1" in errors[1]


def test_eval_reads_only_the_evaluation_split(tmp_path: Path, capsys) -> None:
    """An ImageFolder tree with only ``val/``: eval works, on exactly those images (was: ``train not found``)."""
    import numpy as np
    from fixtures import make_imagefolder
    from PIL import Image

    root = make_imagefolder(tmp_path / "valonly", n_per_class=4, size=8, classes=3, split_names=("val",))
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=3, in_channels=3, width=8).eval()
    path = serialization.save(model, tmp_path / "m.safetensors")
    assert main(["eval", str(path), "--data", "imagefolder", "--data-root", str(root), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "no train/ folder" in captured.err  # says how it normalised
    files = sorted((root / "val").glob("class*/*.png"))
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for f in files])
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).view(1, 3, 1, 1)
    labels = torch.tensor([int(f.parent.name.removeprefix("class")) for f in files])
    with torch.no_grad():
        expected = 100.0 * float((model((images - mean) / std).argmax(1) == labels).float().mean())
    assert result["images"] == 12
    assert result["top1"] == pytest.approx(expected, abs=1e-6)


def test_eval_model_that_does_not_fit_the_images_is_one_line(model_file, tmp_path: Path, capsys) -> None:
    """A 1-channel digits model on 3-channel images: one line naming the model, the shape and the expected form."""
    from fixtures import make_imagefolder

    _, path = model_file
    root = make_imagefolder(tmp_path / "rgb", n_per_class=2, size=8, classes=2)
    assert main(["eval", str(path), "--data", "imagefolder", "--data-root", str(root)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("polarprune")]
    assert len(errors) == 1
    assert errors[0].startswith(f"polarprune: error: {path} does not run on input 1x3x8x8: it expects N x 1 x H x W")


def test_eval_flags_a_noisy_latency(model_file, monkeypatch, capsys) -> None:
    _, path = model_file
    fixed_rounds(monkeypatch, [0.001, 0.003])
    assert main(["eval", str(path), "--data", "digits", "--subset", "20"]) == 0
    captured = capsys.readouterr()
    assert "CPU latency (batch 1, 1 thread) 2.000 ms (noisy: spread 100%)" in captured.out
    warnings = [line for line in captured.err.splitlines() if "noisy" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and "eager" in warnings[0]
    assert main(["eval", str(path), "--data", "digits", "--subset", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["latency_ms"], result["latency_spread"], result["latency_threads"]) == (2.0, 1.0, 1)


def test_eval_prints_a_tight_latency_plainly(model_file, monkeypatch, capsys) -> None:
    _, path = model_file
    fixed_rounds(monkeypatch, [0.0005])
    assert main(["eval", str(path), "--data", "digits", "--subset", "20"]) == 0
    captured = capsys.readouterr()
    assert "CPU latency (batch 1, 1 thread) 0.500 ms\n" in captured.out
    assert "noisy" not in captured.out + captured.err
