"""bench/: every script answers --help, the helpers of bench/common.py compute what they say,
and cheap smoke runs of two scripts produce well-formed results (written to a temporary folder)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
HELPERS = ("common.py", "tp_baselines.py", "stages.py", "plots.py", "stats.py")  # imported by the scripts, no main()
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in HELPERS)

sys.path.insert(0, str(BENCH))  # the scripts import their helpers as ``from common import ...``
import common  # noqa: E402


def load_script(path: Path) -> ModuleType:
    """Import a bench script as a module (its ``main`` is not run)."""
    name = f"bench_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in a script look their module up while it runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_bench_script_answers_help(path: Path, monkeypatch, capsys) -> None:
    module = load_script(path)
    assert callable(module.main) and (module.__doc__ or "").strip(), path.name
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and module.__doc__.strip().split("\n")[0][:30] in out.replace("\n", " ")


def test_summary_and_paired_ratios() -> None:
    assert common.summary([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4, "all": [3.0, 1.0, 2.0, 10.0]}
    assert common.paired_ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="unpaired rounds: 1 vs 2"):
        common.paired_ratios([1.0], [1.0, 2.0])


def test_interleaved_runs_round_robin_after_warmup() -> None:
    calls: list[str] = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5  # 2 untimed rounds, then 3 timed ones, always a before b
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())
    assert common.timed(lambda: None) >= 0


def test_steady_malloc_reads_the_environment(monkeypatch) -> None:
    for key in common.STEADY_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not common.steady_malloc()
    for key, value in common.STEADY_MALLOC_ENV.items():
        monkeypatch.setenv(key, value)
    assert common.steady_malloc()
    monkeypatch.setenv(next(iter(common.STEADY_MALLOC_ENV)), "1")
    assert not common.steady_malloc()


def test_minor_page_faults_count_fresh_pages() -> None:
    before = common.minor_page_faults()
    block = bytearray(64 * 1024 * 1024)  # 64 MiB of fresh pages, touched by the zero fill
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert common.minor_page_faults() - before >= 1000  # at least a few MiB worth of 4 KiB pages
    del block


def test_provenance_records_command_versions_and_machine(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_x.py"), "--rounds", "2"])
    monkeypatch.setattr(common, "git_revision", lambda: "abc1234")
    assert common.command_line() == "python bench/bench_x.py --rounds 2"
    data = common.data_sizes(2500, 2000, "archive.tar.gz")
    prov = common.provenance(7, libraries=("torch", "no-such-distribution-xyz"), data=data)
    assert prov["seed"] == 7 and prov["command"] == "python bench/bench_x.py --rounds 2" and prov["git"] == "abc1234"
    assert prov["versions"]["no-such-distribution-xyz"] is None and prov["versions"]["torch"]
    assert prov["machine"]["cpu_count"] == os.cpu_count() and prov["machine"]["cpus_usable"] >= 1
    assert len(prov["date_utc"]) == 20 and prov["date_utc"].endswith("Z")
    assert prov["load"]["start"] == common.LOAD_AT_START and len(prov["load"]["end"]) == 3
    assert prov["data"] == {"train_images": 2500, "test_images": 2000, "source": "archive.tar.gz"}
    text = common.provenance_markdown(prov)
    assert "`python bench/bench_x.py --rounds 2`" in text and "seed 7" in text and "torch " in text
    assert "2,500 training, 2,000 test (archive.tar.gz)" in text


def test_provenance_refuses_a_dirty_tree_unless_allowed(monkeypatch) -> None:
    monkeypatch.setattr(common, "git_revision", lambda: "abc1234+dirty")
    with pytest.raises(SystemExit, match="uncommitted changes.*--allow-dirty"):
        common.provenance(0, data=common.RANDOM_INPUTS)
    assert common.provenance(0, data=common.RANDOM_INPUTS, allow_dirty=True)["git"] == "abc1234+dirty"
    parser = argparse.ArgumentParser()
    common.add_provenance_options(parser)
    assert parser.parse_args(["--allow-dirty"]).allow_dirty and not parser.parse_args([]).allow_dirty


def test_a_run_keeps_the_revision_it_started_from(monkeypatch) -> None:
    """A script that writes its result files as it goes dirties its own tree: later provenance records
    keep the clean revision checked at the start instead of stopping the run (a methods re-run died so)."""
    states = iter(["abc1234", "abc1234+dirty", "abc1234+dirty"])
    monkeypatch.setattr(common, "git_revision", lambda: next(states))
    assert common.checked_revision(False) == "abc1234"
    assert common.provenance(0, data=common.RANDOM_INPUTS)["git"] == "abc1234"
    assert common.checked_revision(False) == "abc1234"


def test_data_sizes_count_the_loaders_images() -> None:
    import torch

    from polarprune.data import InMemoryLoader

    def loader(n: int) -> InMemoryLoader:
        return InMemoryLoader(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), batch_size=4,
                              mean=(0.5,) * 3, std=(0.5,) * 3, train=False)

    bundle = types.SimpleNamespace(train_loader=loader(12), eval_loader=loader(5))
    assert common.bundle_sizes(bundle, "x") == {"train_images": 12, "test_images": 5, "source": "x"}
    sizes = common.configured_sizes({"name": "digits", "batch_size": 64})
    assert sizes["source"] == "digits" and sizes["train_images"] > sizes["test_images"] > 100


def test_write_results_writes_both_files_atomically(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "git_revision", lambda: "abc1234")
    result = {"a": 1.5, "provenance": common.provenance(0, data=common.RANDOM_INPUTS)}
    json_path, md_path = common.write_results("x", result, "# title", folder=tmp_path / "out")
    assert json.loads(json_path.read_text()) == result
    assert md_path.read_text() == "# title\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.json", "x.md"]  # no temporary files left


def test_write_results_refuses_a_result_without_its_provenance(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="provenance lacks git, date_utc, machine, load, data"):
        common.write_results("x", {"a": 1.5}, "# title", folder=tmp_path)
    old_style = {"provenance": {"git": "abc", "date_utc": "2026-01-01T00:00:00Z", "machine": {}, "load": {}, "data": None}}
    with pytest.raises(ValueError, match="lacks data"):
        common.write_results("x", old_style, "# title", folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def capture_results(module: ModuleType, monkeypatch) -> dict:
    """Make a script's ``write_results`` record into a dict instead of bench/results."""
    written: dict = {}

    def fake_write(stem, result, markdown, folder=None):
        written.update(stem=stem, result=json.loads(json.dumps(result)), markdown=markdown)
        return Path(f"{stem}.json"), Path(f"{stem}.md")

    monkeypatch.setattr(module, "write_results", fake_write)
    return written


