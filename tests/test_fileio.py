"""Atomic output files: the mode a plain ``open`` would give (the umask), never mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from polarprune import serialization
from polarprune.fileio import atomic_write_json, atomic_write_text, current_umask
from polarprune.models import create


@pytest.fixture()
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    assert current_umask() == mask
    text = atomic_write_text(tmp_path / "report.txt", "x")
    report = atomic_write_json(tmp_path / "report.json", {"a": 1})
    model = serialization.save(create("small_cnn", num_classes=10, in_channels=1, width=4), tmp_path / "m.safetensors")
    from polarprune.training.checkpoint import atomic_torch_save

    checkpoint = tmp_path / "last.pt"
    atomic_torch_save({"x": torch.ones(1)}, checkpoint)
    assert [mode(p) for p in (text, report, model, checkpoint)] == [expected] * 4
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "plain") == expected  # the same as an ordinary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "m.safetensors", "plain", "report.json", "report.txt"]
