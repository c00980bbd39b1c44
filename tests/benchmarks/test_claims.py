"""The claims check: every figure of BENCHMARKS.md, the README and docs/ is what bench/results gives.

``bench/render.py`` (the ``bench/rendering`` package) renders the marked blocks from the committed result files; these tests
re-render into a temporary copy of the documents and compare, check that every cited result
file exists, and check the check itself (a changed result value or a missing file must make
it fail). Standard library only, well under a second.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench/render.py's package, imported as the script does
import rendering as render  # noqa: E402
import stats  # noqa: E402  (bench/stats.py)
from rendering import full  # noqa: E402


@pytest.fixture()
def copy_root(tmp_path: Path) -> Path:
    """A copy of the documents and of bench/results, to render and to break."""
    for path in render.document_paths(REPO_ROOT):
        target = tmp_path / path.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    shutil.copytree(REPO_ROOT / "bench" / "results", tmp_path / "bench" / "results")
    return tmp_path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_documents_equal_their_rendering_from_the_result_files(copy_root: Path) -> None:
    assert render.main(["--root", str(copy_root)]) == 0
    differing = []
    for path in render.document_paths(REPO_ROOT):
        rendered = (copy_root / path.relative_to(REPO_ROOT)).read_text()
        if rendered != path.read_text():
            differing.append(str(path.relative_to(REPO_ROOT)))
    assert differing == [], f"run `python bench/render.py`: {differing} differ from bench/results"


def test_check_passes_on_the_repository() -> None:
    outcome = render.render_documents(REPO_ROOT)
    assert [f"{b.document}: {b.spec}" for b in outcome.differing] == []
    assert outcome.missing == []


def test_documents_render_the_main_result_files() -> None:
    results = render.Results(REPO_ROOT / "bench" / "results")
    for path in render.document_paths(REPO_ROOT):
        render.render_text(path.read_text(), results, str(path))
    assert {"methods_full_resnet20", "methods_cifar_resnet20", "methods_cifar_resnet56", "pruning_time", "pruned_latency",
            "regularizer_overhead", "engine_throughput", "data_loader", "cifar_recipe_resnet20",
            "demo_polarization"} <= results.used


@pytest.mark.parametrize(
    ("stem", "edit", "block"),
    [
        ("regularizer_overhead", lambda d: d["variants"]["polarization"].__setitem__("hook_ms", 0.5), "regularizer-table"),
        ("methods_cifar_resnet56", lambda d: d["methods"][0]["finetune"].__setitem__("top1", 12.34), "methods-table resnet56"),
        ("methods_full_resnet20", lambda d: d["methods"][0]["finetune"].__setitem__("top1", 12.34), "full-table a"),
        ("methods_full_resnet20", lambda d: d["baseline"].__setitem__("top1", 99.0), "value methods_full_resnet20 baseline/top1 .2f"),
        ("methods_full_resnet20", lambda d: d["protocol"].__setitem__("finetune_lr", 0.5), "value methods_full_resnet20 protocol/finetune_lr"),
        ("data_loader", lambda d: d.__setitem__("train_step_ms_median", 999.0), "value data_loader train_step_ms_median .0f"),
        ("regularizer_overhead", lambda d: d["variants"]["l1"].__setitem__("pass", False), "regularizer-verdict"),
        ("engine_throughput", lambda d: d["acceptance"].__setitem__("passed", False), "engine-verdict engine_throughput"),
        ("pruned_latency", lambda d: d["models"][1]["latency"]["nchw"]["64"]["latency_cut"].__setitem__("pruned", 0.1), "pruned-latency-table"),
        ("demo_polarization", lambda d: d["stages"][0].__setitem__("top1", 50.0), "demo-table"),
        ("pruning_time", lambda d: d["models"][0].__setitem__("seconds_median", 9.99), "pruning-time-table"),
    ],
)
def test_changing_a_committed_result_value_fails_the_check(copy_root: Path, capsys, stem, edit, block) -> None:
    _edit_json(copy_root / "bench" / "results" / f"{stem}.json", edit)
    assert render.main(["--root", str(copy_root), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"block '{block}' differs" in err


def test_an_inline_figure_in_docs_follows_its_file(copy_root: Path, capsys) -> None:
    _edit_json(copy_root / "bench" / "results" / "pruned_latency.json",
               lambda d: d["models"][2]["latency"]["nchw"]["64"]["latency_cut"].__setitem__("pruned", 0.5))
    assert render.main(["--root", str(copy_root), "--check"]) == 1
    err = capsys.readouterr().err
    assert "docs/pruning.md" in err and "BENCHMARKS.md" in err
    assert render.main(["--root", str(copy_root)]) == 0
    assert "50.0%" in (copy_root / "docs" / "pruning.md").read_text()
    assert render.main(["--root", str(copy_root), "--check"]) == 0


def test_a_missing_result_file_fails_the_check(copy_root: Path, capsys) -> None:
    (copy_root / "bench" / "results" / "regularizer_overhead.json").unlink()
    assert render.main(["--root", str(copy_root), "--check"]) != 0
    assert "regularizer_overhead.json is missing" in capsys.readouterr().err


def test_a_missing_cited_file_fails_the_check(copy_root: Path, capsys) -> None:
    (copy_root / "bench" / "results" / "methods_cifar_resnet20_gammas.png").unlink()
    assert render.main(["--root", str(copy_root), "--check"]) == 1
    assert "methods_cifar_resnet20_gammas.png" in capsys.readouterr().err


def test_every_decimal_figure_of_a_benchmarks_table_is_rendered() -> None:
    text = (REPO_ROOT / "BENCHMARKS.md").read_text()
    outside = render.MARKER.sub("", text)
    typed = [line for line in outside.splitlines()
             if line.startswith("|") and re.search(r"\d\.\d|\d%|\d,\d{3}", line)]
    assert typed == []


def test_noise_rule_is_two_standard_errors_of_a_difference() -> None:
    """se(80%) = 0.400 and se(81.2%) = 0.391 points on 10,000 images: two standard errors of their difference
    are 2 * sqrt(0.400^2 + 0.391^2) = 1.118 points, so 1.2 apart is beyond noise and 1.0 apart is not."""
    assert stats.standard_error(80.0) == pytest.approx(0.4)
    assert stats.beyond_noise(80.0, 81.2) and stats.beyond_noise(81.2, 80.0)
    assert not stats.beyond_noise(80.0, 81.0)
    data = {"methods": [{"method": "polarization", "level": "b", "finetune": {"top1": 80.0}},
                        {"method": "l1", "level": "b", "finetune": {"top1": 81.2}}]}

    class Fixed(render.Results):
        def load(self, stem):
            return data

    results = Fixed(Path("."))
    assert full.full_diff(results, "b", "l1", "polarization") == "+1.20 points, beyond noise"
    assert full.full_noise(results, "b") == "beyond noise: L1 + global threshold +1.20"


def test_cited_files_expand_brace_lists() -> None:
    assert render.cited_files("see `bench/results/a{1,2}.{json,md}`") == [
        "bench/results/a1.json", "bench/results/a1.md", "bench/results/a2.json", "bench/results/a2.md"]


def test_paths_select_by_index_filter_and_wildcard() -> None:
    data = {"models": [{"m": "a", "r": 1, "v": {"x": 0.25, "y": 0.5}}, {"m": "b", "r": 16, "v": {"x": 0.75, "y": 1.0}}]}
    assert render.lookup(data, "models[1]/v/x") == [0.75]
    assert render.lookup(data, "models[m=a]/v/y") == [0.5]
    assert render.lookup(data, "models[m=a|b,r=16]/v/x") == [0.75]
    assert render.lookup(data, "models[*]/v/*") == [0.25, 0.5, 0.75, 1.0]
    assert render.span(render.lookup(data, "models[*]/v/x"), ".1%") == "25.0-75.0%"
    with pytest.raises(render.RenderError, match="no key"):
        render.lookup(data, "models[0]/w")
    with pytest.raises(render.RenderError, match="selects nothing"):
        render.lookup(data, "models[m=c]/v")


def test_unknown_block_and_unbalanced_markers_are_errors(tmp_path: Path) -> None:
    results = render.Results(tmp_path)
    with pytest.raises(render.RenderError, match="unknown block 'nope'"):
        render.render_text("a <!-- render: nope -->1<!-- /render --> b", results)
    with pytest.raises(render.RenderError, match="unbalanced"):
        render.render_text("a <!-- render: value x y -->1 b", results)


def test_inline_and_block_markers_keep_their_layout(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"a": 0.1234, "b": [1, 3]}))
    results = render.Results(tmp_path)
    text = "x <!-- render: value r a .1% -->?<!-- /render --> y\n<!-- render: range r b[*] -->\nold\n<!-- /render -->\n"
    new, blocks = render.render_text(text, results)
    assert new == "x <!-- render: value r a .1% -->12.3%<!-- /render --> y\n<!-- render: range r b[*] -->\n1-3\n<!-- /render -->\n"
    assert [b.spec for b in blocks] == ["value r a .1%", "range r b[*]"]
    assert render.render_text(new, results)[0] == new


def test_full_protocol_says_how_often_the_target_was_checked(copy_root: Path, capsys) -> None:
    """The protocol paragraph renders how often polarization's MACs target was checked from the file; a
    file that does not record it (an older run checked at epoch ends) cannot render that sentence."""
    _edit_json(copy_root / "bench" / "results" / "methods_full_resnet20.json",
               lambda d: [level.__setitem__("target_check_every", 5) for level in d["protocol"]["polarization"].values()])
    assert render.main(["--root", str(copy_root)]) == 0
    assert "(the target checked every <!-- render: range methods_full_resnet20 protocol/polarization/*/target_check_every -->5<!-- /render --> steps)" in (
        copy_root / "BENCHMARKS.md").read_text()
    _edit_json(copy_root / "bench" / "results" / "methods_full_resnet20.json",
               lambda d: [level.pop("target_check_every") for level in d["protocol"]["polarization"].values()])
    assert render.main(["--root", str(copy_root), "--check"]) == 2
    assert "no key 'target_check_every'" in capsys.readouterr().err


def test_prose_is_markdown_and_only_figures_are_rendered() -> None:
    """The protocol, baseline and noise sentences of BENCHMARKS.md are Markdown around inline figures:
    no rendered block there holds a sentence of its own."""
    text = (REPO_ROOT / "BENCHMARKS.md").read_text()
    for spec in ("full-protocol", "full-baseline", "methods-protocol", "methods-unpruned", "data-loader-notes", "engine-notes",
                 "regularizer-notes", "pruning-time-settings"):
        assert f"<!-- render: {spec}" not in text and spec not in render.RENDERERS
    assert "standard error of\n<!-- render: full-se se -->0.37<!-- /render --> points" in text
    assert "All **50,000 training and 10,000 test images** of the shared JPEG archive" in render.MARKER.sub("", text)


def _full_file(baseline: float, target: float, finals: dict[str, float]) -> dict:
    return {"baseline": {"top1": baseline}, "level_targets": {"b": target},
            "methods": [{"method": m, "level": "b", "finetune": {"top1": v}} for m, v in finals.items()]}


def test_full_seeds_sets_a_repeat_beside_the_main_run(tmp_path: Path) -> None:
    """The rows both seeds ran, their seed-to-seed changes against the sampling noise, and each method's
    difference to L1 per seed; a method only the main run has is left out."""
    (tmp_path / "methods_full_resnet20.json").write_text(json.dumps(
        _full_file(87.5, 0.72, {"polarization": 81.0, "l1": 82.0, "masksparsity": 82.5, "tp-bnscale": 80.0})))
    (tmp_path / "methods_full_resnet20_seed1.json").write_text(json.dumps(
        _full_file(87.0, 0.70, {"polarization": 82.5, "l1": 81.8, "masksparsity": 82.0})))
    text = full.full_seeds(render.Results(tmp_path), "b", "1")
    lines = text.splitlines()
    assert lines[0] == "| top-1 (%) | seed 0 | seed 1 | seed 1 minus seed 0 |"
    assert "| unpruned baseline | 87.50 | 87.00 | -0.50 (within noise) |" in lines
    assert "| level b: MACs reduction | 72.0% | 70.0% | -2.0 points |" in lines
    # +1.5 points at ~82% exceeds two standard errors of a difference (about 1.08), -0.2 does not
    assert "| polarization + grad, after fine-tuning | 81.00 | 82.50 | +1.50 (beyond noise) |" in lines
    assert "| L1 + global threshold, after fine-tuning | 82.00 | 81.80 | -0.20 (within noise) |" in lines
    assert "| MaskSparsity minus L1 | 0.50 | 0.20 | -0.30 |" in lines
    assert "| polarization + grad minus L1 | -1.00 | 0.70 | +1.70 |" in lines
    assert "BNScale" not in text
    assert full.full_seed_change(render.Results(tmp_path), "b", "1") == "0.20-1.50"
    with pytest.raises(render.RenderError, match="seed2"):
        full.full_seeds(render.Results(tmp_path), "b", "2")


def test_full_run_counts_the_stages_per_machine_once_records_name_it(tmp_path: Path) -> None:
    """Throughput range and hours over the distinct stages (a level's shared sparsity stage once);
    the machines are listed only when some stage record names one."""
    a = {"processor": "A", "cpus_usable": 2, "cuda": None, "cpu_native_bf16": True}
    b = {"processor": "B", "cpus_usable": 16, "cuda": "H100", "cpu_native_bf16": False}

    def stage(rate: float, wall: float, machine: dict | None = None) -> dict:
        return {"images_per_s": rate, "wall_s": wall, **({"machine": machine} if machine else {})}

    data = {"baseline": stage(1000, 3600, a), "methods": [
        {"method": "l1", "level": "a", "sparsity": stage(800, 1800, a), "finetune": stage(900, 900, b)},
        {"method": "l1", "level": "b", "sparsity": stage(800, 1800, a), "finetune": stage(700, 900)},
    ]}
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert full.full_run(render.Results(tmp_path), "run") == (
        "700-1000 training images/s, 2.0 hours of training in all (the stages' `wall_s`); "
        "stages per machine: A, 2 CPUs, GPU none, native bf16 (2); B, 16 CPUs, GPU H100, no native bf16 (1); "
        "machine not recorded (1)")
    for entry in [data["baseline"]] + [e[k] for e in data["methods"] for k in ("sparsity", "finetune")]:
        entry.pop("machine", None)
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert full.full_run(render.Results(tmp_path), "run").endswith("(the stages' `wall_s`)")


def test_every_renderer_is_registered_by_its_family_module() -> None:
    """The registry is filled by the ``@renderer`` decorators (no hand-kept dict): each name once,
    each function from the engine or a family module, a second registration refused."""
    families = {"rendering.engine", "rendering.provenance", "rendering.methods", "rendering.full", "rendering.latency",
                "rendering.training", "rendering.demo", "rendering.first_hour", "rendering.detectors",
                "rendering.latency_target", "rendering.latency_accuracy", "rendering.yolo"}
    assert {func.__module__ for func in render.RENDERERS.values()} <= families
    assert {"value", "range", "max", "full-table", "methods-table", "demo-table"} <= set(render.RENDERERS)
    with pytest.raises(render.RenderError, match="registered twice"):
        render.renderer("value")(lambda results: "")


def test_verdicts_use_mcnemar_once_per_image_results_are_stored(tmp_path: Path) -> None:
    """With per-image bitsets a verdict is McNemar's (and says its p); without, the unpaired rule. 40 test
    images: L1 gets 12 images right that polarization misses and none the other way, b=0, c=12,
    p = 2 / 2**12 = 0.00049, beyond noise although the unpaired rule on 10,000 images would not judge it so."""
    pol = [False] * 12 + [True] * 28
    l1 = [True] * 40
    data = {"methods": [
        {"method": "polarization", "level": "b", "finetune": {"top1": 70.0, "per_image": stats.encode_correct(pol)}},
        {"method": "l1", "level": "b", "finetune": {"top1": 70.5, "per_image": stats.encode_correct(l1)}}]}
    (tmp_path / "methods_full_resnet20.json").write_text(json.dumps(data))
    results = render.Results(tmp_path)
    assert full.full_diff(results, "b", "l1", "polarization") == "+0.50 points, beyond noise (McNemar p 0.00049)"
    assert full.noise_test(results, "methods_full_resnet20").startswith("McNemar's exact test")
    del data["methods"][1]["finetune"]["per_image"]
    (tmp_path / "methods_full_resnet20.json").write_text(json.dumps(data))
    results = render.Results(tmp_path)
    assert full.full_diff(results, "b", "l1", "polarization") == "+0.50 points, within noise"
    assert full.noise_test(results, "methods_full_resnet20").startswith("the unpaired rule")
    assert full.full_noise_line(results, "b", "l1", "polarization") == "1.29"  # 2 * sqrt(0.458^2 + 0.456^2)


def test_the_smoke_summary_lists_every_pair_beyond_noise(tmp_path: Path) -> None:
    """On 2,000 images at ~30% two standard errors of a difference are about 2.9 points: 33.30 vs 26.55 is
    beyond noise, 29.25 vs 28.80 is not; the prune changes are rendered with their signs."""
    from rendering import methods

    def entry(key: str, before: float, pruned: float, final: float) -> dict:
        return {"method": key, "prune": {"top1_before": before, "top1": pruned}, "finetune": {"top1": final}}

    rows = [entry("polarization", 29.25, 24.00, 28.80), entry("l1", 31.85, 12.85, 26.55), entry("none", 31.45, 17.10, 29.25),
            entry("masksparsity", 28.55, 27.95, 33.30), entry("tp-bnscale", 31.20, 15.15, 29.85),
            entry("tp-groupnorm", 28.50, 29.85, 32.35)]
    data = {"model": "resnet20", "protocol_settings": {"eval_subset": 2000}, "methods": rows}
    for model in ("resnet20", "resnet56"):
        (tmp_path / f"methods_cifar_{model}.json").write_text(json.dumps(data))
    results = render.Results(tmp_path)
    assert methods.methods_changes(results, "resnet20", "polarization,tp-groupnorm") == (
        "polarization + grad -5.25, Torch-Pruning GroupNormPruner +1.35")
    assert methods.methods_worst_drop(results, "polarization,masksparsity,tp-groupnorm") == "5.25"
    beyond = methods.methods_beyond(results, "resnet20")
    assert beyond.startswith("MaskSparsity above L1 + global threshold by 6.75;")
    assert "no regularizer + global threshold above polarization" not in beyond
    for e in rows:
        e["finetune"]["top1"] = 30.0
    (tmp_path / "methods_cifar_resnet20.json").write_text(json.dumps(data))
    assert methods.methods_beyond(render.Results(tmp_path), "resnet20") == "no pair of methods differs beyond noise"


def test_scaled_values_and_noise_figures(tmp_path: Path) -> None:
    """``scaled`` multiplies one value before formatting (MACs in millions, seconds in ms); the noise figures
    are computed from the fine-tuned top-1s: mean 80% on 10,000 images -> se 0.40, difference 0.57, line 1.13."""
    (tmp_path / "r.json").write_text(json.dumps({"macs": 40_551_000, "s": 0.0375, "flag": True}))
    results = render.Results(tmp_path)
    assert render.render_spec("scaled r macs 1e-6 .2f", results) == "40.55"
    assert render.render_spec("scaled r s 1000 .1f", results) == "37.5"
    with pytest.raises(render.RenderError, match="expected a number"):
        render.render_spec("scaled r flag 2", results)
    data = {"methods": [{"finetune": {"top1": 79.0}}, {"finetune": {"top1": 81.0}}]}
    (tmp_path / "methods_full_resnet20.json").write_text(json.dumps(data))
    results = render.Results(tmp_path)
    figures = [full.full_se(results, what) for what in ("mean", "se", "difference", "line")]
    assert figures == ["80.00", "0.40", "0.57", "1.13"]
    with pytest.raises(render.RenderError, match="unknown noise figure 'x'"):
        full.full_se(results, "x")
