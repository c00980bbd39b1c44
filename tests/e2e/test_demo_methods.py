"""``polarprune demo --method l1`` and ``--method masksparsity`` end to end, shortened by recipe
overrides (512 training images, 1-4 epochs a stage): every stage of the method runs, and the prune
stage removes exactly the channels the method's rule names, worked out here from the trained gammas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polarprune import serialization
from polarprune.serialization import read_model

pytestmark = pytest.mark.slow

SHORT = ["data.train_subset=512", "stages.finetune.train.epochs=1",
         "stages.prune.round_to=1"]  # exact widths in a subprocess (tests/conftest.py)


def demo(method: str, out: Path, *overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "polarprune", "demo", "--method", method, "--out", str(out), *SHORT, *overrides],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return json.loads((out / "summary.json").read_text())


def gammas(checkpoint: Path) -> dict[str, torch.Tensor]:
    """|gamma| of every BN of the model in a training checkpoint."""
    model = read_model(checkpoint)
    return {name: m.weight.detach().abs().double() for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def check_stages(summary: dict, out: Path, expected: list[str]) -> dict:
    """Every stage ran and finished; the prune stage cut MACs and the model kept its width after it."""
    assert [s["name"] for s in summary["stages"]] == expected
    assert all((out / stage / "done.json").is_file() for stage in expected)
    macs = {s["name"]: s["macs"] for s in summary["stages"]}
    report = json.loads((out / "prune" / "report.json").read_text())
    assert macs["prune"] == report["macs_after"] < report["macs_before"] == macs[expected[expected.index("prune") - 1]]
    assert macs["finetune"] == macs["prune"]
    pruned = serialization.load(out / "prune" / "pruned.safetensors")
    widths = {name: m.num_features for name, m in pruned.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert {row["group"]: row["channels_after"] for row in report["layers"]} == {row["group"]: widths[row["group"]] for row in report["layers"]}
    return report


def test_demo_l1_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "l1"
    summary = demo("l1", out, "stages.sparsity.train.epochs=2")
    assert summary["recipe"] == "demo-l1"
    report = check_stages(summary, out, ["sparsity", "prune", "finetune"])
    # percent 0.5: the 50% smallest |gamma| of all scored BNs go, wherever they are (one global cut)
    scored = gammas(out / "sparsity" / "last.pt")
    scored = {name: scored[name] for name in report["options"]["bn_names"]}
    flat = torch.cat(list(scored.values()))
    cut = torch.sort(flat).values[round(0.5 * flat.numel()) - 1]
    removed = {row["group"]: row["channels_before"] - row["channels_after"] for row in report["layers"]}
    assert removed == {name: int((g <= cut).sum()) for name, g in scored.items()}
    assert sum(removed.values()) == flat.numel() // 2


def test_demo_masksparsity_end_to_end(tmp_path: Path) -> None:
    """Mask-L1 at lambda 1 for 4 epochs (the schedule ends at lr 1e-4) drives masked gammas under 0.01."""
    from polarprune.sparsity.masks import load_mask

    out = tmp_path / "ms"
    summary = demo("masksparsity", out, "stages.baseline.train.epochs=1", "stages.sparsity.train.epochs=1",
                   "stages.mask_sparsity.train.epochs=4", "stages.mask_sparsity.sparsity.lbd=1")
    assert summary["recipe"] == "demo-masksparsity"
    report = check_stages(summary, out, ["baseline", "sparsity", "mask_sparsity", "prune", "finetune"])
    trained = gammas(out / "mask_sparsity" / "last.pt")
    masks = load_mask(out / "mask" / "mask.json", read_model(out / "mask_sparsity" / "last.pt"))
    # the mask: the 50% smallest L1-trained gammas are marked for removal
    assert sum(int((~keep).sum()) for keep in masks.values()) == sum(keep.numel() for keep in masks.values()) // 2
    removed = {row["group"]: row["channels_before"] - row["channels_after"] for row in report["layers"]}
    assert sum(removed.values()) > 0
    for name, keep in masks.items():
        below = trained[name] <= 0.01  # the prune stage's fixed threshold
        assert removed[name] == int(below.sum()), name
        assert not (below & keep).any(), name  # only masked channels went: the unmasked were not regularized
