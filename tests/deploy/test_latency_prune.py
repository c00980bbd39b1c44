"""``deploy.latency_cost``: the runtime records' checks, ``prune_to_latency``'s end-to-end check and
refinement, and ``polarprune prune --strategy latency-target``. The per-layer timing and the
end-to-end comparison are fakes with exactly known costs; one slow test times real eager runs and
compares prediction and measurement within a factor of 2. No timing assertions elsewhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from polarprune import serialization
from polarprune.cli import main
import polarprune.deploy.latency_cost as lc
from polarprune.deploy.latency import forward_runner, median_forward_ms
from polarprune.deploy.runtimes import RUNTIME_RECORDS
from polarprune.errors import PolarpruneError
from polarprune.models import create
from polarprune.pruning import prune_model
from polarprune.pruning.graph import analysed_copy

from latency_fakes import X, fake_cost, fake_ms, tiny


def fake_compare(unpruned: nn.Module, pruned: nn.Module) -> float:
    """The fake runtime end to end: the ratio of the summed layer costs."""
    return fake_cost(pruned) / fake_cost(unpruned)


def scripted(*ratios: float):
    """A comparison answering the given measured ratios in turn."""
    answers = iter(ratios)
    return lambda unpruned, pruned: next(answers)


def test_prune_to_latency_reports_predicted_and_measured(tmp_path):
    result = lc.prune_to_latency(tiny(), X, target_latency_reduction=0.5, cache_dir=tmp_path, measure=fake_ms, step=1,
                                 compare=fake_compare)
    assert result.predicted_ratio == pytest.approx(0.5) and result.measured_ratio == pytest.approx(0.5)
    assert not result.refined and result.aimed == 0.5
    assert (result.pruned[0].out_channels, result.pruned[3].out_channels) == (2, 3)
    assert result.as_dict()["measured_latency_ratio"] == pytest.approx(0.5)
    assert any("latency cut: predicted 50.0%, measured 50.0%" in note for note in result.report.notes)


def test_prune_to_latency_with_the_threshold_search(tmp_path):
    """latency-threshold through prune_to_latency: one global threshold (13 of 28, tests/pruning), measured
    end to end by the fake runtime within the tolerance, so no re-aim."""
    result = lc.prune_to_latency(tiny(), X, strategy="latency-threshold", target_latency_reduction=0.5, cache_dir=tmp_path,
                                 measure=fake_ms, step=1, compare=fake_compare)
    assert result.predicted_ratio == pytest.approx(13 / 28) and result.measured_ratio == pytest.approx(13 / 28)
    assert not result.refined and (result.pruned[0].out_channels, result.pruned[3].out_channels) == (3, 2)


def test_prune_to_latency_reaims_once_with_the_measured_ratio(tmp_path):
    result = lc.prune_to_latency(tiny(), X, target_latency_reduction=0.5, cache_dir=tmp_path, measure=fake_ms, step=1,
                                 compare=scripted(0.7, 0.52))
    assert result.refined and result.measured_ratio == 0.52
    assert result.aimed == pytest.approx(lc.reaimed(0.5, 0.5, 0.7)) == pytest.approx(1 - 0.5 * 0.5 / 0.7)


def test_prune_to_latency_fails_in_one_line_after_its_last_refinement(tmp_path):
    with pytest.raises(PolarpruneError, match=r"^latency-target: the measured latency cut 30.0% \(the closest of 3 tries\) "
                                              r"misses the target 50.0% by more than 0.05, after 2 refinements \("):
        lc.prune_to_latency(tiny(), X, target_latency_reduction=0.5, cache_dir=tmp_path, measure=fake_ms, step=1,
                            compare=scripted(0.9, 0.7, 0.8), refinements=2)


def test_prune_to_latency_refines_until_the_measured_cut_is_within_tolerance(tmp_path):
    """A runtime whose fixed overhead the tables miss (measured = 0.3 + 0.7 x predicted): the first pruning cuts
    35% instead of 50%; the re-aims converge on a pruning whose measured cut is within 0.05 of 50%."""
    def overhead(unpruned: nn.Module, pruned: nn.Module) -> float:
        return 0.3 + 0.7 * fake_compare(unpruned, pruned)

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.copy_(torch.linspace(0.01, 1.0, 16))
    result = lc.prune_to_latency(model, X, target_latency_reduction=0.5, cache_dir=tmp_path, measure=fake_ms, step=1,
                                 compare=overhead)
    assert result.refined and abs((1 - result.measured_ratio) - 0.5) <= lc.TOLERANCE
    assert result.measured_ratio == pytest.approx(0.3 + 0.7 * result.predicted_ratio)
    assert result.aimed > 0.6  # the tables had to be aimed well beyond the target
    assert result.as_dict()["refinements"] == result.refinements >= 1


def test_next_aim_reaims_then_interpolates_between_bracketing_tries():
    Try = lc.Try
    # not bracketed: the closest try re-aimed by its measured/predicted ratio, 1 - 0.5 x 0.3125 / 0.6
    tries = [Try(0.5, 0.5, 0.8), Try(0.6875, 0.3125, 0.6)]
    assert lc.next_aim(0.5, tries) == pytest.approx(1 - 0.5 * 0.3125 / 0.6)
    # bracketed (cuts 0.2 at aim 0.5 and 0.6 at aim 0.7): the secant gives 0.5 + 0.3 x 0.2 / 0.4
    assert lc.next_aim(0.5, [Try(0.5, 0.5, 0.8), Try(0.7, 0.3, 0.4)]) == pytest.approx(0.65)
    # the closest bracketing pair is used, not the first tries
    tries = [Try(0.5, 0.5, 0.8), Try(0.9, 0.1, 0.2), Try(0.6, 0.4, 0.6), Try(0.8, 0.2, 0.45)]
    assert lc.next_aim(0.5, tries) == pytest.approx(0.6 + 0.1 * 0.2 / 0.15)


def test_next_aim_never_goes_back_to_an_aim_that_missed_on_the_same_side():
    Try = lc.Try
    # both cuts too small; re-aiming the closest (aim 0.5) gives 0.545, below the aim 0.6 that already cut too little
    tries = [Try(0.6, 0.4, 0.62), Try(0.5, 0.5, 0.55)]
    assert lc.reaimed(0.5, 0.5, 0.55) == pytest.approx(1 - 0.25 / 0.55)
    assert lc.next_aim(0.5, tries) == pytest.approx(0.6 + lc.MIN_AIM_STEP)
    # both cuts too large: below the smallest aim tried
    assert lc.next_aim(0.5, [Try(0.3, 0.7, 0.3), Try(0.4, 0.6, 0.45)]) == pytest.approx(0.3 - lc.MIN_AIM_STEP)
    assert lc.next_aim(0.9, [Try(0.99, 0.01, 0.5)]) == 0.99  # clamped


def test_the_strategy_record_picks_the_cost_model(tmp_path):
    """A recipe's prune stage and the command call ``prune_with_cost_model``: latency-target gets the
    latency path (here with the fake runtime), other strategies ``prune_model``."""
    from polarprune.workflows.recipe import load_recipe
    from polarprune.workflows.stages import prune_kwargs

    stage = load_recipe("demo-polarization", ["stages.prune.strategy=latency-target",
                                              "stages.prune.target_latency_reduction=0.5", "stages.prune.batch=8"]).stages.prune
    pruned, report, latency = lc.prune_with_cost_model(tiny(), X, measure=fake_ms, compare=fake_compare, cache_dir=tmp_path,
                                                       **prune_kwargs(stage))
    assert latency is not None and latency.measured_ratio == pytest.approx(0.5) and report.options["batch"] == 8
    assert (pruned[0].out_channels, pruned[3].out_channels) == (2, 3)  # the hand-worked choice (grid 1..4)
    pruned, report, latency = lc.prune_with_cost_model(tiny(), X, strategy="uniform", ratio=0.5)
    assert latency is None and (pruned[0].out_channels, pruned[3].out_channels) == (2, 2)


def test_reaimed_is_clamped():
    assert lc.reaimed(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert lc.reaimed(0.9, 0.1, 5.0) == 0.99 and lc.reaimed(0.1, 2.0, 0.5) == 0.01


def test_unknown_runtime_and_missing_extra_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(PolarpruneError, match="unknown runtime 'tpu'; choose one of eager, "):
        lc.prune_to_latency(tiny(), X, target_latency_reduction=0.5, runtime="tpu", cache_dir=tmp_path, measure=fake_ms)
    missing = dataclasses.replace(RUNTIME_RECORDS["onnxruntime"], package="polarprune_no_such_package")
    monkeypatch.setitem(RUNTIME_RECORDS, "onnxruntime", missing)
    assert not RUNTIME_RECORDS["onnxruntime"].available and RUNTIME_RECORDS["eager"].available
    with pytest.raises(PolarpruneError, match=r"^the onnxruntime runtime needs the deploy extra: pip install 'polarprune\[deploy\]' \(missing module polarprune_no_such_package\)$"):
        lc.prune_to_latency(tiny(), X, target_latency_reduction=0.5, runtime="onnxruntime", cache_dir=tmp_path,
                            measure=fake_ms)
    with pytest.raises(PolarpruneError, match=r"needs the deploy extra: .*\(missing module polarprune_no_such_package\)$"):
        forward_runner(tiny(), "onnxruntime", (1, 4, 4), 1)


def test_cache_key_names_machine_runtime_versions_threads_batch():
    key = lc.cache_key("eager", 8, 2)
    assert key["runtime"] == "eager" and key["batch"] == 8 and key["threads"] == 2
    assert key["cpu"] and key["versions"]["torch"] == torch.__version__
    assert lc.cache_folder("~/x") == Path.home() / "x"


@pytest.fixture()
def small_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.0, 1.0)
    return serialization.save(model, tmp_path / "small.safetensors")


@pytest.mark.parametrize("strategy", ["latency-target", "latency-threshold"])
def test_prune_command_latency_target(small_file, tmp_path, monkeypatch, capsys, strategy):
    """The command builds the cost model (fake runtime here) and reports predicted vs measured."""
    monkeypatch.setattr(lc, "runtime_measure", lambda *args, **kwargs: fake_ms)  # the grid's steps of 8 stay
    monkeypatch.setattr(lc, "runtime_compare", lambda *args, **kwargs: fake_compare)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out, report = tmp_path / "p.safetensors", tmp_path / "r.json"
    code = main(["prune", str(small_file), "--strategy", strategy, "--target-latency-reduction", "0.4",
                 "--runtime", "eager", "--batch", "4", "--threads", "1", "--out", str(out), "--report", str(report)])
    assert code == 0 and out.exists()
    data = json.loads(report.read_text())
    assert data["measured_latency_ratio"] == pytest.approx(data["predicted_latency_ratio"])
    assert abs(data["predicted_latency_ratio"] - 0.6) <= lc.TOLERANCE and data["target_latency_reduction"] == 0.4
    if strategy == "latency-target":  # the greedy lands at or below the goal; the threshold search on the closest side
        assert data["predicted_latency_ratio"] <= 0.6
    assert "latency cut: predicted" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "polarprune" / "latency").glob("*.json"))


@pytest.mark.parametrize("argv, message", [
    (["--target-latency-reduction", "1.2"], "--target-latency-reduction: "),
    (["--target-latency-reduction", "0"], "--target-latency-reduction: "),
    ([], "--strategy latency-target needs --target-latency-reduction"),
])
def test_prune_command_latency_target_bad_input(small_file, tmp_path, capsys, argv, message):
    out = tmp_path / "p.safetensors"
    assert main(["prune", str(small_file), "--strategy", "latency-target", *argv, "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 1 and message in errors[0] and not out.exists()


def test_prune_command_unknown_runtime_is_refused(small_file, tmp_path, capsys):
    code = main(["prune", str(small_file), "--strategy", "latency-target", "--target-latency-reduction", "0.5",
                 "--runtime", "tpu", "--out", str(tmp_path / "p.safetensors")])
    assert code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_real_eager_prediction_is_within_a_factor_of_two(tmp_path):
    """Real eager timings (batch 16, 1 thread): the prediction for a pruned CNN lands within a factor of
    2 of its measured latency (a tolerant bound: the machine may be loaded)."""
    torch.manual_seed(0)
    model = create("small_cnn", num_classes=10, in_channels=3, width=32).eval()
    x = torch.randn(1, 3, 32, 32)
    cost = lc.latency_cost_model(model, x, "eager", batch=16, threads=1, cache_dir=tmp_path)
    pruned, _ = prune_model(model, x, "uniform", ratio=0.5)
    predicted = cost.cost(analysed_copy(pruned, x), {}, ())
    with lc.pinned_threads(1), lc.steady_malloc_here():  # as the tables were timed
        measured = median_forward_ms([forward_runner(pruned, "eager", (3, 32, 32), 16, threads=1)], rounds=7)[0]
    assert 0.5 <= predicted / measured <= 2.0, (predicted, measured)


def test_the_latency_commands_torch_free_runtime_list_matches_the_records():
    from polarprune.commands import latency as latency_command
    from polarprune.commands import prune as prune_command

    assert tuple(latency_command.RUNTIMES) == tuple(RUNTIME_RECORDS) == tuple(prune_command.RUNTIME_CHOICES)


@pytest.mark.parametrize("runtime_name", list(RUNTIME_RECORDS))
def test_the_tables_probe_runners_compute_the_layer(runtime_name):
    """The runner the tables time (``probe=True``: onnxruntime's quicker export) computes the probe's output."""
    from polarprune.deploy.runtimes import build_runner
    from polarprune.pruning.latency_cost import layer_probes, probe_module

    if RUNTIME_RECORDS[runtime_name].package:
        pytest.importorskip(RUNTIME_RECORDS[runtime_name].package)
    probes = layer_probes(tiny(), X)
    for name in ("3", "8"):  # a conv (with BN and ReLU) and the linear layer
        module, shape = probe_module(probes[name], 3, 2)
        out = build_runner(module, runtime_name, shape, 2, threads=1, seed=5, probe=True)()
        expected = module(torch.randn(2, *shape, generator=torch.Generator().manual_seed(5)))
        tolerance = 5e-2 if runtime_name == "eager-bf16" else 1e-4
        assert torch.allclose(out.float(), expected, atol=tolerance), (runtime_name, name)


def test_steady_malloc_here_applies_on_glibc_and_defers_to_the_environment(monkeypatch):
    import platform

    from polarprune.deploy.latency import STEADY_MALLOC_ENV, steady_malloc, steady_malloc_here

    for name in STEADY_MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    with steady_malloc_here() as applied:
        assert applied == (platform.libc_ver()[0] == "glibc")
    for name, value in STEADY_MALLOC_ENV.items():
        monkeypatch.setenv(name, value)
    assert steady_malloc()
    with steady_malloc_here() as applied:
        assert not applied  # the process's own settings stay


def test_memory_chunks_group_consecutive_probes_within_the_budget():
    assert lc.memory_chunks([3, 3, 3, 5, 1], 6) == [[0, 1], [2], [3, 4]]
    assert lc.memory_chunks([10, 1], 6) == [[0], [1]]  # larger than the budget: alone
    assert lc.memory_chunks([], 6) == []
    # ResNet-50's expanding 1x1 conv at batch 64: 64 -> 256 channels at 56 px, input and output counted
    assert lc.probe_bytes((64, 56, 56), (256, 56, 56), 64) == 4 * 64 * (64 + 256) * 56 * 56 * lc.PROBE_MEMORY_FACTOR
    conv = nn.Sequential(nn.Conv2d(64, 256, 1), nn.BatchNorm2d(256), nn.ReLU())
    assert lc.output_shape(conv, (64, 56, 56)) == (256, 56, 56)
    assert conv.training and int(conv[1].num_batches_tracked) == 0  # its mode restored, no statistics updated
    assert lc.output_shape(nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)), (4, 1, 1)) == (8, 1, 1)  # 1 value
    assert lc.output_shape(nn.Conv2d(8, 16, 3, stride=2, padding=1), (8, 9, 9)) == (16, 5, 5)


def test_runtime_measure_keeps_one_chunk_of_runners_alive(monkeypatch, tmp_path):
    """Five probes whose inputs fill the budget two at a time: at most two runners exist at once (ResNet-50's
    probes at batch 64, all built together, were killed for memory), and every probe gets its time."""
    import gc
    import weakref

    alive: set[int] = set()
    most = [0]

    class Runner:
        def __call__(self) -> None:
            return None

    def build(module, name, shape, batch, **kwargs):
        gc.collect()
        runner = Runner()
        alive.add(id(runner))
        weakref.finalize(runner, alive.discard, id(runner))
        most[0] = max(most[0], len(alive))
        return runner

    monkeypatch.setattr(lc, "build_runner", build)
    monkeypatch.setattr(lc, "PROBE_MEMORY_BUDGET", 2 * lc.probe_bytes((4, 8, 8), (4, 8, 8), 2))
    measure = lc.runtime_measure("eager", batch=2, threads=1, workdir=tmp_path, rounds=1)
    times = measure([(nn.Identity(), (4, 8, 8))] * 5)
    assert len(times) == 5 and all(t >= 0 for t in times)
    assert most[0] == 2
