"""``polarprune recipes``: the built-in recipes, one line each."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the built-in recipes",
                       description="List the recipes shipped with polarprune (use them by name with `polarprune run`).")
    p.add_argument("--show", metavar="NAME", help="print one recipe's YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import read_yaml
    from ..workflows.recipe import builtin_recipes, resolve_recipe_path

    if args.show:
        print(resolve_recipe_path(args.show).read_text(), end="")
        return 0
    recipes = builtin_recipes()
    width = max(len(n) for n in recipes)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {read_yaml(path).get('description', '')}")
    return 0
