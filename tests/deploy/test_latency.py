"""Latency measurement: interleaved rounds, medians and paired ratios, the four runtimes
(each runner computes the model's output), width rounding, the steady allocator child
process and the ``polarprune latency`` command. No timing assertions."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from polarprune.deploy.latency import (
    RUNTIMES,
    STEADY_MALLOC_ENV,
    LatencyFigure,
    is_noisy,
    latency_figure,
    relative_spread,
    forward_runner,
    interleaved,
    measure_latency,
    run_with_steady_malloc,
)
from polarprune.deploy.widths import round_widths, rounded_count
from polarprune.errors import PolarpruneError
from polarprune.flops import count_model
from polarprune.models import create
from polarprune.report import cpu_latency_ms
from test_export import needs_onnx


# the onnxruntime runner exports the model first: it needs the deploy extra, the eager runtimes do not
RUNTIME_PARAMS = [pytest.param(r, marks=needs_onnx) if r == "onnxruntime" else r for r in RUNTIMES]


def small(width: int = 20) -> nn.Module:
    return create("small_cnn", 10, in_channels=1, width=width).eval()


def test_interleaved_calls_round_robin_after_warmup():
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_measure_latency_medians_and_paired_ratios():
    models = {"wide": small(20), "narrow": small(8)}
    threads = torch.get_num_threads()
    result = measure_latency(models, (1, 8, 8), batches=(1, 3), rounds=3, threads=1, min_round_seconds=0.0)
    assert result.threads == 1 and torch.get_num_threads() == threads  # the caller's setting is restored
    assert result.models == ["wide", "narrow"] and [b.batch for b in result.batches] == [1, 3]
    for entry in result.batches:
        assert entry.calls_per_round == 1
        for name in models:
            assert len(entry.ms[name]) == 3 and all(v > 0 for v in entry.ms[name])
            assert entry.median_ms[name] == statistics.median(entry.ms[name])
            assert entry.round_ratios[name] == pytest.approx([a / b for a, b in zip(entry.ms[name], entry.ms["wide"])])
            assert entry.ratio_to_first[name] == statistics.median(entry.round_ratios[name])
        assert entry.ratio_to_first["wide"] == 1.0
    assert json.loads(json.dumps(result.as_dict()))["batches"][0]["batch"] == 1


# what each eager runtime feeds every convolution: (input dtype, input channels_last, weight dtype,
# weight channels_last); onnxruntime runs no torch module at all
EAGER_LAYOUT = {
    "eager": (torch.float32, False, torch.float32, False),
    "eager-channels-last": (torch.float32, True, torch.float32, True),
    "eager-bf16": (torch.bfloat16, True, torch.bfloat16, True),
}


def channels_last(t: torch.Tensor) -> bool:
    """Strictly channels_last: NHWC strides (a tensor with C == 1 or H == W == 1 is both, so not asked)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_every_runtime_computes_the_models_output(runtime, monkeypatch):
    model = small()
    seen: list[tuple[torch.dtype, bool, torch.dtype, bool]] = []

    def record(conv: nn.Conv2d, args: tuple[torch.Tensor, ...]) -> None:
        if conv.in_channels > 1:  # the 1-channel input is channels_last and contiguous at once
            seen.append((args[0].dtype, channels_last(args[0]), conv.weight.dtype, channels_last(conv.weight)))

    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_pre_hook(record)  # the runner's copy of the model keeps the hooks
    sessions: list[int] = []
    if runtime == "onnxruntime":
        import onnxruntime

        real_run = onnxruntime.InferenceSession.run
        monkeypatch.setattr(onnxruntime.InferenceSession, "run",
                            lambda self, *a, **k: sessions.append(1) or real_run(self, *a, **k))
    run = forward_runner(model, runtime, (1, 8, 8), 4, threads=1, seed=3)
    seen.clear()
    sessions.clear()  # only the timed call counts, not the export's own check
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    reference_calls = len(seen)
    seen.clear()
    got = run()
    assert got.shape == expected.shape
    if runtime == "onnxruntime":
        assert seen == [] and sessions == [1]  # onnxruntime computed it, not torch
        assert got.dtype == torch.float32
    else:
        assert len(seen) == reference_calls == 3 and set(seen) == {EAGER_LAYOUT[runtime]}
        assert got.dtype == EAGER_LAYOUT[runtime][0]
    assert float((got.float() - expected).abs().max()) <= (0.1 if runtime == "eager-bf16" else 1e-4)
    assert next(model.parameters()).dtype == torch.float32 and not channels_last(model.features[3].weight)  # a copy ran


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(PolarpruneError, match="unknown runtime 'tpu'"):
        measure_latency({"m": small()}, (1, 8, 8), runtime="tpu")
    with pytest.raises(PolarpruneError, match="rounds must be >= 1"):
        measure_latency({"m": small()}, (1, 8, 8), rounds=0)
    with pytest.raises(PolarpruneError, match="at least one model"):
        measure_latency({}, (1, 8, 8))


