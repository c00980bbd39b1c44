"""The time and memory budget of the pruning stages (``pruning/budget.py``): a run over budget stops
with one line naming the model and the stage; within budget nothing changes."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from torch import nn

from polarprune.errors import PolarpruneError
from polarprune.pruning import prune_model
from polarprune.pruning.api import channel_groups, plan_pruning
from polarprune.pruning import budget as budget_module
from polarprune.pruning.budget import GIB, Budget, guarded, model_bytes, over_budget, resident_bytes
from own_models import build_net
from prune_roundtrip import zero_half_of_every_bn


def test_over_budget_names_the_limit_that_was_passed() -> None:
    budget = Budget(seconds=10, memory_gb=1)
    assert over_budget(budget, 9.9, GIB, GIB) == ""
    assert over_budget(budget, 10.5, 0, GIB) == "took more than 10 s"
    assert over_budget(budget, 1.0, 3 * GIB, 2 * GIB) == "grew memory by 3.0 GB, above the 2.0 GB allowed"
    assert over_budget(Budget(seconds=None, memory_gb=None), 1e9, 100 * GIB, 0) == ""
    assert over_budget(budget, 1.0, None, 0) == ""  # memory not readable: only the time counts


@pytest.mark.parametrize("fields", [{"seconds": 0}, {"memory_gb": -1}, {"seconds": "1"}, {"interval": 0}])
def test_a_bad_budget_is_one_line(fields: dict) -> None:
    with pytest.raises(PolarpruneError, match="^budget "):
        Budget(**fields)


def test_model_bytes_counts_parameters_and_buffers() -> None:
    bn = nn.BatchNorm2d(8)  # weight, bias, running mean and var (float32), num_batches_tracked (int64)
    assert model_bytes(bn) == 4 * 8 * 4 + 8
    assert resident_bytes() is None or resident_bytes() > 0


def test_the_watchdog_stops_a_stage_that_runs_too_long() -> None:
    model = nn.Linear(2, 2)
    start = time.perf_counter()
    with pytest.raises(PolarpruneError) as caught:
        with guarded(model, Budget(seconds=0.2, interval=0.01), "spinner") as guard, guard.step("spin"):
            while time.perf_counter() - start < 30:  # pure Python: the budget exception is raised here
                pass
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("pruning spinner stopped in stage 'spin': it took more than 0.2 s")
    assert time.perf_counter() - start < 30


def test_an_enclosing_guard_reports_its_own_breach() -> None:
    model = nn.Linear(2, 2)
    start = time.perf_counter()
    with pytest.raises(PolarpruneError, match=r"^pruning outer stopped in stage 'long': it took more than 0\.2 s"):
        with guarded(model, Budget(seconds=0.2, interval=0.01), "outer") as outer, outer.step("long"):
            with guarded(model, Budget(seconds=None, memory_gb=None), "inner") as inner, inner.step("inner step"):
                while time.perf_counter() - start < 30:
                    pass


def test_a_tiny_budget_stops_prune_model_with_one_line_naming_model_and_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_net().eval()
    zero_half_of_every_bn(model)
    x = torch.randn(1, 3, 32, 32)
    readings = itertools.count(0, GIB)  # a process whose memory grows by 1 GB at every reading (thread-safe)
    monkeypatch.setattr(budget_module, "resident_bytes", lambda: next(readings))
    with pytest.raises(PolarpruneError, match=r"^pruning OwnNet stopped in stage '(start|graph|decide|compensation|surgery|report)': "
                                              r"it grew memory by \d+\.0 GB, above the 1\.0 GB allowed") as caught:
        prune_model(model, x, "fixed", budget=Budget(seconds=None, memory_gb=1.0, interval=0.001))
    assert "\n" not in str(caught.value)
    with pytest.raises(PolarpruneError, match=r"^pruning OwnNet stopped in stage 'graph'"):
        channel_groups(model, x, budget=Budget(seconds=1e-9))  # over before the stage starts


def test_within_budget_the_result_is_unchanged() -> None:
    model = build_net().eval()
    zero_half_of_every_bn(model)
    x = torch.randn(1, 3, 32, 32)
    unlimited = plan_pruning(model, x, "fixed", budget=Budget(seconds=None, memory_gb=None))
    default = plan_pruning(model, x, "fixed")
    assert unlimited.keys() == default.keys() and all(torch.equal(unlimited[k], default[k]) for k in default)


@pytest.mark.slow
def test_the_budget_stops_torch_pruning_on_a_whole_detector() -> None:
    """Traced whole (post-processing included, as a plain module fed a 4-D batch), Faster R-CNN makes
    Torch-Pruning's grouping grow for minutes and gigabytes; the budget stops it in seconds."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    class Whole(nn.Module):  # no family knows it: traced as it is
        def __init__(self) -> None:
            super().__init__()
            self.detector = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, min_size=160, max_size=160)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.detector(list(x))[0]["boxes"]

    start = time.perf_counter()
    with pytest.raises(PolarpruneError, match=r"^pruning Whole stopped in stage 'graph': it (took more than 8 s|grew memory)"):
        channel_groups(Whole().eval(), torch.rand(1, 3, 160, 160), budget=Budget(seconds=8, memory_gb=2))
    assert time.perf_counter() - start < 60
