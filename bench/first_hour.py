"""A new user's first hour, scripted (issue 27's acceptance), with checks of what it shows.

It clones the repository, runs the README's commands and an own-model run at 32 px, and checks
that every command agrees on the MACs and input size.

What it does, in a temporary folder:

1. ``git clone`` this repository (its committed HEAD) into ``TMP/clone``.
2. Runs the README's first command as written (the block between the ``main-command``
   markers: a venv, ``pip install -e .``, ``polarprune demo``); ``--with-tests`` also runs the
   README's test command (the ``test-command`` block; about 15 minutes).
3. Writes the README's own-model config (the ``own-model-config`` block) to ``mine.yaml`` with
   only ``data.root`` changed, to a tiny generated ImageFolder of 32x32 images, and a tiny
   ``mynets.py`` with ``build_net(num_classes, width=32, in_channels=3)``.
4. Runs, with the venv's ``polarprune``: train (shortened by overrides on the command line),
   inspect, prune (``--report``), flops, eval, export to ONNX (first without the deploy extra,
   which must fail with one line naming it, then after installing it) and latency (pruned vs
   unpruned).
5. Checks that every command exited as expected, that no output holds a traceback, that
   every command reports the same MACs and input shape (the images' size), and that the demo
   reproduced the README's table (bench/results/demo_polarization.json); prints a table and writes
   ``bench/results/first_hour.{json,md}``.

Run by hand: ``python bench/first_hour.py [--with-tests] [--keep] [--allow-dirty]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_LIBRARIES, REPO_ROOT, add_provenance_options, checked_revision, data_sizes, provenance, provenance_markdown, write_results  # noqa: E402

STEM = "first_hour"
IMAGE_SIZE = 32
CLASSES = 3
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 6
# Shorten the README's 30-epoch run. The README's `grad` prune runs too, but its valley finds
# little to cut after one epoch: a target MACs reduction makes the model the later commands use
# really narrower.
TRAIN_OVERRIDES = ("train.epochs=1", "data.train_subset=24", "data.eval_subset=12", "data.batch_size=8")
PRUNE_STRATEGY = ("--strategy", "flops-target", "--target-macs-reduction", "0.5")
STEP_TIMEOUT_S = 3600

MYNETS_SOURCE = '''"""A small user-defined CNN for the first-hour script (written by bench/first_hour.py)."""
from torch import nn


def build_net(num_classes: int, width: int = 32, in_channels: int = 3) -> nn.Module:
    """Two conv-BN-ReLU blocks, a residual-free body, global pooling and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