def test_rounded_count():
    assert [rounded_count(w, 16) for w in (20, 40, 16, 5, 33)] == [16, 32, 16, 5, 32]
    assert [rounded_count(w, 8) for w in (20, 40, 7)] == [16, 40, 7]


def test_round_widths_cuts_every_group_to_a_multiple():
    model = small(20)
    rounded = round_widths(model, 16, torch.randn(1, 1, 8, 8))
    convs = [m.out_channels for m in rounded.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 32, 32]
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [20, 20, 40, 40]  # original kept
    assert count_model(rounded, (1, 8, 8)).macs < count_model(model, (1, 8, 8)).macs
    same = round_widths(model, 1, torch.randn(1, 1, 8, 8))
    assert same is not model and count_model(same, (1, 8, 8)).macs == count_model(model, (1, 8, 8)).macs


def test_child_process_gets_the_steady_allocator():
    check = "import os, sys; sys.exit(0 if all(os.environ.get(k) == v for k, v in %r.items()) else 3)" % STEADY_MALLOC_ENV
    assert run_with_steady_malloc(["-c", check]) == 0


def test_report_latency_uses_a_copy():
    model = small().train()
    assert cpu_latency_ms(model, (1, 8, 8), repeats=3, warmup=1).median_ms > 0
    assert model.training  # the caller's model is not switched to eval


