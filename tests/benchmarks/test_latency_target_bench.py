"""bench/bench_latency_target.py's figures and verdicts, and its renderers, on hand-made cells (no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_latency_target as blt  # noqa: E402
from rendering import latency_target as rlt  # noqa: E402


def test_arm_figures_are_cuts_against_the_unpruned_model() -> None:
    fig = blt.arm_figures(macs=40, base_macs=100, ratio=0.55, predicted_ratio=0.5)
    assert fig["macs_cut"] == pytest.approx(0.6)
    assert fig["latency_cut"] == pytest.approx(0.45)
    assert fig["cut_over_macs_cut"] == pytest.approx(0.75)
    assert blt.arm_figures(100, 100, 0.9, None)["cut_over_macs_cut"] is None  # no MACs cut: no ratio


def _cell(latency_ratio: float, macs: int, tp_macs: int, ratio_to_tp: float, batch: int = 64) -> dict:
    arms = {"latency-target": blt.arm_figures(macs, 100, latency_ratio, 0.5),
            "flops-target": blt.arm_figures(macs, 100, 0.6, 0.55),
            "tp-r16": blt.arm_figures(tp_macs, 100, 0.7, 0.6)}
    cell = {"model": "resnet56", "runtime": "onnxruntime", "batch": batch, "arms": arms, "ratio_to_tp": ratio_to_tp}
    cell["verdicts"] = blt.verdicts(cell, batch)
    return cell


def test_verdicts_check_tolerance_goal_and_torch_pruning_at_equal_macs() -> None:
    good = _cell(latency_ratio=0.53, macs=50, tp_macs=51, ratio_to_tp=0.9)["verdicts"]
    assert good == {"within_tolerance": True, "goal": True, "tp_equal_macs": True, "not_slower_than_tp": True}
    bad = _cell(latency_ratio=0.60, macs=40, tp_macs=50, ratio_to_tp=1.1)["verdicts"]
    assert bad["within_tolerance"] is False  # cut 40% misses 50% by 0.10
    assert bad["goal"] is False  # 0.40 / 0.60 = 0.67 < 0.9
    assert bad["tp_equal_macs"] is False and bad["not_slower_than_tp"] is None  # 10 points apart: no comparison
    assert _cell(0.5, 50, 50, 1.0, batch=1)["verdicts"]["goal"] is None  # the goal is stated at batch 64 only


def test_missing_cells_follow_the_run_order_and_skip_patterns_match_globs() -> None:
    cells = {blt.cell_key("resnet56", "onnxruntime", 1): {}}
    missing = blt.missing_cells(cells, models=("resnet56",), runtimes=("eager-channels-last", "onnxruntime"), batches=(1, 64))
    assert missing == ["resnet56/eager-channels-last/1", "resnet56/eager-channels-last/64", "resnet56/onnxruntime/64"]
    assert blt.skipped("resnet50/onnxruntime/64", ["resnet50/*/64"])
    assert not blt.skipped("resnet50/onnxruntime/1", ["resnet50/*/64"])


def test_a_rerun_keeps_cells_of_the_same_protocol_only(tmp_path: Path) -> None:
    path = tmp_path / "latency_target.json"
    proto = blt.protocol(threads=1, seed=0)
    path.write_text(json.dumps({"protocol": proto, "cells": {"a/b/1": {"x": 1}}}))
    assert blt.load_cells(path, proto) == {"a/b/1": {"x": 1}}
    assert blt.load_cells(path, blt.protocol(threads=2, seed=0)) == {}
    assert blt.load_cells(tmp_path / "absent.json", proto) == {}


def test_rendered_tables_show_verdicts_misses_and_missing_cells() -> None:
    proto = blt.protocol(threads=1, seed=0)
    ok = _cell(latency_ratio=0.52, macs=50, tp_macs=51, ratio_to_tp=1.05)
    ok.update(unpruned={"predicted_ms": 2.0, "measured_ms": 2.5}, profile_seconds=12.0, layers=56, cache_files=8,
              prune_to_latency={"refined": True}, wall_seconds=90.0, load_average_1min=2.0)
    missed = {**_cell(latency_ratio=0.75, macs=20, tp_macs=60, ratio_to_tp=0.9, batch=1), "runtime": "eager-channels-last",
              "error": "latency-target: misses"}
    missed.update({k: ok[k] for k in ("unpruned", "profile_seconds", "layers", "cache_files", "wall_seconds", "load_average_1min")},
                  prune_to_latency={"refined": True, "refinements": 3}, provenance={"git": "abc1234"})
    result = {"protocol": proto, "cells": {"resnet56/onnxruntime/64": ok, "resnet56/eager-channels-last/1": missed},
              "missing": ["resnet50/onnxruntime/64"]}
    cuts = rlt.cut_table(result)
    assert "| **48.0%** | 50.0% | **0.96** |" in cuts  # within the tolerance and the goal met: bold
    assert "| 25.0% (missed) | 80.0% | 0.31 |" in cuts  # prune_to_latency's error: its last model, marked
    assert cuts.index("eager-channels-last") < cuts.index("onnxruntime")  # protocol order: batch 1 first
    goals = rlt.goal_text(result)
    assert "1 of 2 cells (prune_to_latency failed in 1: resnet56/eager-channels-last/1)" in goals
    assert "latency-target slower in 1 (resnet56/onnxruntime/64)" in goals
    assert "Larger latency cut than flops-target at the same MACs: 1 of 2 cells." in goals  # 48% vs 40%; 25% vs 40%
    assert "resnet50/onnxruntime/64" in rlt.missing_text(result)
    prediction = rlt.prediction_table(result)
    assert "| 12 | 56 | 8 | 2.00 vs 2.50 | 0.50 vs 0.52 / 0.55 vs 0.60 / 0.60 vs 0.70 | 1 | 1.5 | 2.0 | - |" in prediction
    assert "| 3, missed |" in prediction  # a cell of a revision that re-aims several times records how often
    assert "| abc1234 |" in prediction  # each cell's own revision
    assert rlt.errors_text(result) == "- resnet56/eager-channels-last/1: latency-target: misses"


def test_a_cell_value_is_reached_by_its_key_with_slashes(tmp_path: Path) -> None:
    from rendering.engine import RenderError, Results

    cell = _cell(latency_ratio=0.52, macs=50, tp_macs=51, ratio_to_tp=1.05)
    (tmp_path / "latency_target.json").write_text(json.dumps({"cells": {"resnet56/onnxruntime/64": cell}}))
    results = Results(tmp_path)
    assert rlt.latency_target_cell(results, "resnet56/onnxruntime/64", "arms/latency-target/latency_cut", ".1%") == "48.0%"
    with pytest.raises(RenderError, match="no cell"):
        rlt.latency_target_cell(results, "resnet50/onnxruntime/64", "ratio_to_tp")


def test_spans_and_the_own_check_cut_are_computed_from_the_cells(tmp_path: Path) -> None:
    from rendering.engine import RenderError, Results

    one = {**_cell(latency_ratio=0.6, macs=50, tp_macs=51, ratio_to_tp=1.0), "load_average_1min": 4.2,
           "prune_to_latency": {"measured_latency_ratio": 0.59}}
    two = {**_cell(latency_ratio=0.8, macs=50, tp_macs=51, ratio_to_tp=1.0, batch=1), "load_average_1min": 9.6}
    result = {"protocol": blt.protocol(threads=1, seed=0), "cells": {"resnet56/onnxruntime/64": one, "resnet56/onnxruntime/1": two}}
    (tmp_path / "latency_target.json").write_text(json.dumps(result))
    results = Results(tmp_path)
    assert rlt.latency_target_span(results, "prediction-gap", ".2f") == "0.10 to 0.30"  # 0.6 - 0.5 and 0.8 - 0.5
    assert rlt.latency_target_span(results, "load", ".0f") == "4 to 10"
    assert rlt.latency_target_own_cut(results, "resnet56/onnxruntime/64") == "41.0%"
    with pytest.raises(RenderError, match="unknown figure"):
        rlt.latency_target_span(results, "speed")
