"""Recovering accuracy after pruning, on the shared CIFAR-10 JPEG archive (ResNet-20, CPU):

- fine-tuning the pruned model with knowledge distillation (the sparsity-trained unpruned model as
  teacher) against without, from the same pruned model, the same epochs;
- progressive pruning (``steps`` rounds of prune + fine-tune) against one-shot pruning + fine-tune
  at the same MACs target (``flops-target``) and the same total fine-tuning epochs.

One polarization sparsity stage is trained once and shared by every arm (each arm's run folder
links to it), so the arms differ only in what comes after it. Every arm is a recipe run by the
pipeline (``polarprune run``'s code); the recipes are written next to the runs. Results:
bench/results/recovery.{json,md}. Rerunning resumes the runs (``--fresh`` starts over).

    .venv/bin/python bench/bench_recovery.py [--train-subset 4000] [--eval-subset 1000]
        [--sparsity-epochs 15] [--finetune-epochs 9] [--steps 3] [--reduction 0.5] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, checked_revision, configured_sizes, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.workflows import Pipeline, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
RESULT_STEM = "recovery"
DISTILL = {"teacher": "sparsity", "temperature": 4.0, "alpha": 0.9}


def base_recipe(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The part every arm shares: data, model, the sparsity stage."""
    return {
        "name": name,
        "seed": 0,
        "deterministic": True,
        "device": "cpu",
        "model": {"name": "resnet20", "bn_init": 0.5},
        "data": {"name": "imagefolder", "root": str(args.archive), "batch_size": 128,
                 "train_subset": args.train_subset, "eval_subset": args.eval_subset},
        "train": {"momentum": 0.9, "weight_decay": 5.0e-4, "channels_last": True},
        "stages": {
            "sparsity": {
                "train": {"epochs": args.sparsity_epochs, "lr": 0.1, "schedule": {"type": "cosine"}},
                "sparsity": {"regularizer": "polarization", "lbd": 1.0e-2, "t": 1.4, "clamp": 1.0},
            },
        },
    }