def test_pruning_time_smoke_run(monkeypatch, capsys) -> None:
    module = load_script(BENCH / "bench_pruning_time.py")
    written = capture_results(module, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_pruning_time.py"])
    assert module.main(["--models", "resnet18", "--repeats", "1", "--allow-dirty"]) == 0  # tests run in a working tree
    row = written["result"]["models"][0]
    assert written["result"]["provenance"]["data"] == common.RANDOM_INPUTS
    assert written["stem"] == "pruning_time" and row["model"] == "resnet18", row
    assert row["macs_after"] < row["macs_before"] and 0.6 < row["macs_reduction"] < 0.8  # half the channels
    assert row["seconds_median"] > 0 and "| resnet18 |" in written["markdown"]


@pytest.mark.slow
def test_regularizer_overhead_smoke_run(monkeypatch) -> None:
    module = load_script(BENCH / "bench_regularizer_overhead.py")
    written = capture_results(module, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_regularizer_overhead.py", "--rounds", "1", "--warmup", "0",
                                      "--hook-repeats", "2", "--batch-size", "8", "--allow-dirty"])
    module.main()
    result = written["result"]
    assert set(result["variants"]) == {"none", "l1", "polarization", "mask-l1"}
    assert result["regularized_bns"] == 54  # ResNet-56: 3 stages x 9 blocks x 2 BNs
    for key, row in result["variants"].items():
        assert row["step_seconds"]["n"] == 1 and row["step_seconds"]["median"] > 0
        if key != "none":
            assert row["hook_ms"] > 0 and row["ratio_of_medians"] > 0


def test_methods_full_standard_error_and_levels() -> None:
    module = load_script(BENCH / "bench_methods_full.py")
    # binomial: sqrt(0.9 * 0.1 / 10000) = 0.003 -> 0.30 points; 50%: sqrt(0.25 / 10000) = 0.5 points
    assert module.standard_error(90.0) == pytest.approx(0.30)
    assert module.standard_error(50.0) == pytest.approx(0.50)
    assert module.standard_error(90.0, n=2500) == pytest.approx(0.60)
    levels = module.PROTOCOL["polarization"]
    assert set(levels) == set(module.LEVELS) == {"a", "b"}
    # level b must be the stronger one: a smaller MACs ratio to stop at and a larger t
    assert levels["b"]["target_macs_ratio"] < levels["a"]["target_macs_ratio"]
    assert levels["b"]["t"] >= levels["a"]["t"]
    base = module.base_config(0)
    assert base["data"]["train_subset"] is None and base["data"]["eval_subset"] is None  # all of CIFAR-10
    assert base["train"]["amp"] and base["train"]["channels_last"]
    smoke = module.base_config(0, smoke=True)
    assert smoke["data"]["train_subset"] == 640 and smoke["train"]["max_steps_per_epoch"] == 3


def test_methods_full_seeds_keep_apart(tmp_path: Path) -> None:
    """A second seed must neither reuse the main run's cached stages nor overwrite its result files."""
    module = load_script(BENCH / "bench_methods_full.py")
    assert module.run_name(0) == "methods_full_resnet20"  # the stem BENCHMARKS.md renders from
    assert module.run_name(1) == "methods_full_resnet20_seed1"
    folders = {seed: module.FullBench(module.parse_args(["--workdir", str(tmp_path), "--seed", str(seed)])).work
               for seed in (0, 1)}
    assert folders[0] != folders[1] and folders[0].parent == folders[1].parent == tmp_path
    # both levels' polarization stages check the MACs target within epochs (level b crossed it by far in one epoch)
    assert all(level["target_check_every"] == 20 for level in module.PROTOCOL["polarization"].values())


