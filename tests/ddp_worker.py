"""Test helper: run several training configs in one process group and check the ranks agree.

Usage (from tests/e2e/test_distributed.py)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py PLAN.json
    python tests/ddp_worker.py PLAN.json          # the single-process reference

``PLAN.json`` holds ``{"runs": [TrainConfig dicts], "summary": path}``. Every run trains with
``polarprune.workflows.train.run_training`` (one torchrun launch serves many configs, which
keeps the tests fast). After each run every rank contributes its final model state and rank 0
writes, per run, whether all ranks hold bit-identical weights, to the summary JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from polarprune import distributed as dist
from polarprune.config import TrainConfig, validate
from polarprune.workflows.train import run_training


def ranks_identical(model: torch.nn.Module) -> bool:
    """Whether every rank's state dict equals rank 0's, bit for bit."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not dist.is_initialized():
        return True
    gathered: list = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, state)
    return all(all(torch.equal(other[k], state_0) for k, state_0 in gathered[0].items()) for other in gathered)


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    summary = {}
    for raw in plan["runs"]:
        cfg = validate(TrainConfig, raw, source="ddp_worker plan")
        result = run_training(cfg, resume=False)
        summary[cfg.out] = {
            "ranks_identical": ranks_identical(result.model),
            "world_size": dist.world_size(),
            "final_top1": result.final_top1,
        }
    if dist.is_main():
        tmp = Path(plan["summary"] + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, plan["summary"])
    dist.barrier()  # as the CLI does: no rank tears down the group while another still uses it
    dist.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