def arms(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Arm name -> recipe. All fine-tunings: lr 0.01 cosine, the same total epochs."""
    finetune = {"train": {"epochs": args.finetune_epochs, "lr": 0.01, "schedule": {"type": "cosine"}}}
    prune = {"strategy": "flops-target", "target_macs_reduction": args.reduction}
    per_round = args.finetune_epochs // args.steps
    progressive = {"steps": args.steps, "target_macs_reduction": args.reduction, "strategy": "flops-target",
                   "train": {"epochs": per_round, "lr": 0.01, "schedule": {"type": "cosine"}}}
    recipes = {}
    for arm, stages in {
        "one-shot": {"prune": prune, "finetune": finetune},
        "one-shot+distill": {"prune": prune, "finetune": {**finetune, "distill": DISTILL}},
        "progressive": {"progressive": progressive},
        "progressive+distill": {"progressive": {**progressive, "distill": DISTILL}},
    }.items():
        recipe = base_recipe(args, f"recovery-{arm.replace('+', '-')}")
        recipe["stages"].update(stages)
        recipes[arm] = recipe
    return recipes


def run_arm(arm: str, recipe: dict[str, Any], out: Path, shared_sparsity: Path | None) -> dict[str, Any]:
    """Run one arm's recipe in ``out/<arm>`` (its sparsity stage linked to the shared one)."""
    run_dir = out / arm.replace("+", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir / "bench-recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if shared_sparsity is not None and not (run_dir / "sparsity").exists():
        (run_dir / "sparsity").symlink_to(shared_sparsity, target_is_directory=True)
    start = time.perf_counter()
    records = Pipeline(load_recipe(str(recipe_path)), run_dir).run()
    seconds = time.perf_counter() - start
    last = records["finetune"].data if "finetune" in records else records["progressive"].data
    pruned = records["prune"].data if "prune" in records else last
    row = {
        "arm": arm,
        "top1": last["top1"],
        "macs_before": pruned["macs_before"],
        "macs_after": pruned["macs_after"],
        "macs_reduction": 1.0 - pruned["macs_after"] / pruned["macs_before"],
        "finetune_epochs": last.get("epochs"),
        "seconds": seconds,
    }
    if "prune" in records:
        row["top1_after_prune"] = pruned["top1"]
    else:
        row["rounds"] = [{k: r[k] for k in ("step", "macs_after", "top1_after_prune", "top1")} for r in last["steps"]]
    return row


def markdown(rows: list[dict[str, Any]], sparsity: dict[str, Any], args: argparse.Namespace, prov: dict[str, Any]) -> str:
    lines = [
        "# Recovery after pruning: distillation and progressive pruning (ResNet-20, CIFAR-10 JPEG subset, CPU)",
        "",
        f"Training subset {args.train_subset} images, evaluation subset {args.eval_subset} (fixed stratified "
        f"subsets of the shared archive), seed 0, deterministic. Shared sparsity stage: polarization, "
        f"{args.sparsity_epochs} epochs, top-1 {sparsity['top1']:.2f}%. Every arm removes "
        f"{100 * args.reduction:.0f}% of the MACs (`flops-target`) and fine-tunes {args.finetune_epochs} epochs in "
        f"total at lr 0.01 (cosine); progressive: {args.steps} rounds of {args.finetune_epochs // args.steps} epochs. "
        f"Distillation: teacher = the sparsity stage's model, T = {DISTILL['temperature']}, alpha = {DISTILL['alpha']}.",
        "",
        "| arm | top-1 % | MACs after | MACs reduction | fine-tune epochs | top-1 right after pruning | time s (first arm: with the shared sparsity stage) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        after = (f"{row['top1_after_prune']:.2f}" if "top1_after_prune" in row
                 else " / ".join(f"{r['top1_after_prune']:.2f}" for r in row["rounds"]) + " (per round)")
        lines.append(
            f"| {row['arm']} | {row['top1']:.2f} | {row['macs_after']:,.0f} | {100 * row['macs_reduction']:.1f}% | "
            f"{row['finetune_epochs']} | {after} | {row['seconds']:.0f} |"
        )
    lines += ["", f"One evaluation image is {100 / args.eval_subset:.1f} points of top-1; this CPU-sized run "
              "compares the arms on equal terms, it does not measure what the methods reach on full CIFAR-10.",
              "", provenance_markdown(prov), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/polarprune-bench/recovery"))
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--eval-subset", type=int, default=1000)
    parser.add_argument("--sparsity-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reduction", type=float, default=0.5)
    parser.add_argument("--arms", nargs="*", default=None, help="run only these arms")
    parser.add_argument("--fresh", action="store_true", help="delete the run folders first (else they resume)")
    add_provenance_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.archive.is_file():
        raise SystemExit(f"CIFAR-10 archive not found: {args.archive}")
    if args.finetune_epochs % args.steps:
        raise SystemExit("--finetune-epochs must be a multiple of --steps (equal total epochs)")
    checked_revision(args.allow_dirty)  # before the run, not after it
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    recipes = arms(args)
    chosen = args.arms or list(recipes)
    rows: list[dict[str, Any]] = []
    shared: Path | None = None
    for arm in chosen:
        rows.append(run_arm(arm, recipes[arm], args.out, shared))
        shared = shared or (args.out / arm.replace("+", "-") / "sparsity").resolve()
        print(json.dumps(rows[-1]), flush=True)
    sparsity = json.loads((shared / "done.json").read_text())  # type: ignore[operator]
    prov = provenance(0, data=configured_sizes(base_recipe(args, "data")["data"]), allow_dirty=args.allow_dirty)
    result = {"provenance": prov, "settings": vars(args) | {"archive": str(args.archive), "out": str(args.out)},
              "sparsity": {"top1": sparsity["top1"], "epochs": sparsity["epochs"]}, "arms": rows}
    text = markdown(rows, sparsity, args, prov)
    write_results(RESULT_STEM, json.loads(json.dumps(result, default=str)), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
