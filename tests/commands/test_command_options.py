"""Command options that had no test: ``train --no-resume``, ``eval --image-size`` and ``eval --device``;
each checked by its effect (what was trained, which images the model saw, where it ran); and the
commands' JSON summaries against numbers worked out here (accuracy counted here, MACs and params by hand)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fixtures import make_imagefolder
from polarprune import serialization
from polarprune.cli import main
from polarprune.models import create
from polarprune.serialization import read_model


def digits_accuracy(model) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of ``model`` on the digits' 360 test images, counted here."""
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
        assert main(["flops", "small_cnn", "--input-size", str(size), "--in-channels", "3", "--num-classes", str(classes),
                     "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["macs"] == small_cnn_macs(size, classes=classes)
        assert result["params"] == small_cnn_params(classes=classes)
        assert result["flops"] > result["macs"]  # FLOPs add the BN, ReLU and pooling work


CONFIG = """seed: 0
deterministic: true
model: {name: small_cnn, options: {width: 4}}
data: {name: digits, train_subset: 256, eval_subset: 64}
train: {epochs: 2, lr: 0.05, progress: false, schedule: {type: constant}}
"""


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def train(cfg: Path, out: Path, *extra: str) -> dict:
    assert main(["train", str(cfg), f"out={out}", "--json", *extra]) == 0
    return metrics(out)


def test_train_no_resume_starts_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder holds epoch 1 of a run at lr 0.3. Resumed, the 2-epoch run at lr 0.05 keeps that epoch;
    with ``--no-resume`` it trains both epochs again, exactly as in an empty folder."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    first = train(cfg, tmp_path / "run", "train.epochs=1", "train.lr=0.3")
    assert [(m["epoch"], m["lr"]) for m in first] == [(1, 0.3)]
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")

    resumed = train(cfg, tmp_path / "resumed")
    assert [(m["epoch"], m["lr"]) for m in resumed] == [(1, 0.3), (2, 0.05)]  # the default resumes

    again = train(cfg, tmp_path / "run", "--no-resume")
    fresh = train(cfg, tmp_path / "fresh")
    assert [(m["epoch"], m["lr"]) for m in again] == [(1, 0.05), (2, 0.05)]  # the epoch counter restarted
    drop = {"images_per_s", "epoch_time_s"}  # timings
    assert [{k: v for k, v in m.items() if k not in drop} for m in again] == \
        [{k: v for k, v in m.items() if k not in drop} for m in fresh]
    ours, theirs = (read_model(tmp_path / f / "last.pt").state_dict() for f in ("run", "fresh"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    other = read_model(tmp_path / "resumed" / "last.pt").state_dict()
    assert not all(torch.equal(other[k], theirs[k]) for k in theirs)  # resuming from lr 0.3 gives another model
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [s["epochs"] for s in summaries] == [1, 2, 2, 2]


@pytest.fixture()
def folder_and_model(tmp_path: Path) -> tuple[Path, Path]:
    """An ImageFolder of 72 px images (3 classes, train and val) and a 3-class small_cnn file."""
    root = make_imagefolder(tmp_path / "if", n_per_class=2, size=72, classes=3)
    torch.manual_seed(0)
    return root, serialization.save(create("small_cnn", 3, in_channels=3).eval(), tmp_path / "m.safetensors")


def seen_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], str]]:
    """Shape and device of every batch ``eval`` feeds its model (a hook put on by a wrapped ``evaluate``)."""
    import polarprune.training.engine as engine

    seen: list[tuple[tuple[int, ...], str]] = []
    real = engine.evaluate

    def evaluate(model, loader, device, *args, **kwargs):
        handle = model.register_forward_pre_hook(lambda m, a: seen.append((tuple(a[0].shape), a[0].device.type)))
        try:
            return real(model, loader, device, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(engine, "evaluate", evaluate)
    return seen


@pytest.mark.parametrize("size", [32, 48])
def test_eval_image_size_is_the_size_the_model_sees(folder_and_model, monkeypatch, capsys, size: int) -> None:
    root, model = folder_and_model
    seen = seen_inputs(monkeypatch)
    assert main(["eval", str(model), "--data", "imagefolder", "--data-root", str(root), "--image-size", str(size),
                 "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and [shape for shape, _ in seen] == [(6, 3, size, size)]
    assert result["macs"] == small_cnn_macs(size, classes=3) and result["params"] == small_cnn_params(classes=3)


def test_eval_device(folder_and_model, monkeypatch, capsys) -> None:
    root, model = folder_and_model
    seen = seen_inputs(monkeypatch)
    base = ["eval", str(model), "--data", "imagefolder", "--data-root", str(root), "--image-size", "32", "--json"]
    assert main([*base, "--device", "cpu"]) == 0
    assert {device for _, device in seen} == {"cpu"}
    capsys.readouterr()
    assert main([*base, "--device", "tpu"]) == 1
    assert capsys.readouterr().err.strip() == "polarprune: error: device 'tpu': expected auto, cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 1
        assert "CUDA is not available on this machine" in capsys.readouterr().err
    else:
        seen.clear()
        assert main([*base, "--device", "cuda"]) == 0
        assert {device for _, device in seen} == {"cuda"}