def test_latency_command(tmp_path):
    out = tmp_path / "lat.json"
    proc = subprocess.run([sys.executable, "-m", "polarprune", "latency", "small_cnn", "small_cnn", "--num-classes", "10",
                           "--batch", "1,2", "--rounds", "2", "--round-to", "1,8", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["steady_malloc"] is True  # measured in the child process
    assert result["models"] == ["small_cnn @1", "small_cnn @8", "small_cnn #2 @1", "small_cnn #2 @8"]
    # small_cnn is built for its family's input, 1x8x8 (the digits), and timed on it
    assert result["input_shape"] == [1, 8, 8] and [b["batch"] for b in result["batches"]] == [1, 2]
    assert result["macs"]["small_cnn @8"] == result["macs"]["small_cnn @1"]  # width 32/64 is already a multiple of 8
    assert "small_cnn #2 @8" in proc.stdout and "latency cut" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "polarprune", "latency", "small_cnn", "--rounds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["polarprune: error: --rounds must be >= 1, got 0"]


def latency_argv(tmp_path, *extra: str) -> list[str]:
    return ["latency", "small_cnn", "--num-classes", "10", "--batch", "1", "--rounds", "1", "--warmup", "0",
            "--threads", "1", "--json", str(tmp_path / "lat.json"), *extra]


@pytest.fixture()
def default_allocator(monkeypatch):
    """This process as a user's shell starts it: without the steady allocator settings."""
    for key in STEADY_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_latency_command_runs_the_named_runtime(runtime, tmp_path, monkeypatch, capsys, default_allocator):
    import polarprune.deploy.latency as latency

    asked: list[str] = []
    real = latency.forward_runner
    monkeypatch.setattr(latency, "forward_runner", lambda model, rt, *a, **k: asked.append(rt) or real(model, rt, *a, **k))
    from polarprune.cli import main

    assert main(latency_argv(tmp_path, "--runtime", runtime, "--default-malloc")) == 0
    assert asked == [runtime]  # one model, one batch: one runner, of the named runtime
    result = json.loads((tmp_path / "lat.json").read_text())
    assert result["runtime"] == runtime and result["steady_malloc"] is False
    assert f"--runtime {runtime} " in result["command"]
    shape = "x".join(map(str, result["input_shape"]))
    assert capsys.readouterr().out.startswith(f"runtime {runtime}, input {shape}, threads 1, 1 interleaved rounds, allocator glibc default")


def test_latency_command_default_malloc_measures_in_this_process(tmp_path, monkeypatch, capsys, default_allocator):
    """Without ``--default-malloc`` the command hands itself to a child process with the steady
    allocator (and measures nothing here); with it, it measures here; a steady parent measures itself."""
    import polarprune.deploy.latency as latency
    from polarprune.cli import main

    children: list[list[str]] = []
    monkeypatch.setattr(latency, "run_with_steady_malloc", lambda argv: children.append(list(argv)) or 7)
    measured: list[str] = []
    real = latency.measure_latency
    monkeypatch.setattr(latency, "measure_latency", lambda models, *a, **k: measured.append("here") or real(models, *a, **k))
    assert main(latency_argv(tmp_path, "--runtime", "eager-bf16")) == 7  # the child's exit status
    assert measured == [] and len(children) == 1
    child = children[0]
    assert child[:4] == ["-m", "polarprune", "latency", "small_cnn"] and "--default-malloc" in child
    assert child[child.index("--runtime") + 1] == "eager-bf16" and child[child.index("--json") + 1] == str(tmp_path / "lat.json")
    assert main(latency_argv(tmp_path, "--default-malloc")) == 0
    assert len(children) == 1 and measured == ["here"]
    assert json.loads((tmp_path / "lat.json").read_text())["steady_malloc"] is False
    for key, value in STEADY_MALLOC_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(latency_argv(tmp_path)) == 0
    assert len(children) == 1 and measured == ["here", "here"]
    assert json.loads((tmp_path / "lat.json").read_text())["steady_malloc"] is True
    assert "allocator steady" in capsys.readouterr().out


def test_latency_command_unknown_runtime_is_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "polarprune", "latency", "small_cnn", "--runtime", "tpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("polarprune")
    assert "argument --runtime: invalid choice: 'tpu'" in errors[0] and all(f"'{r}'" in errors[0] for r in RUNTIMES)


def test_relative_spread_is_the_interquartile_range_over_the_median():
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)  # q1 2, q3 4, median 3
    assert relative_spread([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx(2.0 / 3.0)  # order does not matter
    assert relative_spread([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert relative_spread([7.0]) == 0.0 and relative_spread([0.0, 0.0]) == 0.0


def test_is_noisy_above_the_limit_only():
    def figure(spread: float) -> LatencyFigure:
        return LatencyFigure(median_ms=1.0, spread=spread, rounds=9, threads=1, runtime="eager", allocator="steady")

    assert is_noisy(figure(0.35)) and is_noisy(figure(0.21))
    assert not is_noisy(figure(0.2)) and not is_noisy(figure(0.0))
    assert is_noisy(figure(0.15), limit=0.1) and not is_noisy(figure(0.35), limit=0.5)


def test_latency_figure_pins_threads_during_the_forwards_and_restores_them():
    seen: list[int] = []
    model = small()
    model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    outer = 2 if before == 1 else 1  # a setting different from the measurement's own
    torch.set_num_threads(outer)
    try:
        figure = latency_figure(model, (1, 8, 8), rounds=3, warmup=1)
        assert torch.get_num_threads() == outer  # put back afterwards
        at_one, seen[:] = list(seen), []
        wide = latency_figure(model, (1, 8, 8), rounds=3, warmup=1, threads=3)
        assert torch.get_num_threads() == outer
    finally:
        torch.set_num_threads(before)
    assert figure.threads == 1 and len(at_one) >= 3 + 1 and set(at_one) == {1}  # the default: 1 thread, stated
    assert wide.threads == 3 and set(seen) == {3}
    assert figure.rounds == 3 and figure.runtime == "eager" and figure.allocator in ("steady", "default")


MALLOC_WORKLOAD = """
import platform, resource, torch
from torch import nn
from polarprune.deploy.latency import steady_malloc_here
torch.set_num_threads(1)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1))
x = torch.randn(8, 3, 64, 64)  # activations of 1-8 MiB: above glibc's 128 KiB start threshold, below 32 MiB
def faults(steps=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        model.zero_grad(); model(x).mean().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(3)
first = faults()
with steady_malloc_here() as applied:
    pass
print(applied, first, faults())
"""


def test_training_after_steady_malloc_here_page_faults_no_more_than_before():
    """glibc's dynamic thresholds cannot be set back: restoring its 128 KiB start values mmapped every activation
    afresh after a latency table (twice the page faults, training 2.4x slower). A fresh process: the same training
    steps page-fault no more after the context than before it (a count, not a timing)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", MALLOC_WORKLOAD], capture_output=True, text=True, check=True, env=env, timeout=120)
    applied, before, after = out.stdout.split()
    assert applied == "True"
    assert int(after) <= 1.2 * int(before), (before, after)


def test_steady_malloc_here_leaves_the_thresholds_glibc_would_reach(monkeypatch):
    """Inside: no trimming, mmap only from 32 MiB; afterwards mmap from 32 MiB and trimming above 64 MiB (the
    values of glibc's own adjustment), never the 128 KiB start values."""
    import polarprune.deploy.latency as latency

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(latency, "_mallopt", lambda param, value: calls.append((param, value)) or True)
    monkeypatch.setattr(latency, "steady_malloc", lambda: False)
    with latency.steady_malloc_here() as applied:
        assert applied and calls == [(latency.M_TRIM_THRESHOLD, 2**31 - 1), (latency.M_MMAP_THRESHOLD, 32 << 20)]
    assert calls[2:] == [(latency.M_MMAP_THRESHOLD, 32 << 20), (latency.M_TRIM_THRESHOLD, 64 << 20)]
