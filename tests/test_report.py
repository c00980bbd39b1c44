"""polarprune.report: CPU latency (the source of every latency figure), stage rows and reductions."""

from __future__ import annotations

import torch
from torch import nn

from latency_fakes import fixed_rounds
from polarprune.report import add_reductions, cpu_latency_ms, format_markdown, format_table, latency_text, stage_row


def conv_stack(width: int) -> nn.Module:
    """Three 3x3 convs of ``width`` channels at 32x32: MACs grow with width squared."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


FORWARDS: list[tuple[tuple[int, ...], bool, bool]] = []


class ShapeRecorder(nn.Module):
    """Records the input shape, grad mode and training flag of every forward (in ``FORWARDS``,
    so that a copy of the model records there too)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARDS.append((tuple(x.shape), torch.is_grad_enabled(), self.training))
        return self.linear(x.flatten(1)[:, :6])


def test_cpu_latency_follows_the_cost_ordering() -> None:
    small, large = conv_stack(4), conv_stack(64)  # 16x the channels: ~256x the MACs of the inner convs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # interleaved, so that a load change on the shared machine hits both alike
        small_ms, large_ms = [], []
        for _ in range(3):
            small_ms.append(cpu_latency_ms(small, (3, 32, 32), repeats=5, warmup=1).median_ms)
            large_ms.append(cpu_latency_ms(large, (3, 32, 32), repeats=5, warmup=1).median_ms)
    finally:
        torch.set_num_threads(threads)
    assert min(small_ms) > 0
    assert sorted(large_ms)[1] > sorted(small_ms)[1]  # medians of the three rounds


def test_cpu_latency_runs_eval_mode_forwards_of_the_given_shape_without_grad() -> None:
    FORWARDS.clear()
    cpu_latency_ms(ShapeRecorder().train(), (1, 2, 3), batch=4, repeats=3, warmup=2)
    assert len(FORWARDS) >= 5  # at least 2 warm-up + 3 timed forwards
    assert set(FORWARDS) == {((4, 1, 2, 3), False, False)}  # batch x shape, no autograd, eval mode


def test_stage_row_and_reductions_by_hand() -> None:
    # Linear(8, 4): 32 MACs, 36 params; Linear(8, 2): 16 MACs, 18 params
    rows = [stage_row("big", nn.Linear(8, 4), 90.0, (8,)), stage_row("small", nn.Linear(8, 2), 88.5, (8,))]
    assert (rows[0]["macs"], rows[0]["params"], rows[1]["macs"], rows[1]["params"]) == (32, 36, 16, 18)
    assert rows[0]["latency_ms"] > 0
    headline = add_reductions(rows)
    assert rows[1]["macs_reduction"] == 0.5 and rows[1]["params_reduction"] == 0.5
    assert rows[1]["top1_change"] == -1.5 and rows[0]["macs_reduction"] == 0.0
    assert rows[1]["latency_speedup"] == round(rows[0]["latency_ms"] / rows[1]["latency_ms"], 4)
    assert headline["reference_stage"] == "big" and headline["final_stage"] == "small"
    assert headline["macs_reduction"] == 0.5 and headline["top1_change"] == -1.5
    text = format_markdown({"recipe": "r", "stages": rows, "reductions": headline})
    assert "| small | 88.50 | 16 |" in text and "removes 50.0% of the MACs" in text


def test_add_reductions_of_nothing_is_empty() -> None:
    assert add_reductions([]) == {}


def test_stage_row_without_accuracy() -> None:
    row = stage_row("prune", nn.Linear(2, 2), None, (2,))
    assert row["top1"] is None and add_reductions([row, dict(row)])["top1_change"] is None


