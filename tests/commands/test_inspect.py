"""``polarprune inspect`` (table, --json, PNGs) and ``polarprune mask`` on small checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polarprune.cli import main
from polarprune.models import create
from polarprune.sparsity.masks import load_mask
from polarprune.training.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": 1, "spec": model.polarprune_spec, "model": state, "epoch": 1}, path)
    return path


@pytest.fixture()
def small_checkpoint(tmp_path: Path) -> Path:
    model = create("small_cnn", 10, in_channels=1, bn_init=0.5)
    model.get_submodule("features.1").weight.data = torch.tensor([0.001] * 10 + [0.5] * 22)
    model.get_submodule("features.8").weight.data[:16] = -0.004  # |gamma| counts
    return save_checkpoint(model, tmp_path / "small.pt")


def test_inspect_json_and_plots(small_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots"
    assert main(["inspect", str(small_checkpoint), "--json", "--plot-dir", str(plots)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert report["model"] == "small_cnn"
    layers = {row["name"]: row for row in report["layers"]}
    assert list(layers) == ["features.1", "features.4", "features.8", "features.11", "classifier.1"]
    first = layers["features.1"]
    assert first["channels"] == 32 and first["regularized"] is True
    assert first["min"] == pytest.approx(0.001) and first["q25"] == pytest.approx(0.001)
    assert first["median"] == pytest.approx(0.5) and first["max"] == pytest.approx(0.5)
    assert first["below_0.01"] == 10
    # histogram: 10 channels in bin 0, nothing until 0.5 -> the first valley starts at bin 1
    assert first["grad_threshold"] == pytest.approx(0.01) and first["grad_threshold_how"] == "valley"
    assert first["grad_removed"] == 10
    assert layers["features.8"]["below_0.01"] == 16 and layers["features.4"]["below_0.01"] == 0
    summary = report["summary"]
    assert summary["layers"] == 5 and summary["channels"] == 32 + 32 + 64 + 64 + 64 and summary["below_0.01"] == 26
    assert 0.0 < summary["trial_macs_ratio_fixed"] < 1.0
    for name in ("gamma_histogram.png", "gamma_layers.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in plots.iterdir()) == ["gamma_histogram.png", "gamma_layers.png"]


def test_inspect_table_and_regularized_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(create("resnet20", 10, bn_init=0.5), tmp_path / "r20.pt")
    assert main(["inspect", str(path), "--regularized-only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["layers"]) == 18 and report["layers"][0]["name"] == "layer1.0.bn1"
    assert report["summary"]["trial_macs_ratio_grad"] == pytest.approx(1.0)  # nothing polarized
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "bn1 " in text and "layer3.2.bn2" in text and "trial prune leaves 100.0% of the MACs" in text


def test_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "none.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("polarprune: error:") and "none.pt" in err and "\n" not in err


def test_mask_command(small_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mask.json"
    assert main(["mask", str(small_checkpoint), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.1" in text and f"wrote {out}" in text
    model = create("small_cnn", 10, in_channels=1)
    masks = load_mask(out, model)
    assert masks["features.1"].tolist() == [False] * 10 + [True] * 22  # |gamma| <= 0.01 goes
    assert int(masks["features.8"].sum()) == 48 and bool(masks["features.4"].all())
    doc = json.loads(out.read_text())
    assert doc["source"]["strategy"] == "fixed" and doc["source"]["threshold"] == 0.01
    assert 0.0 < doc["source"]["estimated_macs_ratio"] < 1.0
    ratio_out = tmp_path / "uniform.json"
    assert main(["mask", str(small_checkpoint), "--strategy", "uniform", "--ratio", "0.25", "--per-layer", "--out", str(ratio_out)]) == 0
    uniform = load_mask(ratio_out, model)
    assert int(uniform["features.1"].sum()) == 24 and int(uniform["classifier.1"].sum()) == 48


def test_mask_command_errors(small_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mask", str(small_checkpoint), "--strategy", "uniform", "--out", str(tmp_path / "m.json")]) == 1
    assert "needs --ratio" in capsys.readouterr().err
    assert main(["mask", str(small_checkpoint), "--out", str(tmp_path / "no" / "m.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["mask", str(small_checkpoint), "--bn-include", "nothing*", "--out", str(tmp_path / "m.json")]) == 1
    assert "--bn-include pattern 'nothing*' matches no BatchNorm" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
