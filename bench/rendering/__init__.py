"""Fill the measured numbers of the documents from the committed result files.

Nobody types a measured number by hand: BENCHMARKS.md, README.md and docs/*.md mark every
table and every figure taken from ``bench/results/*.json`` and ``python bench/render.py``
writes them. The sentences around the numbers are Markdown; a family renderer returns only a
number computed from a file (a sum, a noise figure), a table of numbers, a verdict computed
from numbers (``within noise``, ``keeps``) or a list whose items depend on the data (the
pairs beyond noise, the share of small gammas per method).

Markers (HTML comments, invisible in rendered Markdown)::

    <!-- render: NAME ARG ... -->
    ...block content, written by the renderer...
    <!-- /render -->

or inline, inside a sentence: ``cut by <!-- render: value pruned_latency models[model=resnet56,round_to=16]/acceptance/nchw/latency_cut .1% -->37.9%<!-- /render -->``.
A marker followed by a line break is a block (its content sits on the lines in between); one
followed by text is inline. ``NAME`` is a registered renderer; the words after it are passed
to it as string arguments.

Generic inline renderers (no code needed for a number that is in a file):

- ``value STEM PATH [FORMAT]``: one value of ``bench/results/STEM.json``;
- ``range STEM PATH [FORMAT]``: ``min-max`` of the values a wildcard path selects;
- ``max STEM PATH [FORMAT]``: the largest of them;
- ``scaled STEM PATH FACTOR [FORMAT]``: one value times ``FACTOR`` (``1e-6`` for millions, ``1000`` for s -> ms).

``PATH`` is ``/``-separated keys (keys may contain dots); a list step is ``[3]`` (index),
``[*]`` (every element) or ``[key=value,key2=v1|v2]`` (the elements whose fields match; one
element for ``value``); ``*`` as a dict key takes every value. ``FORMAT`` is a Python format
spec (``.1%`` -> ``53.6%``, ``.2f``, ``,d``, ``+.1f``); default ``g``.

Layout: ``engine`` (markers, paths, formats, tables, ``--check``), ``stats`` (noise and the
paired test) and one module per result family (``provenance``, ``methods``, ``full``,
``latency``, ``latency_target``, ``training``, ``demo``, ``first_hour``).

**Adding a result file** (e.g. ``bench/results/deploy_latency.json``): in the family's module
(or a new one imported below) write ``@renderer("deploy-latency") def deploy_latency_table(results: Results) -> str``
that calls ``results.load("deploy_latency")`` and returns Markdown (``table(headers, rows)``
builds a table), put an empty ``<!-- render: deploy-latency -->`` / ``<!-- /render -->`` pair
where the table goes and run ``python bench/render.py``. ``tests/benchmarks/test_claims.py`` then keeps
the document and the file in step.

Only the standard library and ``polarprune.fileio`` are used, so rendering takes well under a
second.
"""

from __future__ import annotations

from . import demo, detectors, first_hour, full, latency, latency_accuracy, latency_target, methods, provenance, training, yolo  # noqa: F401  (each registers its renderers)
from .engine import (  # noqa: F401  (the engine's API)
    MARKER,
    RENDERERS,
    REPO_ROOT,
    Block,
    Outcome,
    RenderError,
    Results,
    cited_files,
    document_paths,
    fmt,
    lookup,
    main,
    render_documents,
    render_spec,
    render_text,
    renderer,
    span,
    table,
)
