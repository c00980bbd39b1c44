"""torchrun / DistributedDataParallel plumbing: process group set-up and rank-0 helpers.

Under ``torchrun`` the environment holds RANK, LOCAL_RANK and WORLD_SIZE; without it every
function here degrades to the single-process case.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (or without distribution): the only rank that writes files and logs."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device_type: str) -> bool:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU).

    The collective timeout (``POLARPRUNE_DIST_TIMEOUT`` seconds, default 300) bounds how long
    the surviving ranks wait when one dies. Returns True when running distributed.
    """
    if env_world_size() <= 1 or is_initialized():
        return is_initialized()
    timeout = datetime.timedelta(seconds=float(os.environ.get("POLARPRUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timeout)
    return True


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity without distribution)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (decisions made once, e.g. pruning masks)."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
