"""The pure helpers of bench/first_hour.py (the scripted first hour itself is run by hand)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import first_hour  # noqa: E402

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_main_command_is_the_quick_start_line() -> None:
    """The marked block is the Quick start command, without its fences."""
    command = first_hour.readme_block(README, "main-command")
    assert command == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/polarprune demo\n"


def test_readme_block_without_markers_is_a_one_line_error() -> None:
    with pytest.raises(first_hour.FirstHourError, match="no <!-- absent -->"):
        first_hour.readme_block(README, "absent")
    with pytest.raises(first_hour.FirstHourError, match="empty"):
        first_hour.readme_block("<!-- x -->\n```bash\n```\n<!-- /x -->\n", "x")


def test_with_data_root_changes_only_the_data_root() -> None:
    """Only the data section's root line changes; every other line of the README's config stays."""
    config = first_hour.readme_block(README, "own-model-config")
    changed = first_hour.with_data_root(config, "/tmp/imgs")
    before, after = config.splitlines(), changed.splitlines()
    diff = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and diff == [("  root: /data/mine", "  root: /tmp/imgs")]
    assert first_hour.with_data_root("out: x\nroot: y\ndata:\n  name: a\n  root: b  # c\n", "Z") == \
        "out: x\nroot: y\ndata:\n  name: a\n  root: Z  # c\n"
    with pytest.raises(first_hour.FirstHourError, match="data.root"):
        first_hour.with_data_root("data:\n  name: a\n", "Z")


def test_pixel_color_marks_the_class_channel() -> None:
    rng = random.Random(0)
    for label in range(6):
        color = first_hour.pixel_color(rng, label)
        assert color[label % 3] == 255 and all(c < 160 for i, c in enumerate(color) if i != label % 3)


def test_output_problems_and_agreement() -> None:
    assert first_hour.output_problems("eval", "ok\n", 0, 0) == []
    assert first_hour.output_problems("eval", "Traceback (most recent call last):\n", 1, 0) == [
        "eval: exit status 1, expected 0", "eval: output holds a Python traceback"]
    assert first_hour.agreement_problems("MACs", {"a": 5, "b": 5}) == []
    assert first_hour.agreement_problems("MACs", {"a": 5, "b": 6}) == ["MACs differ: a 5, b 6"]
    assert first_hour.agreement_problems("shape", {"a": [3, 32, 32], "b": [3, 224, 224]}) != []


def _results(pruned_eval: int) -> dict:
    return {"prune": {"macs_after": 10, "macs_before": 20, "input_shape": [3, 32, 32]},
            "prune (README's grad)": {"macs_before": 20, "input_shape": [3, 32, 32]},
            "flops": {"macs": 10}, "eval": {"macs": pruned_eval}, "flops-unpruned": {"macs": 20},
            "export": {"input_shape": [3, 32, 32]},
            "latency": {"macs": {"mine.safetensors": 10, "runs/mine/last.pt": 20}, "input_shape": [3, 32, 32]}}


def test_session_problems_finds_differing_macs_and_bad_steps() -> None:
    """A session whose commands agree has no problem; eval reporting other MACs is one; so is a
    step that failed or was not run."""
    names = ["prune (README's grad)", "prune", "flops", "flops-unpruned", "eval", "export", "latency"]

    def steps(results: dict) -> list:
        return [first_hour.Step(n, "x", rc=0, result=results[n]) for n in names]

    assert first_hour.session_problems(steps(_results(10)), {}) == []
    assert first_hour.session_problems(steps(_results(11)), {}) == [
        "pruned MACs differ: prune 10, flops 10, eval 11, latency 10"]
    broken = steps(_results(10)) + [first_hour.Step("late", "x"), first_hour.Step("bad", "x", rc=2, output="Traceback")]
    assert first_hour.session_problems(broken, {}) == [
        "late: not run", "bad: exit status 2, expected 0", "bad: output holds a Python traceback"]


def test_session_steps_follow_the_readme() -> None:
    steps = first_hour.session_steps(README, Path("/c"), Path("/d"), with_tests=False)
    assert steps[0].command == first_hour.readme_block(README, "main-command") and steps[0].where == "clone"
    assert [s.name for s in steps if s.expect_rc != 0] == ["export without deploy extra"]
    with_tests = first_hour.session_steps(README, Path("/c"), Path("/d"), with_tests=True)
    assert with_tests[1].command == first_hour.readme_block(README, "test-command")


def test_the_demo_is_compared_with_the_readme_table() -> None:
    """The demo's stages are checked against the README's table; a different top-1 is a problem."""
    readme = {"stages": [{"name": "prune", "top1": 99.1667, "macs": 591872, "params": 24565}]}
    same = {"stages": [{"name": "prune", "top1": 99.16666, "macs": 591872, "params": 24565}]}
    worse = {"stages": [{"name": "prune", "top1": 98.5, "macs": 591872, "params": 24565}]}
    assert first_hour.demo_stages(readme["stages"]) == [["prune", 99.17, 591872, 24565]]
    names = ["prune (README's grad)", "prune", "flops", "flops-unpruned", "eval", "export", "latency"]
    for demo, expected in ((same, []), (worse, ["demo stages (top-1, MACs, params) differ: this run "
                                                "[['prune', 98.5, 591872, 24565]], README [['prune', 99.17, 591872, 24565]]"])):
        steps = [first_hour.Step(n, "x", rc=0, result=_results(10)[n]) for n in names]
        steps.append(first_hour.Step("readme first command", "x", rc=0, result=demo))
        assert first_hour.session_problems(steps, readme) == expected


def test_venv_versions_reads_the_clones_venv(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    versions = first_hour.venv_versions(tmp_path)
    assert versions["torch"] and versions["torch"][0].isdigit() and "onnx" in versions
    assert "error" in first_hour.venv_versions(tmp_path / "absent")


def test_renderers_show_the_steps_figures_and_verdict(tmp_path: Path) -> None:
    """BENCHMARKS section 7's tables come from first_hour.json: a disagreement is marked."""
    import json

    import rendering

    result = {"steps": [{"step": "eval", "command": "polarprune eval m", "rc": 0, "expected_rc": 0, "seconds": 5.4,
                         "traceback": False}],
              "figures": {"pruned MACs": {"prune": 2806410, "eval": 2806411},
                          "input shape": {"images": [3, 32, 32], "prune": [3, 32, 32]},
                          "demo stages (top-1, MACs, params)": {"this run": [["prune", 99.17, 591872, 24565]]}},
              "problems": ["pruned MACs differ: prune 2806410, eval 2806411"]}
    (tmp_path / "first_hour.json").write_text(json.dumps(result))
    results = rendering.Results(tmp_path)
    steps = rendering.RENDERERS["first-hour-steps"](results)
    assert "| eval | `polarprune eval m` | 0 (0) | 5 | no |" in steps
    figures = rendering.RENDERERS["first-hour-figures"](results).splitlines()
    assert figures[2] == "| pruned MACs | prune 2,806,410; eval 2,806,411 | **no** |"
    assert figures[3] == "| input shape | images 3x32x32; prune 3x32x32 | yes |"
    assert figures[4] == "| demo stages (top-1, MACs, params) | this run prune 99.17 591,872 24,565 | yes |"
    from rendering.first_hour import short_command

    assert short_command("/tmp/polarprune-first-hour-x1_y/clone/.venv/bin/polarprune eval m "
                         "--data-root /tmp/polarprune-first-hour-x1_y/user/data") == "polarprune eval m --data-root TMP/user/data"
    assert rendering.RENDERERS["first-hour-verdict"](results) == \
        "problems found: pruned MACs differ: prune 2806410, eval 2806411"
