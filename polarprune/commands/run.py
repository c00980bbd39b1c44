"""``polarprune run RECIPE [key=value ...] --out DIR``: a whole experiment, stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_arguments, command_parser

HELP = """Run the stages of a recipe (baseline -> sparsity -> [mask -> mask_sparsity] -> prune ->
finetune/scratch). RECIPE is a built-in recipe name (see `polarprune recipes`) or a YAML file.
Overrides apply to the recipe, e.g. stages.sparsity.train.epochs=10 data.root=/data/cifar;
a base-section override (model.*, data.*, train.*, sparsity.*) is also set in every stage that
section reaches, so sparsity.lbd=0.003 changes the sparsity stage's lambda, and each stage
validates it before anything runs.
Each stage writes its own folder under --out; running the same command again skips complete
stages and resumes an interrupted one. The summary (table, summary.json, summary.md, PNG plots)
is written when the run ends. Under torchrun every training stage runs with DDP."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "run", "run a recipe's pipeline of stages", HELP, run, raw=True)
    add_config_arguments(p, "recipe", "built-in recipe name or YAML file", "run folder (default: runs/<recipe name>)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run_recipe(recipe_name: str, overrides: list[str], out: str | None, plots: bool = True) -> int:
    """Load, run and summarise a recipe (shared by ``run`` and ``demo``)."""
    from .. import distributed as dist
    from ..workflows import Pipeline, load_recipe, summarize
    from ..report import format_table

    recipe = load_recipe(recipe_name, overrides)
    run_dir = Path(out) if out else Path("runs") / recipe.name
    pipeline = Pipeline(recipe, run_dir)
    with dist.clear_collective_errors(f"running {run_dir}"):  # a peer died: one line, not a gloo traceback
        pipeline.run()
    if dist.is_main():
        summary = summarize(pipeline.context, plots=plots)
        print(format_table(summary))
        red = summary["reductions"]
        if red and red["reference_stage"] != red["final_stage"]:
            change = red.get("top1_change")
            print(f"\n{red['final_stage']} vs {red['reference_stage']}: MACs -{100 * red['macs_reduction']:.1f}%, "
                  f"params -{100 * red['params_reduction']:.1f}%"
                  + (f", top-1 {change:+.2f} points" if change is not None else ""))
        print(f"summary: {run_dir / 'summary.md'} and {run_dir / 'summary.json'}")
    dist.barrier()
    dist.destroy()
    return 0


def run(args: argparse.Namespace) -> int:
    return run_recipe(args.recipe, list(args.overrides), args.out, plots=not args.no_plots)
