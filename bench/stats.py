"""Sampling noise of top-1 figures: the unpaired binomial rule and McNemar's paired test.

Pure functions of counts and per-image correctness (standard library only), shared by the
bench scripts, which store each model's per-image correctness, and by ``bench/rendering``,
which judges differences with them.

Two models scored on the same test images are paired: only the images where exactly one of them
is right (``b``: the first right, the second wrong; ``c``: the reverse) say anything about which
is better. McNemar's test asks whether ``b`` and ``c`` differ by more than a fair coin would
make them (under the null hypothesis each discordant image falls on either side with
probability 1/2).
"""

from __future__ import annotations

import base64
import math
from typing import Any, Sequence

# A difference is "beyond noise" when a two-sided test gives p below this (the unpaired rule's
# two standard errors are the same 95% line under a normal approximation).
ALPHA = 0.05


def standard_error(top1: float, n: int = 10_000) -> float:
    """Binomial standard error (points) of a top-1 (in %) on ``n`` test images."""
    return 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / n)


def noise_line(ref: float, top1: float, n: int = 10_000) -> float:
    """Two standard errors (points) of the difference of two unpaired top-1s on ``n`` images each."""
    return 2 * math.sqrt(standard_error(ref, n) ** 2 + standard_error(top1, n) ** 2)


def beyond_noise(ref: float, top1: float, n: int = 10_000) -> bool:
    """The unpaired rule: whether two top-1s differ by more than two standard errors of their difference."""
    return abs(top1 - ref) > noise_line(ref, top1, n)


def noise_figures(top1s: list[float], n: int = 10_000) -> dict[str, float]:
    """The sampling noise of a set of top-1s on ``n`` images, in points: their mean, the standard error
    at the mean, that of the difference of two such top-1s, and two of the latter (the unpaired line)."""
    mean = sum(top1s) / len(top1s)
    se = standard_error(mean, n)
    return {"mean": mean, "se": se, "difference": math.sqrt(2) * se, "line": 2 * math.sqrt(2) * se}


def share_below(gammas: list[float], limit: float = 0.01) -> float:
    """The share of ``gammas`` whose magnitude is below ``limit``."""
    return sum(abs(g) < limit for g in gammas) / len(gammas)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: twice the binomial(b + c, 1/2) tail at min(b, c), at most 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_chi2(b: int, c: int) -> tuple[float, float]:
    """McNemar's chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), and
    its p-value (one degree of freedom); (0, 1) when no image is discordant."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    if b + c == 0:
        return 0.0, 1.0
    statistic = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    return statistic, math.erfc(math.sqrt(statistic / 2))


def discordant(ref: Sequence[bool], other: Sequence[bool]) -> tuple[int, int]:
    """(b, c): images ``ref`` got right and ``other`` wrong, and the reverse; same images, same order."""
    if len(ref) != len(other):
        raise ValueError(f"per-image results of different test sets: {len(ref)} vs {len(other)} images")
    b = sum(1 for r, o in zip(ref, other) if r and not o)
    c = sum(1 for r, o in zip(ref, other) if o and not r)
    return b, c


def encode_correct(correct: Sequence[bool]) -> dict[str, Any]:
    """Per-image correctness in a compact, JSON-friendly form: ``n`` and a base64 bitset (image i
    is bit i % 8 of byte i // 8)."""
    packed = bytearray((len(correct) + 7) // 8)
    for i, right in enumerate(correct):
        if right:
            packed[i // 8] |= 1 << (i % 8)
    return {"n": len(correct), "bits": base64.b64encode(bytes(packed)).decode("ascii")}


def decode_correct(record: dict[str, Any]) -> list[bool]:
    """The per-image correctness ``encode_correct`` stored."""
    n, packed = int(record["n"]), base64.b64decode(record["bits"])
    if len(packed) != (n + 7) // 8:
        raise ValueError(f"a bitset of {len(packed)} bytes cannot hold {n} images")
    return [bool(packed[i // 8] >> (i % 8) & 1) for i in range(n)]


def paired_verdict(ref: dict[str, Any], other: dict[str, Any]) -> tuple[bool, float]:
    """Whether two encoded per-image results differ beyond noise by McNemar's exact test, and its p."""
    p = mcnemar_exact(*discordant(decode_correct(ref), decode_correct(other)))
    return p < ALPHA, p


def judge(ref: dict[str, Any], other: dict[str, Any], n: int = 10_000) -> tuple[bool, float | None]:
    """Whether two scored models (records with ``top1`` and, in newer result files, ``per_image``)
    differ beyond noise: McNemar's exact test when both stored their per-image correctness (and its
    p), else the unpaired two-standard-error rule on ``n`` test images (and None)."""
    if ref.get("per_image") and other.get("per_image"):
        return paired_verdict(ref["per_image"], other["per_image"])
    return beyond_noise(ref["top1"], other["top1"], n), None
