"""Suite-wide settings for parallel runs (``pytest -n 2 --maxschedchunk 2``, the README's test command).

- Each xdist worker computes with one torch thread: two workers of two threads each on a
  two-core machine fight over the cores and every test gets slower.
- The longest tests run first, so that the two workers share them instead of one worker
  finishing them alone after the other has run out of work (``--maxschedchunk 2``: xdist would
  otherwise hand each worker a quarter of its share at once, all the long tests to the first).
- ``round_to`` defaults to 1 in this process (``pruning.options.DEFAULT_ROUND_TO``), not to
  ``auto``: the unit tests assert exact channel counts, and ``auto`` would profile the real
  runtime in every prune (slow, and the widths would depend on the machine). ``auto`` is tested
  with a fake runtime whose costs are known exactly (tests/deploy/test_round_auto.py, which sets
  the default back). Tests that run polarprune in a subprocess pass ``round_to=1`` where they
  assert exact counts.
"""

from __future__ import annotations

import os

import pytest
import torch

# Longest first (minutes each on a 2-core machine); every other file follows in its usual order.
LONGEST_FIRST = ("test_world_size.py", "test_integration_cifar.py", "test_pipeline.py", "test_progressive.py",
                 "test_distributed.py", "test_export.py", "test_engine.py")


def pytest_configure(config: pytest.Config) -> None:
    from polarprune.pruning import options

    options.DEFAULT_ROUND_TO = 1  # see the module's docstring
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses tests start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    for item in items:
        if "e2e" in item.path.parent.parts:  # the layout says what is end to end: tests/e2e/
            item.add_marker(pytest.mark.e2e)
    items.sort(key=rank)  # stable: the order inside each file is kept
