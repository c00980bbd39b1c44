"""``polarprune recipes``: the built-in recipes, one line each."""

from __future__ import annotations

import argparse

from .common import command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "recipes", "list the built-in recipes",
                       "List the recipes shipped with polarprune (use them by name with `polarprune run`).", run,
                       trust_code=False)
    p.add_argument("--show", metavar="NAME", help="print one recipe's YAML")


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
