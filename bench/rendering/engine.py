"""The rendering engine: markers, result-file paths, number formats, tables and ``--check``.

A family module registers each of its renderers with ``@renderer("NAME")``; this module knows
none of them. See ``bench/rendering/__init__.py`` for the marker syntax.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from polarprune.fileio import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


DOCUMENTS = ("BENCHMARKS.md", "README.md", "docs/*.md")


MARKER = re.compile(r"<!-- render: (?P<spec>[^>]*?) -->(?P<body>.*?)<!-- /render -->", re.DOTALL)


CITED_PATH = re.compile(r"bench/results/[A-Za-z0-9_.{},-]+")


CITED_SUFFIXES = (".json", ".md", ".png")


class RenderError(Exception):
    """A document or a result file does not allow rendering (missing file, unknown block, bad path)."""


@dataclass
class Results:
    """The result files of one folder, loaded on demand; remembers which were used."""

    folder: Path = RESULTS_DIR
    used: set[str] = field(default_factory=set)
    _cache: dict[str, Any] = field(default_factory=dict)

    def load(self, stem: str) -> Any:
        """The parsed ``<folder>/<stem>.json``; RenderError if it is missing or not JSON."""
        self.used.add(stem)
        if stem not in self._cache:
            path = self.folder / f"{stem}.json"
            if not path.is_file():
                raise RenderError(f"result file {path} is missing")
            try:
                self._cache[stem] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise RenderError(f"result file {path} is not valid JSON: {exc}") from exc
        return self._cache[stem]


Renderer = Callable[..., str]

RENDERERS: dict[str, Renderer] = {}


def renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Register a function as the renderer of the ``<!-- render: NAME ... -->`` blocks."""
    def register(func: Renderer) -> Renderer:
        if name in RENDERERS:
            raise RenderError(f"renderer {name!r} registered twice ({RENDERERS[name].__module__}, {func.__module__})")
        RENDERERS[name] = func
        return func
    return register


def fmt(value: Any, spec: str = "g") -> str:
    """``format(value, spec)``; RenderError for a value that is not a number (or, with spec ``s``, a string)."""
    if spec == "s" and isinstance(value, str):
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RenderError(f"expected a number, got {value!r}")
    return format(value, spec)


def span(values: Iterable[float], spec: str = "g", sep: str = "-") -> str:
    """``min-max`` of ``values`` (one value if they are all equal); ``14.9-23.4%`` for percents."""
    values = list(values)
    if not values:
        raise RenderError("empty range")
    low, high = fmt(min(values), spec), fmt(max(values), spec)
    if low == high:
        return low
    if low.endswith("%") and high.endswith("%"):
        low = low[:-1]
    return f"{low}{sep}{high}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column (``l`` or ``r``)."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_STEP = re.compile(r"^(?P<key>[^\[]*)(?P<selectors>(?:\[[^\]]*\])*)$")


def _select(items: list[Any], selector: str, path: str) -> list[Any]:
    if selector == "*":
        return list(items)
    if re.fullmatch(r"-?\d+", selector):
        try:
            return [items[int(selector)]]
        except IndexError as exc:
            raise RenderError(f"{path}: index {selector} out of range ({len(items)} items)") from exc
    conditions = []
    for part in selector.split(","):
        key, _, wanted = part.partition("=")
        conditions.append((key, wanted.split("|")))
    return [item for item in items if isinstance(item, dict)
            and all(str(item.get(key)) in wanted for key, wanted in conditions)]


def lookup(data: Any, path: str) -> list[Any]:
    """Every value ``path`` selects in ``data`` (see the module docstring); RenderError if none."""
    current = [data]
    for step in path.split("/"):
        match = _STEP.match(step)
        if match is None:
            raise RenderError(f"bad path step {step!r} in {path!r}")
        key, selectors = match["key"], re.findall(r"\[([^\]]*)\]", match["selectors"])
        nxt: list[Any] = []
        for node in current:
            if key == "*" and isinstance(node, dict):
                nxt.extend(node.values())
            elif key:
                if not isinstance(node, dict) or key not in node:
                    raise RenderError(f"{path!r}: no key {key!r}")
                nxt.append(node[key])
            else:
                nxt.append(node)
        for selector in selectors:
            selected: list[Any] = []
            for node in nxt:
                if not isinstance(node, list):
                    raise RenderError(f"{path!r}: [{selector}] applied to a non-list")
                selected.extend(_select(node, selector, path))
            nxt = selected
        current = nxt
    if not current:
        raise RenderError(f"{path!r} selects nothing")
    return current


