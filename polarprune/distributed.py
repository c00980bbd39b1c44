"""torchrun / DDP plumbing: process group set-up, rank-0 helpers, synchronised batch norm that also
works on CPU (gloo), and one-line errors when a peer fails. Without torchrun everything degrades to
one process. torch's ``nn.SyncBatchNorm`` refuses CPU tensors, hence ``CPUSyncBatchNorm``; see
docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import PolarpruneError, first_line

DEFAULT_TIMEOUT_S = 300
TIMEOUT_ENV = "POLARPRUNE_DIST_TIMEOUT"

ReduceSum = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- ranks


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK set by torchrun, readable before the process group exists (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


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


def collective_timeout_s() -> float:
    """Seconds a collective may wait for a silent peer (``POLARPRUNE_DIST_TIMEOUT``, default 300)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        raise PolarpruneError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise PolarpruneError(f"{TIMEOUT_ENV}={raw!r}: must be positive")
    return value


def init_from_env(device_type: str) -> bool:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU); True when
    distributed. The collective timeout bounds how long the other ranks wait for a hung one."""
    if env_world_size() <= 1 or is_initialized():
        return is_initialized()
    timeout = datetime.timedelta(seconds=collective_timeout_s())
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    with clear_collective_errors("joining the process group"):
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


# ----------------------------------------------------------------------------- failures


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says a collective failed: a peer died, closed its socket or timed out."""
    if isinstance(exc, PolarpruneError):
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    if not isinstance(exc, RuntimeError) or not is_initialized():
        return False
    text = str(exc).lower()  # gloo raises plain RuntimeErrors; these are the words it uses
    markers = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout",
               "pair closure", "processgroupgloo", "processgroupnccl", "gloo/transport", "nccl error")
    return any(marker in text for marker in markers)


def collective_failure_message(exc: BaseException, during: str) -> str:
    """One line for a failed collective: which rank noticed it, what it was doing, and why."""
    detail = first_line(exc)
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return (
        f"distributed run failed on rank {env_rank()} while {during}: another process exited, was "
        f"killed or stopped answering (collective timeout {collective_timeout_s():g} s, "
        f"{TIMEOUT_ENV}); the rank that failed first is named by torchrun or in its own output ({detail})"
    )


@contextlib.contextmanager
def clear_collective_errors(during: str) -> Iterator[None]:
    """Turn a failed collective inside the body into a one-line ``PolarpruneError`` (not a gloo/NCCL traceback)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a collective failure
        if not is_collective_failure(exc):
            raise
        raise PolarpruneError(collective_failure_message(exc, during)) from exc


# ----------------------------------------------------------------------------- synchronised batch norm


def reduction_dims(x: Tensor) -> list[int]:
    """The dimensions BN statistics are taken over: all but the channel dimension 1."""
    return [0, *range(2, x.dim())]


def global_batch_stats(x: Tensor, reduce_sum: ReduceSum) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, biased variance, count)`` per channel over every rank's inputs, in float32 or wider.

    Two passes (sums, then squared deviations from the global mean) summed by ``reduce_sum``; with a
    differentiable all-reduce the gradients are those of one process holding the whole batch.
    """
    dims = reduction_dims(x)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    local_count = torch.full((1,), x.numel() // max(x.shape[1], 1), dtype=work.dtype, device=x.device)
    sums = reduce_sum(torch.cat([work.sum(dims), local_count]))
    count = sums[-1]
    mean = sums[:-1] / count
    shape = [1, -1] + [1] * (x.dim() - 2)
    squares = reduce_sum((work - mean.view(shape)).square().sum(dims))
    return mean, squares / count, count


def update_running_stats_(
    running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor, var: Tensor, count: Tensor, factor: float
) -> None:
    """torch's running-statistics update: the variance is stored unbiased (n / (n - 1))."""
    if running_mean is None or running_var is None:
        return
    with torch.no_grad():
        n = float(count.item())
        unbiased = var * (n / max(n - 1.0, 1.0))
        running_mean.mul_(1.0 - factor).add_(mean.detach().to(running_mean.dtype), alpha=factor)
        running_var.mul_(1.0 - factor).add_(unbiased.detach().to(running_var.dtype), alpha=factor)


def sync_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                    running_var: Tensor | None, momentum: float, eps: float, reduce_sum: ReduceSum) -> Tensor:
    """Training-mode batch norm over the union of every rank's batch (see ``global_batch_stats``)."""
    mean, var, count = global_batch_stats(x, reduce_sum)
    if float(count.item()) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    update_running_stats_(running_mean, running_var, mean, var, count, momentum)
    shape = [1, -1] + [1] * (x.dim() - 2)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(scale.dtype)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(scale.dtype)
    return (x.to(scale.dtype) * scale.view(shape) + shift.view(shape)).to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of every rank's output
    gradient (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def differentiable_all_reduce_sum(group: Any) -> ReduceSum:
    """All-reduce (sum) whose backward all-reduces the gradient."""
    return lambda t: _AllReduceSum.apply(t, group)


class CPUSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every rank, for CPU tensors (gloo), which torch's
    ``nn.SyncBatchNorm`` rejects; eval mode and single-process runs take the ordinary path."""

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 - torch's signature
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - torch's signature
        group = self.process_group or (dist.group.WORLD if is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] == 0:
            raise ValueError("CPUSyncBatchNorm: the input has no channels")
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        tracked = self.track_running_stats
        return sync_batch_norm(input, self.weight, self.bias, self.running_mean if tracked else None,
                               self.running_var if tracked else None, factor, self.eps, differentiable_all_reduce_sum(group))


def sync_twin(bn: _BatchNorm, device_type: str, process_group: Any = None) -> nn.Module:
    """A synchronised BN sharing ``bn``'s parameters, buffers and hooks (the same tensors and
    the same dicts), so updates through either module are seen by both: torch's
    ``nn.SyncBatchNorm`` for GPUs, ``CPUSyncBatchNorm`` for CPU tensors."""
    cls = nn.SyncBatchNorm if device_type != "cpu" else CPUSyncBatchNorm
    twin = cls.__new__(cls)
    twin.__dict__.update(bn.__dict__)
    twin.process_group = bn.__dict__.get("process_group") or process_group
    return twin


def sync_batchnorm_view(model: nn.Module, device_type: str, process_group: Any = None) -> nn.Module:
    """The module tree DDP trains when ``train.sync_bn`` is on: every BN a ``sync_twin``, every module on
    the path to one a shallow copy, everything else shared; ``model`` keeps its plain BNs. Modules keep
    their own ``training`` flag: call ``train()``/``eval()`` on the module you run.
    """
    if isinstance(model, _BatchNorm):
        return sync_twin(model, device_type, process_group)
    children = {name: sync_batchnorm_view(child, device_type, process_group) if child is not None else None
                for name, child in model._modules.items()}
    if all(children[name] is child for name, child in model._modules.items()):
        return model
    clone = copy.copy(model)
    clone._modules = children  # type: ignore[assignment]
    return clone
