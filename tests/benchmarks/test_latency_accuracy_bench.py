"""bench/bench_latency_accuracy.py's matching and paired test, and its renderers, on hand-made data (no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_latency_accuracy as bla  # noqa: E402
from rendering import latency_accuracy as rla  # noqa: E402
from stats import encode_correct  # noqa: E402


def test_candidate_cuts_are_a_grid_around_the_center_inside_the_bounds() -> None:
    assert bla.candidate_cuts(0.5, half_width=0.1, step=0.05) == [0.4, 0.45, 0.5, 0.55, 0.6]
    assert bla.candidate_cuts(0.9, half_width=0.1, step=0.05) == [0.8, 0.85, 0.9, 0.95]  # 1.0 is past the highest cut
    assert bla.candidate_cuts(0.05, half_width=0.1, step=0.05) == [0.05, 0.1, 0.15]  # nothing below the lowest


def test_closest_match_picks_the_nearest_latency_ratio_on_either_side() -> None:
    ratios = {"0.500": 0.61, "0.550": 0.55, "0.600": 0.47}
    assert bla.closest_match(ratios, 0.52) == "0.550"  # 0.03 away, against 0.05
    assert bla.closest_match(ratios, 0.49) == "0.600"
    assert bla.closest_match(ratios, 0.70) == "0.500"


def _per_image(correct: list[bool]) -> dict:
    return {"top1": 100.0 * sum(correct) / len(correct), **encode_correct(correct)}


def test_paired_counts_the_discordant_images_and_gives_mcnemars_p() -> None:
    # 20 images: both right on 10, only the reference right on 1, only the other right on 7, both wrong on 2
    ref = [True] * 10 + [True] + [False] * 7 + [False] * 2
    other = [True] * 10 + [False] + [True] * 7 + [False] * 2
    result = bla.paired(_per_image(ref), _per_image(other))
    assert (result["ref_only_right"], result["other_only_right"]) == (1, 7)
    assert result["difference"] == pytest.approx(30.0)  # 85% against 55%
    assert result["p"] == pytest.approx(2 * (1 + 8) / 2 ** 8)  # two-sided binomial(8, 1/2) tail at 1


def _cell(p_model: str, lt_ok: list[bool], ft_ok: list[bool], confirmation: tuple[float, float]) -> dict:
    arms = {}
    for arm, ok, ratio in (("latency-target", lt_ok, confirmation[0]), ("flops-target", ft_ok, confirmation[1])):
        arms[arm] = {"macs_cut": 0.6, "latency_ratio": ratio, "top1_pruned": 20.0, "finetune": {"top1": 100.0 * sum(ok) / len(ok),
                                                                                               "per_image": _per_image(ok)}}
    return {"model": p_model, "batch": 64, "arms": arms, "match_ratios": {"latency-target": 0.5, "flops-target": 0.51},
            "paired": bla.paired(arms["flops-target"]["finetune"]["per_image"], arms["latency-target"]["finetune"]["per_image"]),
            "latency_ratios_differ_by": abs(confirmation[0] - confirmation[1])}


def test_rendering_says_within_noise_or_beyond_from_the_paired_test() -> None:
    same = [True] * 50 + [False] * 50
    better = [True] * 80 + [False] * 20  # right on 30 more of the 100 images, wrong on none that the other got
    result = {"protocol": {"match": 0.02}, "cells": {
        "resnet20/64": _cell("resnet20", same, same, (0.50, 0.51)),
        "resnet56/64": _cell("resnet56", better, same, (0.50, 0.55)),
        "resnet56/1": {"model": "resnet56", "batch": 1, "error": "latency-target: missed"}}}
    text = rla.cells_markdown(result)
    assert "+0.00 points, within noise (p = 1)" in text
    assert "+30.00 points, ahead beyond noise (p = 1.9e-09)" in text
    assert "| resnet56 | 1 | latency-target failed |" in text
    assert ("within 0.02 of each other in the confirmation run: 1 of 2 cells. After fine-tuning, latency-target ahead of "
            "flops-target beyond noise in 1 cells, behind in 0, within noise in 1; latency-target failed in resnet56/1.") in text
    assert "latency-threshold" not in text  # cells from before that arm: no row, no tally


def test_the_threshold_arm_gets_its_own_row_and_tally() -> None:
    same, worse = [True] * 50 + [False] * 50, [True] * 20 + [False] * 80
    cell = _cell("resnet20", same, same, (0.50, 0.51))
    cell["arms"]["latency-threshold"] = {"macs_cut": 0.7, "latency_ratio": 0.49, "top1_pruned": 22.0,
                                         "finetune": {"top1": 20.0, "per_image": _per_image(worse)}}
    cell["match_ratios"]["latency-threshold"] = 0.52
    cell["paired_threshold"] = bla.paired(cell["arms"]["flops-target"]["finetune"]["per_image"], _per_image(worse))
    text = rla.cells_markdown({"protocol": {"match": 0.02}, "cells": {"resnet20/64": cell}})
    assert "| resnet20 | 64 | latency-threshold | 70.0% | 0.52 | 0.49 | 22.00 | 20.00 | -30.00 points, behind beyond noise (p = 1.9e-09) |" in text
    assert "latency-threshold ahead of flops-target beyond noise in 0 cells, behind in 1, within noise in 0." in text