@renderer("value")
def value(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """One value of a result file, formatted."""
    found = lookup(results.load(stem), path)
    if len(found) != 1:
        raise RenderError(f"{stem}:{path} selects {len(found)} values, expected one")
    return fmt(found[0], spec)


@renderer("range")
def value_range(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """``min-max`` of the values a wildcard path selects."""
    return span(lookup(results.load(stem), path), spec)


@renderer("max")
def value_max(results: Results, stem: str, path: str, spec: str = "g") -> str:
    """The largest of the values a wildcard path selects."""
    return fmt(max(lookup(results.load(stem), path)), spec)


@renderer("scaled")
def value_scaled(results: Results, stem: str, path: str, factor: str, spec: str = "g") -> str:
    """One value of a result file times ``factor`` (``1e-6`` for millions, ``1000`` for seconds to ms), formatted."""
    found = lookup(results.load(stem), path)
    if len(found) != 1:
        raise RenderError(f"{stem}:{path} selects {len(found)} values, expected one")
    if not isinstance(found[0], (int, float)) or isinstance(found[0], bool):
        raise RenderError(f"expected a number, got {found[0]!r}")
    return fmt(found[0] * float(factor), spec)


@dataclass
class Block:
    """One marked block of a document and what rendering gives for it."""

    document: str
    spec: str
    current: str
    rendered: str


def render_spec(spec: str, results: Results) -> str:
    """The text of one block: ``RENDERERS[name](results, *args)``."""
    name, *args = spec.split()
    if name not in RENDERERS:
        raise RenderError(f"unknown block {name!r} (known: {', '.join(sorted(RENDERERS))})")
    try:
        return RENDERERS[name](results, *args)
    except RenderError as exc:
        raise RenderError(f"block '{spec}': {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError, StopIteration) as exc:
        raise RenderError(f"block '{spec}': {type(exc).__name__}: {exc}") from exc


def render_text(text: str, results: Results, document: str = "<text>") -> tuple[str, list[Block]]:
    """``text`` with every marked block filled in, and the blocks."""
    if text.count("<!-- render:") != text.count("<!-- /render -->"):
        raise RenderError(f"{document}: unbalanced render markers")
    blocks: list[Block] = []

    def fill(match: re.Match[str]) -> str:
        spec, body = match["spec"].strip(), match["body"]
        rendered = render_spec(spec, results)
        if body.startswith("\n"):
            rendered = "\n" + rendered.strip("\n") + "\n"
        blocks.append(Block(document, spec, body, rendered))
        return f"<!-- render: {spec} -->{rendered}<!-- /render -->"

    return MARKER.sub(fill, text), blocks


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [p for option in match.group(1).split(",")
            for p in _expand_braces(path[:match.start()] + option + path[match.end():])]


def cited_files(text: str) -> list[str]:
    """Every ``bench/results/...`` file a text names (brace lists such as ``a{1,2}.json`` expanded)."""
    paths = [p.rstrip(".,") for cited in CITED_PATH.findall(text) for p in _expand_braces(cited)]
    return [p for p in paths if p.endswith(CITED_SUFFIXES)]


def document_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The documents that carry rendered blocks or cite result files."""
    paths: list[Path] = []
    for pattern in DOCUMENTS:
        paths.extend(sorted(root.glob(pattern)))
    return paths


@dataclass
class Outcome:
    """What rendering a set of documents gives: new texts, differing blocks, missing cited files."""

    texts: dict[Path, str]
    differing: list[Block]
    missing: list[str]


def render_documents(root: Path = REPO_ROOT, results_dir: Path | None = None) -> Outcome:
    """Render every document under ``root`` from ``results_dir`` (default ``root/bench/results``)."""
    results = Results(results_dir or root / "bench" / "results")
    texts: dict[Path, str] = {}
    differing: list[Block] = []
    missing: list[str] = []
    for path in document_paths(root):
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(root))
        new_text, blocks = render_text(text, results, rel)
        texts[path] = new_text
        differing += [b for b in blocks if b.current != b.rendered]
        for cited in cited_files(text):
            if not (results.folder / Path(cited).name).is_file():
                missing.append(f"{rel}: {cited}")
    return Outcome(texts, differing, missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fill the measured numbers of the documents from the committed result files.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs or a cited file is missing")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--results", type=Path, help="result folder (default ROOT/bench/results)")
    args = parser.parse_args(argv)
    try:
        outcome = render_documents(args.root, args.results)
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    for cited in outcome.missing:
        print(f"missing result file cited by {cited}", file=sys.stderr)
    if args.check:
        for block in outcome.differing:
            print(f"{block.document}: block '{block.spec}' differs from its result file", file=sys.stderr)
        return 1 if outcome.differing or outcome.missing else 0
    for path, text in outcome.texts.items():
        if text != path.read_text(encoding="utf-8"):
            atomic_write_text(path, text)
            print(f"rendered {path.relative_to(args.root)}")
    return 1 if outcome.missing else 0

