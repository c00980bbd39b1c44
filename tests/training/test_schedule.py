"""Learning-rate schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest

from polarprune.config import ScheduleConfig
from polarprune.training.schedule import lr_at, resolve_milestones


def test_multistep_with_factor_per_milestone():
    # the polarization CIFAR fine-tune recipe: x0.5 at 30, x0.5 at 80, x0.4 at 150
    cfg = ScheduleConfig(type="multistep", milestones=[30, 80, 150], gammas=[0.5, 0.5, 0.4])
    assert lr_at(cfg, 1e-3, 29.9, 200) == pytest.approx(1e-3)
    assert lr_at(cfg, 1e-3, 30.0, 200) == pytest.approx(5e-4)
    assert lr_at(cfg, 1e-3, 100, 200) == pytest.approx(2.5e-4)
    assert lr_at(cfg, 1e-3, 199, 200) == pytest.approx(1e-4)


def test_first_epoch_lr_and_fraction_milestones():
    cfg = ScheduleConfig(milestones=[0.3, 0.6, 0.8], gammas=0.2, first_epoch_lr=0.01)
    assert resolve_milestones(cfg, 200) == pytest.approx([60, 120, 160])
    assert lr_at(cfg, 0.1, 0.5, 200) == pytest.approx(0.01)
    assert lr_at(cfg, 0.1, 1.0, 200) == pytest.approx(0.1)
    assert lr_at(cfg, 0.1, 130, 200) == pytest.approx(0.1 * 0.2 * 0.2)


def test_cosine_with_warmup():
    cfg = ScheduleConfig(type="cosine", warmup_epochs=5, warmup_start_factor=0.1)
    assert lr_at(cfg, 0.4, 0.0, 256) == pytest.approx(0.04)
    assert lr_at(cfg, 0.4, 2.5, 256) == pytest.approx(0.4 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 0.4, 5.0, 256) == pytest.approx(0.4)
    mid = 5 + (256 - 5) / 2
    assert lr_at(cfg, 0.4, mid, 256) == pytest.approx(0.2)
    assert lr_at(cfg, 0.4, 256, 256) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(lr_at(cfg, 0.4, 100.3, 256))