def warnings_of_stage_row(name: str, model: nn.Module, shape: tuple[int, ...]) -> tuple[dict, list[str]]:
    """``stage_row``'s row and the warnings it logged (caught on its own logger: the CLI's set-up stops
    ``polarprune`` records from reaching pytest's root handler)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("polarprune.report")
    logger.addHandler(handler)
    try:
        row = stage_row(name, model, None, shape)
    finally:
        logger.removeHandler(handler)
    return row, [r.getMessage() for r in records]


def summary_of(row: dict) -> dict:
    return {"recipe": "r", "stages": [row], "reductions": add_reductions([row])}


def test_a_wide_spread_is_flagged_in_the_row_table_and_log(monkeypatch) -> None:
    fixed_rounds(monkeypatch, [0.001, 0.003])  # rounds alternate 1 ms and 3 ms
    row, warnings = warnings_of_stage_row("pruned", nn.Linear(8, 2), (8,))
    assert row["latency_ms"] == 2.0 and row["latency_spread"] == 1.0 and row["latency_threads"] == 1
    assert "2.000 ms (noisy: spread 100%)" in format_table(summary_of(row))
    assert "2.000 ms (noisy: spread 100%)" in format_markdown(summary_of(row))
    assert len(warnings) == 1 and "pruned" in warnings[0] and "eager" in warnings[0]


def test_a_tight_spread_is_a_plain_figure(monkeypatch) -> None:
    fixed_rounds(monkeypatch, [0.001])
    row, warnings = warnings_of_stage_row("pruned", nn.Linear(8, 2), (8,))
    assert row["latency_ms"] == 1.0 and row["latency_spread"] == 0.0
    table = format_table(summary_of(row))
    assert "1.000 ms" in table and "noisy" not in table and "latency, 1 thread" in table.splitlines()[0]
    assert warnings == []


def test_latency_text_and_old_rows_without_a_spread() -> None:
    assert latency_text(0.29, 0.35) == "0.290 ms (noisy: spread 35%)"
    assert latency_text(0.29, 0.2) == "0.290 ms" and latency_text(0.29, None) == "0.290 ms"
    old = {"name": "a", "top1": None, "macs": 1, "flops": 2, "params": 1, "latency_ms": 0.5}
    table = format_table(summary_of(old))  # a summary.json written before the spread was stated
    assert "0.500 ms" in table and table.splitlines()[0].endswith("latency")


def test_stage_rows_in_eager_and_onnxruntime(monkeypatch) -> None:
    """The summary's columns: one per runtime (the demo's table: eager and onnxruntime), each timed with
    the fixed rounds; the reductions say per runtime whether the last stage is faster, warnings follow."""
    import pytest

    from polarprune.report import summary_runtimes

    pytest.importorskip("onnxruntime")
    assert summary_runtimes() == ["eager", "onnxruntime"]
    fixed_rounds(monkeypatch, [0.002])
    big = stage_row("big", nn.Linear(8, 4), 90.0, (8,), ("eager", "onnxruntime"))
    fixed_rounds(monkeypatch, [0.001])
    small = stage_row("small", nn.Linear(8, 2), 88.5, (8,), ("eager", "onnxruntime"))
    assert big["latency_by_runtime"] == {"eager": {"ms": 2.0, "spread": 0.0}, "onnxruntime": {"ms": 2.0, "spread": 0.0}}
    assert small["latency_ms"] == 1.0 and small["latency_by_runtime"]["onnxruntime"]["ms"] == 1.0
    small["latency_by_runtime"]["onnxruntime"]["ms"] = 2.5  # slower than big in onnxruntime
    rows = [big, small]
    headline = add_reductions(rows)
    assert headline["latency_speedup_by_runtime"] == {"eager": 2.0, "onnxruntime": 0.8}
    summary = {"recipe": "r", "stages": rows, "reductions": headline, "warnings": ["prune: warning: slower in eager"]}
    table = format_table(summary).splitlines()
    assert table[0].split("params -")[1].split() == ["eager", "latency,", "1", "thread", "onnxruntime", "latency"]
    assert table[3].split()[-4:] == ["1.000", "ms", "2.500", "ms"] and table[-1] == "prune: warning: slower in eager"
    text = format_markdown(summary)
    assert "| eager latency, batch 1, 1 thread | onnxruntime latency, batch 1, 1 thread |" in text
    assert "| 1.000 ms | 2.500 ms |" in text
    assert "CPU latency x2.00 faster in eager, not faster in onnxruntime (x0.80)." in text
    assert text.rstrip().endswith("prune: warning: slower in eager")
