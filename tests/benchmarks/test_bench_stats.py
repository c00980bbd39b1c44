"""bench/stats.py: McNemar's paired test and the per-image bitsets, against values worked out by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import stats  # noqa: E402


def test_discordant_counts_the_images_only_one_model_got_right() -> None:
    ref = [True, True, False, False, True]
    other = [True, False, True, False, False]
    # b: ref right, other wrong at images 1 and 4; c: ref wrong, other right at image 2
    assert stats.discordant(ref, other) == (2, 1)
    assert stats.discordant(other, ref) == (1, 2)
    with pytest.raises(ValueError, match="5 vs 4"):
        stats.discordant(ref, other[:4])


def test_mcnemar_exact_is_twice_the_binomial_tail() -> None:
    # b=3, c=0: n=3, P(X<=0) = 1/8, two-sided 2/8
    assert stats.mcnemar_exact(3, 0) == pytest.approx(0.25)
    assert stats.mcnemar_exact(0, 3) == pytest.approx(0.25)
    # b=1, c=9: n=10, P(X<=1) = (1 + 10) / 1024, two-sided 22/1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    # b=2, c=8: P(X<=2) = (1 + 10 + 45) / 1024 = 56/1024, two-sided 112/1024
    assert stats.mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    # equal counts: the tail passes one half, so the p-value is capped at 1; nothing discordant: 1
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    # large counts stay exact (no float overflow at 2**n): 60 vs 40 of 100 -> p = 0.0569 (just above 0.05)
    assert stats.mcnemar_exact(60, 40) == pytest.approx(0.056888, abs=1e-6)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_mcnemar_chi2_uses_the_continuity_correction() -> None:
    # b=1, c=9: (|1-9| - 1)^2 / 10 = 49/10; p = P(chi2_1 > 4.9) = erfc(sqrt(2.45)) = 0.02686
    statistic, p = stats.mcnemar_chi2(1, 9)
    assert statistic == pytest.approx(4.9) and p == pytest.approx(0.026857, abs=1e-6)
    assert p == pytest.approx(math.erfc(math.sqrt(2.45)))
    # b=10, c=10: (0 - 1)^2 clipped at 0 -> statistic 0, p 1; nothing discordant -> (0, 1)
    assert stats.mcnemar_chi2(10, 10) == (0.0, 1.0) and stats.mcnemar_chi2(0, 0) == (0.0, 1.0)


def test_bitset_round_trip_and_layout() -> None:
    correct = [True, False, False, True, True, False, False, False, True, True]
    record = stats.encode_correct(correct)
    # byte 0: bits 0, 3, 4 -> 1 + 8 + 16 = 25; byte 1: bits 0, 1 -> 3; base64 of b"\x19\x03" is "GQM="
    assert record == {"n": 10, "bits": "GQM="}
    assert stats.decode_correct(record) == correct
    with pytest.raises(ValueError, match="cannot hold"):
        stats.decode_correct({"n": 20, "bits": "GQM="})


def test_paired_verdict_judges_by_mcnemar_not_by_the_top1_gap() -> None:
    # two models with the same 50% top-1 on 40 images; one right on exactly the images the other misses:
    # b = c = 20, no evidence of a difference
    first = [i % 2 == 0 for i in range(40)]
    second = [not r for r in first]
    assert stats.paired_verdict(stats.encode_correct(first), stats.encode_correct(second)) == (False, 1.0)
    # 12 images only the second gets right, none the other way: p = 2 / 2**12 < 0.05
    worse = [False] * 12 + [True] * 28
    better = [True] * 40
    beyond, p = stats.paired_verdict(stats.encode_correct(worse), stats.encode_correct(better))
    assert beyond and p == pytest.approx(2 / 4096)


def test_unpaired_rule_is_two_standard_errors_of_a_difference() -> None:
    # se(80%) on 10,000 images = 100 * sqrt(0.8 * 0.2 / 10000) = 0.4 points
    assert stats.standard_error(80.0) == pytest.approx(0.4)
    assert stats.noise_line(80.0, 80.0) == pytest.approx(2 * math.sqrt(2) * 0.4)
    # on 2,000 images at 30%: sqrt(0.21 / 2000) = 1.0247 points
    assert stats.standard_error(30.0, 2000) == pytest.approx(1.0247, abs=1e-4)
    assert stats.beyond_noise(30.0, 33.0, 2000) and not stats.beyond_noise(30.0, 32.8, 2000)
