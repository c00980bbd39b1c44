"""bench/gpu_check.py starts and skips cleanly on a machine without CUDA; its pass/fail rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402


def test_skips_without_cuda(tmp_path):
    result = BENCH / "results" / "gpu_check.json"
    before = result.stat().st_mtime_ns if result.exists() else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [gpu_check.SKIP_LINE]
    assert (result.stat().st_mtime_ns if result.exists() else None) == before  # nothing written


def test_require_fails_a_check_that_took_the_wrong_path():
    info = {"grad_scaler_enabled": True, "sync_batchnorm_layers": 3, "ddp": True}
    assert gpu_check.require(info, grad_scaler_enabled=True, sync_batchnorm_layers="some", ddp=True) is info
    with pytest.raises(RuntimeError, match="sync_batchnorm_layers"):
        gpu_check.require({**info, "sync_batchnorm_layers": 0}, sync_batchnorm_layers="some")
    with pytest.raises(RuntimeError, match="grad_scaler_enabled"):
        gpu_check.require({**info, "grad_scaler_enabled": False}, grad_scaler_enabled=True)


def test_engine_steps_run_on_cpu(tmp_path):
    """The engine call the GPU checks make (config keys, trainer attributes) works; on the CPU
    the CUDA-only parts stay off."""
    info = gpu_check.train_steps(tmp_path, 2, device="cpu", channels_last=True)
    assert info["loss_finite"] and len(info["history"]) == 1
    assert not info["grad_scaler_enabled"] and not info["ddp"] and info["sync_batchnorm_layers"] == 0
