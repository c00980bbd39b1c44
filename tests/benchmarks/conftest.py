"""Each benchmark test starts as a fresh bench process would: no git revision checked yet
(``bench/common.checked_revision`` keeps the first one of a process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.fixture(autouse=True)
def fresh_run_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import common

    monkeypatch.setattr(common, "_RUN_REVISION", {})