def test_methods_full_export_stages_keeps_what_a_resume_reads(tmp_path: Path) -> None:
    """The hand-over copy holds each finished stage's record and model, each method's files and an
    unfinished stage's last checkpoint, and nothing else (no logs, best.pt or finished checkpoints)."""
    module = load_script(BENCH / "bench_methods_full.py")
    work = tmp_path / "work"
    files = ["baseline/stage.json", "baseline/model.safetensors", "baseline/last.pt", "baseline/best.pt", "baseline/tb/events",
             "baseline/config.yaml", "l1-a/result.json", "l1-a/pruned.safetensors", "l1-a/finetune/stage.json",
             "l1-a/finetune/model.safetensors", "masksparsity-a-sparse/mask.json", "none-a/finetune/last.pt",
             "none-a/finetune/metrics.jsonl"]
    for name in files:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(name.encode())
    dest = tmp_path / "dest"
    copied = module.export_stages(work, dest)
    kept = {"baseline/stage.json", "baseline/model.safetensors", "l1-a/result.json", "l1-a/pruned.safetensors",
            "l1-a/finetune/stage.json", "l1-a/finetune/model.safetensors", "masksparsity-a-sparse/mask.json",
            "none-a/finetune/last.pt"}
    assert {p.relative_to(dest).as_posix() for p in copied} == kept
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} == kept
    assert (dest / "l1-a" / "pruned.safetensors").read_bytes() == b"l1-a/pruned.safetensors"


def test_methods_full_partial_reports_stay_out_of_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After every method the run writes its partial result files into the stage folder; only the
    complete run's report goes to ``--results-dir`` (so an interrupted run never overwrites the
    committed results)."""
    module = load_script(BENCH / "bench_methods_full.py")
    written: list[Path | None] = []
    ran: list[str] = []
    monkeypatch.setattr(module.FullBench, "run", lambda self, name, level: ran.append(f"{name}-{level}") or {})
    monkeypatch.setattr(module, "report", lambda bench, rows, rounds, results_dir=None: written.append(results_dir))
    argv = ["--workdir", str(tmp_path), "--methods", "polarization-distill,none", "--results-dir", str(tmp_path / "r"),
            "--allow-dirty"]
    assert module.main(argv) == 0
    partial = tmp_path / "methods_full_resnet20" / "partial"
    assert written == [partial, partial, partial, None]
    # the protocol's one distilled row is at level b only
    assert ran == ["none-a", "none-b", "polarization-distill-b"]


def test_a_stage_record_names_the_machine_it_finished_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage's record says where it ran (a resumed run's stages may come from several machines); a
    finished stage is read back from its safetensors file, not run again, and nothing is pickled."""
    import types

    import torch

    import stages
    from polarprune import models

    calls: list[str] = []
    trained = models.create("resnet20", num_classes=10)
    torch.nn.init.constant_(trained.fc.bias, 0.25)

    def fake_training(cfg, model=None, hooks=None, resume=True):
        calls.append(cfg.out)
        return types.SimpleNamespace(final_top1=42.5, model=trained,
                                     history=[{"images_per_s": 100.0, "epoch": 1}, {"images_per_s": 300.0, "epoch": 2}])

    monkeypatch.setattr(stages, "run_training", fake_training)
    cfg = types.SimpleNamespace(out=str(tmp_path / "stage"), train=types.SimpleNamespace(epochs=2))
    model, record = stages.train_stage(cfg)
    saved = json.loads((tmp_path / "stage" / "stage.json").read_text())
    assert saved == record and record["machine"] == common.machine_info()
    assert record["top1"] == 42.5 and record["images_per_s"] == 200.0 and record["last_epoch"] == {"images_per_s": 300.0, "epoch": 2}
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["model.safetensors", "stage.json"]
    again, record_again = stages.train_stage(cfg)
    assert record_again == record and len(calls) == 1
    assert again is not trained and torch.equal(again.fc.bias, torch.full((10,), 0.25))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again(x), trained.eval()(x))


def test_per_image_correctness_is_stored_in_the_loader_order(tmp_path: Path) -> None:
    """``CifarStages.per_image``: the bitset of which test images the model gets right, and its top-1."""
    import torch

    import stages
    import stats

    class Fixed(torch.nn.Module):
        def forward(self, x):  # always predicts class 1
            return torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)

    loader = [(torch.zeros(3, 1), torch.tensor([1, 0, 1])), (torch.zeros(2, 1), torch.tensor([0, 1]))]
    assert stages.per_image_correct(Fixed(), loader) == [True, False, True, False, True]
    bench = stages.CifarStages()
    bench._bundle = types_namespace(eval_loader=loader)
    record = bench.per_image(Fixed())
    assert record["top1"] == pytest.approx(60.0) and record["n"] == 5
    assert stats.decode_correct(record) == [True, False, True, False, True]


def types_namespace(**kwargs):
    import types

    return types.SimpleNamespace(**kwargs)
