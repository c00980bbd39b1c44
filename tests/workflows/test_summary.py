"""``workflows.summary``: the run summary lists the prune reports' warnings (a pruned model slower than its
source in the runtime that chose its widths), each naming its stage."""

from __future__ import annotations

import json
from types import SimpleNamespace

from polarprune.workflows.summary import prune_warnings


def test_prune_warnings_name_their_stage(tmp_path) -> None:
    slower = "warning: the pruned model is not faster than the unpruned one in eager (batch 1, 1 thread): measured 1.10x its latency"
    for stage, notes in {"prune": ["measured latency in eager", slower], "finetune": None, "prune2": ["a note"]}.items():
        (tmp_path / stage).mkdir()
        if notes is not None:
            (tmp_path / stage / "report.json").write_text(json.dumps({"notes": notes}))
    run = SimpleNamespace(run_dir=tmp_path, records={"sparsity": None, "prune": None, "finetune": None, "prune2": None})
    assert prune_warnings(run) == [f"prune: {slower}"]
