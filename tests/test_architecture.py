"""The package's imports flow one way: no cycle between polarprune's top-level modules and
subpackages, counting every import (also inside functions, relative or absolute).

The package's lazy ``__init__``, ``__main__``, the CLI and the commands sit on top: they may
import anything, and nothing else may import them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "polarprune"
ON_TOP = {"polarprune", "polarprune.__main__", "polarprune.cli", "polarprune.commands"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of polarprune (not an attribute)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every polarprune module ``path`` imports, with the line: absolute and relative imports,
    at any depth (functions, ``if TYPE_CHECKING`` blocks)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names if is_module(f"{module}.{alias.name}")]
    return [(m, line) for m, line in found if m == "polarprune" or m.startswith("polarprune.")]


def unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the import sites (``file:line``), for every unit below the top."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit(module_name(path))
        if source in ON_TOP:
            continue
        edges = graph.setdefault(source, {})
        for module, line in imported_modules(path):
            target = unit(module)
            if target != source and target != "polarprune":  # the root's lazy table is not an import
                edges.setdefault(target, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    edges = [f"  {a} -> {b} ({', '.join(graph[a][b][:3])})" for a in component for b in component if b in graph.get(a, {})]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


def test_the_import_graph_is_read_correctly():
    """The parser sees relative, absolute and function-level imports (else the next test proves nothing)."""
    graph = import_graph()
    assert "polarprune.config" in graph["polarprune.data"]  # relative, at module level
    assert "polarprune.training" in graph["polarprune.workflows"]
    assert {"polarprune.errors", "polarprune.fileio"} <= set(graph["polarprune.data"])
    assert not graph["polarprune.errors"]  # the ground floor imports nothing of polarprune
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_top_level_modules_and_subpackages():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def test_nothing_below_imports_the_cli_or_the_commands():
    graph = import_graph()
    upward = {source: sorted(set(edges) & ON_TOP) for source, edges in graph.items() if set(edges) & ON_TOP}
    assert not upward, upward


def test_only_the_top_imports_the_integrations():
    """``integrations`` (trainers of other projects) sits beside the composition root: it may use every layer
    below, and nothing below it, workflows included, imports it."""
    graph = import_graph()
    assert "polarprune.workflows" in graph["polarprune.integrations"]  # the graph sees the package (the lightning callback)
    users = sorted(source for source, edges in graph.items() if "polarprune.integrations" in edges and source != "polarprune.integrations")
    assert not users, users