'''


class FirstHourError(Exception):
    """A setup problem of the script itself (one line, exit 1)."""


# ----------------------------------------------------------------------------- pure helpers


def readme_block(readme: str, marker: str) -> str:
    """The lines between ``<!-- marker -->`` and ``<!-- /marker -->`` without code fences (the way
    .ci/run reads the test command); a one-line error when the markers are missing or empty."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\n(.*?)<!-- /{re.escape(marker)} -->", readme, re.S)
    if match is None:
        raise FirstHourError(f"README.md has no <!-- {marker} --> ... <!-- /{marker} --> block")
    lines = [line for line in match.group(1).splitlines() if not line.startswith("```")]
    text = "\n".join(lines).strip()
    if not text:
        raise FirstHourError(f"README.md's {marker} block is empty")
    return text + "\n"


def with_data_root(config: str, root: str) -> str:
    """The config text with only ``data.root`` changed (the first ``root:`` line inside ``data:``)."""
    pattern = re.compile(r"^(data:\n(?:[ \t]+.*\n)*?[ \t]+root:[ \t]*)(\S+)(.*)$", re.M)
    new, count = pattern.subn(lambda m: m.group(1) + root + m.group(3), config, count=1)
    if count != 1:
        raise FirstHourError("the README's own-model config has no data.root line")
    return new


def pixel_color(rng: random.Random, label: int) -> tuple[int, int, int]:
    """A random colour whose channel ``label % 3`` is bright: the class is learnable from colour."""
    color = [rng.randrange(160) for _ in range(3)]
    color[label % 3] = 255
    return color[0], color[1], color[2]


def output_problems(name: str, output: str, rc: int, expect_rc: int) -> list[str]:
    """What is wrong with one command's run: an unexpected exit status or a traceback."""
    problems = []
    if rc != expect_rc:
        problems.append(f"{name}: exit status {rc}, expected {expect_rc}")
    if "Traceback" in output:
        problems.append(f"{name}: output holds a Python traceback")
    return problems


def agreement_problems(what: str, values: Mapping[str, Any]) -> list[str]:
    """One problem line when the commands in ``values`` (command -> value) do not all agree."""
    if len(set(json.dumps(v) for v in values.values())) <= 1:
        return []
    return [f"{what} differ: " + ", ".join(f"{k} {v}" for k, v in values.items())]


def reported_figures(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """MACs of the pruned and unpruned model and the input shape, as each command reported them
    (``results``: the parsed JSON of prune's report, flops, eval, export and latency), beside the
    shape of the images the model was trained on."""
    prune, latency = results["prune"], results["latency"]
    return {
        "pruned MACs": {"prune": prune["macs_after"], "flops": results["flops"]["macs"],
                        "eval": results["eval"]["macs"], "latency": latency["macs"]["mine.safetensors"]},
        "unpruned MACs": {"prune": prune["macs_before"], "prune (grad)": results["prune (README's grad)"]["macs_before"],
                          "flops (checkpoint)": results["flops-unpruned"]["macs"],
                          "latency": latency["macs"]["runs/mine/last.pt"]},
        "input shape": {"images": [3, IMAGE_SIZE, IMAGE_SIZE], "prune": prune["input_shape"],
                        "prune (grad)": results["prune (README's grad)"]["input_shape"], "export": results["export"]["input_shape"],
                        "latency": latency["input_shape"]},
    }


def demo_stages(stages: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Each demo stage as ``[name, top-1 to 2 decimals, MACs, params]`` (the README's table)."""
    return [[s["name"], round(s["top1"], 2), s["macs"], s["params"]] for s in stages]


def session_figures(results: Mapping[str, Any], readme_demo: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``reported_figures`` plus the demo's stages against the README's table (``readme_demo``:
    bench/results/demo_polarization.json), when the demo ran."""
    figures = reported_figures(results)
    if "readme first command" in results:
        figures["demo stages (top-1, MACs, params)"] = {
            "this run": demo_stages(results["readme first command"]["stages"]),
            "README": demo_stages(readme_demo["stages"])}
    return figures


# ----------------------------------------------------------------------------- running


@dataclass
class Step:
    """One shell command of the session and what came of it."""

    name: str
    command: str
    expect_rc: int = 0
    json_from: str = ""  # "stdout", a file name in the work folder, or "" for none
    where: str = "user"  # "clone" (the repository's checkout) or "user" (the user's own folder)
    rc: int | None = None
    seconds: float = 0.0
    output: str = ""
    result: Any = field(default=None, repr=False)


def run_step(step: Step, cwd: Path, env: Mapping[str, str]) -> Step:
    """Run ``step.command`` in bash; keep its exit status, time, output and parsed JSON."""
    print(f"$ {step.command}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", step.command], cwd=cwd, env=dict(env), capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S)
    step.seconds = time.perf_counter() - start
    step.rc, step.output = proc.returncode, proc.stdout + proc.stderr
    print(step.output[-1500:], flush=True)
    if step.json_from and step.rc == 0:
        text = proc.stdout if step.json_from == "stdout" else (cwd / step.json_from).read_text()
        try:
            step.result = json.loads(text)
        except json.JSONDecodeError:
            step.result = None
    return step


def make_imagefolder(root: Path, seed: int = 0) -> dict[str, int]:
    """A deterministic ImageFolder tree of 32x32 PNGs (train/ and val/, CLASSES classes)."""
    from PIL import Image

    rng = random.Random(seed)
    counts = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), pixel_color(rng, label))
                image.save(folder / f"{index:03d}.png")
        counts[split] = CLASSES * per_class
    return counts


def session_steps(readme: str, clone: Path, data_root: Path, with_tests: bool) -> list[Step]:
    """The commands of the session, in order, as the README shows them (the README's own commands
    in the clone, the own-model commands in the user's folder)."""
    pp = f"{clone}/.venv/bin/polarprune"
    trust = "--trust-code"
    steps = [Step("readme first command", readme_block(readme, "main-command"), where="clone",
                  json_from="runs/demo-polarization/summary.json")]
    if with_tests:
        steps.append(Step("readme test command", readme_block(readme, "test-command"), where="clone"))
    return steps + [
        Step("train", f"{pp} train mine.yaml {trust} {' '.join(TRAIN_OVERRIDES)}"),
        Step("inspect", f"{pp} inspect runs/mine/last.pt {trust} --json", json_from="stdout"),
        Step("prune (README's grad)", f"{pp} prune runs/mine/last.pt --strategy grad --out grad.safetensors "
                                      f"--report R-grad.json {trust}", json_from="R-grad.json"),
        Step("prune", f"{pp} prune runs/mine/last.pt {' '.join(PRUNE_STRATEGY)} --out mine.safetensors "
                      f"--report R.json {trust}", json_from="R.json"),
        Step("flops", f"{pp} flops mine.safetensors --json {trust}", json_from="stdout"),
        Step("flops-unpruned", f"{pp} flops runs/mine/last.pt --json {trust}", json_from="stdout"),
        Step("eval", f"{pp} eval mine.safetensors --data imagefolder --data-root {data_root} --json {trust}",
             json_from="stdout"),
        Step("export without deploy extra", f"{pp} export mine.safetensors --format onnx --out mine.onnx --json {trust}",
             expect_rc=1),
        Step("install deploy extra", ".venv/bin/pip install -e '.[deploy]'", where="clone"),
        Step("export", f"{pp} export mine.safetensors --format onnx --out mine.onnx --json {trust}", json_from="stdout"),
        Step("latency", f"{pp} latency runs/mine/last.pt mine.safetensors --rounds 3 --json latency.json {trust}",
             json_from="latency.json"),
    ]


def run_session(steps: Sequence[Step], folders: Mapping[str, Path], env: Mapping[str, str]) -> None:
    """Run the steps in order; stop after the first one whose exit status is unexpected
    (later steps need its output), leaving the rest unrun (``rc`` None)."""
    for step in steps:
        run_step(step, folders[step.where], env)
        if step.rc != step.expect_rc:
            break


def session_problems(steps: Sequence[Step], readme_demo: Mapping[str, Any]) -> list[str]:
    """Every problem of the session: unrun steps, unexpected exit statuses, tracebacks, a missing
    extra not named, and MACs or input shapes that differ between commands."""
    problems = [f"{s.name}: not run" for s in steps if s.rc is None]
    for step in steps:
        if step.rc is not None:
            problems += output_problems(step.name, step.output, step.rc, step.expect_rc)
    no_extra = next((s for s in steps if s.name == "export without deploy extra"), None)
    if no_extra is not None and no_extra.rc == 1 and "polarprune[deploy]" not in no_extra.output:
        problems.append("export without the deploy extra: the error does not name polarprune[deploy]")
    results = {s.name: s.result for s in steps if s.result is not None}
    try:
        figures = session_figures(results, readme_demo)
    except (KeyError, TypeError) as exc:
        return problems + [f"a command's JSON lacks {exc}"]
    for what, values in figures.items():
        problems += agreement_problems(what, values)
    return problems


def summary_rows(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """One row per step: name, exit status (and the expected one), seconds, traceback seen."""
    return [{"step": s.name, "command": s.command.strip(), "rc": s.rc, "expected_rc": s.expect_rc,
             "seconds": round(s.seconds, 1), "traceback": "Traceback" in s.output} for s in steps]


def markdown_report(rows: Sequence[Mapping[str, Any]], figures: Mapping[str, Any], problems: Sequence[str],
                    prov: Mapping[str, Any]) -> str:
    """The summary table, the figures each command reported and the verdict, as Markdown."""
    lines = ["# A new user's first hour (bench/first_hour.py)", "",
             "| step | exit (expected) | seconds | traceback |", "|---|---:|---:|---|"]
    lines += [f"| {r['step']} | {r['rc']} ({r['expected_rc']}) | {r['seconds']} | {'yes' if r['traceback'] else 'no'} |"
              for r in rows]
    lines += ["", "| figure | as reported by each command |", "|---|---|"]
    lines += [f"| {what} | " + ", ".join(f"{k}: {v}" for k, v in values.items()) + " |"
              for what, values in figures.items()]
    verdict = "no problems found" if not problems else "problems: " + "; ".join(problems)
    return "\n".join(lines + ["", f"Verdict: {verdict}.", "", provenance_markdown(prov)])


def venv_versions(clone: Path) -> dict[str, Any]:
    """The library versions installed in the clone's venv (the provenance records the script's own)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    names = [*DEFAULT_LIBRARIES, "onnx", "onnxruntime", "onnxscript"]
    try:
        proc = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", code, *names], capture_output=True,
                              text=True)
    except OSError as exc:
        return {"error": str(exc)}
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}


def user_environment(user: Path) -> dict[str, str]:
    """The environment of the session: this one, with PYTHONPATH only the user's folder (as the
    README says: the folder of mynets), so that nothing of the caller's checkout leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(user)
    return env


def prepare(tmp: Path, readme_text: str) -> tuple[dict[str, Path], dict[str, int]]:
    """Clone the repository, write the user's folder (images, mynets.py, mine.yaml); return the
    folders and the image counts."""
    clone, user = tmp / "clone", tmp / "user"
    proc = subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FirstHourError(f"git clone failed: {proc.stderr.strip().splitlines()[-1:]}")
    readme = (clone / "README.md").read_text()
    if readme != readme_text:
        raise FirstHourError("the clone's README.md differs from the working tree's: commit first")
    counts = make_imagefolder(user / "data")
    (user / "mynets.py").write_text(MYNETS_SOURCE)
    (user / "mine.yaml").write_text(with_data_root(readme_block(readme, "own-model-config"), str(user / "data")))
    return {"clone": clone, "user": user}, counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-tests", action="store_true", help="also run the README's test command (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    add_provenance_options(parser)  # --allow-dirty (the clone holds only the committed files either way)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the session, print the summary, write the result files; exit 1 on any problem."""
    args = parse_args(argv)
    checked_revision(args.allow_dirty)  # refuse a dirty tree before cloning it
    tmp = Path(tempfile.mkdtemp(prefix="polarprune-first-hour-"))
    folders, counts = prepare(tmp, (REPO_ROOT / "README.md").read_text())
    # Provenance now, when the clone is taken (the tree may change during the long run).
    prov = provenance(0, data=data_sizes(counts["train"], counts["val"], f"generated {IMAGE_SIZE}x{IMAGE_SIZE} "
                                         f"ImageFolder, {CLASSES} classes"), allow_dirty=args.allow_dirty)
    print(f"work folder: {tmp}", flush=True)
    steps = session_steps(folders["clone"].joinpath("README.md").read_text(), folders["clone"],
                          folders["user"] / "data", args.with_tests)
    run_session(steps, folders, user_environment(folders["user"]))
    readme_demo = json.loads((folders["clone"] / "bench" / "results" / "demo_polarization.json").read_text())
    problems = session_problems(steps, readme_demo)
    try:
        figures = session_figures({s.name: s.result for s in steps if s.result is not None}, readme_demo)
    except (KeyError, TypeError):
        figures = {}
    prov["load"]["end"] = [round(v, 2) for v in os.getloadavg()]
    rows = summary_rows(steps)
    report = markdown_report(rows, figures, problems, prov)
    write_results(STEM, {"provenance": prov, "steps": rows, "figures": figures, "problems": problems,
                         "ok": not problems, "with_tests": args.with_tests,
                         "protocol": {"train_overrides": list(TRAIN_OVERRIDES), "prune": list(PRUNE_STRATEGY)},
                         "venv_versions": venv_versions(folders["clone"])}, report)
    print(report)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FirstHourError as exc:
        print(f"first_hour: error: {exc}", file=sys.stderr)
        sys.exit(1)
