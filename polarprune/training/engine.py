"""The training engine: one plain loop with extension points (``TrainHook``), checkpoints (``last.pt``
every epoch, ``best.pt`` on improvement), exact resume, ``metrics.jsonl`` and TensorBoard logs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
from torch import nn

from .. import distributed as dist
from ..errors import PolarpruneError
from ..fileio import atomic_write_json_lines
from ..serialization import CHECKPOINT_FORMAT, load_state_strict, model_spec, read_checkpoint, same_architecture
from .checkpoint import atomic_torch_save
from .guard import DivergenceError, DivergenceGuard, all_finite
from .hooks import TrainHook
from .progress import DEFAULT_INTERVAL_S, NoProgress, Progress, epoch_progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run leaves: the trained model (unwrapped) and its numbers."""

    model: nn.Module
    out_dir: Path
    final_top1: float
    best_top1: float
    final_top5: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


class _Writer:
    """TensorBoard on rank 0 when available, otherwise a no-op."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(log_dir))
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                self.tb = None

    def scalars(self, metrics: dict[str, Any], step: int) -> None:
        if self.tb is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- evaluation


def loader_world_size(loader: Iterable) -> int:
    """How many ranks share ``loader``'s samples: 1 for an unsharded loader or a plain iterable
    (then evaluation needs no all-reduce, so rank 0 can evaluate alone, e.g. while pruning)."""
    for owner in (loader, getattr(loader, "sampler", None)):
        size = getattr(owner, "world_size", None)
        if isinstance(size, int):
            return size
    return 1


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean loss, summed over all ranks when the loader is sharded."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, labels in loader:
        images = images.to(device, dtype=dtype, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        totals[0] += hits[:, :1].sum()
        totals[1] += hits.sum()
        totals[2] += criterion(logits.float(), labels)
        totals[3] += labels.numel()
    if loader_world_size(loader) > 1:  # a sharded loader: add the other ranks' shards
        dist.all_reduce_sum(totals)
    model.train(was_training)
    n = max(totals[3].item(), 1.0)
    return {"top1": 100.0 * totals[0].item() / n, "top5": 100.0 * totals[1].item() / n, "loss": totals[2].item() / n}


# ----------------------------------------------------------------------------- the loop


class StepResult(NamedTuple):
    """What one optimisation step gives back: the task loss (without hook terms), the logits,
    and whether the update was applied (False: the divergence guard skipped the step)."""

    loss: torch.Tensor
    logits: torch.Tensor
    applied: bool = True


def optimisation_step(model: nn.Module, train_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                      criterion: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      hooks: list[TrainHook], amp_dtype: torch.dtype | None = None,
                      guard: DivergenceGuard | None = None) -> StepResult:
    """One step: forward through ``train_model`` (e.g. the DDP wrapper), loss + hook terms, backward, step;
    hooks get ``model``. With a ``guard``, a non-finite loss (any rank) or gradient skips the update."""
    if guard is not None:
        guard.before_forward(model)
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = train_model(images)
        loss = criterion(logits, labels, images) if getattr(criterion, "uses_inputs", False) else criterion(logits, labels)
    total = loss.float()
    for hook in hooks:
        term = hook.loss_term(model)
        if term is not None:
            total = total + term
    optimizer.zero_grad(set_to_none=True)
    if guard is not None and not guard.loss_ok(total):
        guard.restore()
        return StepResult(loss, logits, applied=False)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    if guard is not None and not guard.gradients_ok(model, scaler.is_enabled()):
        optimizer.zero_grad(set_to_none=True)
        guard.restore()
        return StepResult(loss, logits, applied=False)
    for hook in hooks:
        hook.after_backward(model)
    scaler.step(optimizer)
    scaler.update()
    for hook in hooks:
        hook.after_step(model)
    return StepResult(loss, logits)


def progress_stats(sums: torch.Tensor, elapsed: float, lr: float) -> dict[str, str]:
    """The epoch's running numbers for the progress output (``sums``: loss sum, correct, count)."""
    done = max(sums[2].item(), 1.0)
    return {"loss": f"{sums[0].item() / done:.3f}", "acc": f"{100 * sums[1].item() / done:.1f}",
            "img_s": f"{done * dist.world_size() / max(elapsed, 1e-9):.0f}", "lr": f"{lr:.4g}"}


class Trainer:
    """One training run over built objects; ``fit()`` trains the remaining epochs. ``lr_schedule`` maps a
    fractional epoch to the LR, set every step, so resuming needs no scheduler state."""

    def __init__(self, model: nn.Module, train_loader: Any, eval_loader: Iterable, optimizer: torch.optim.Optimizer, *,
                 epochs: int, lr_schedule: Callable[[float], float], out_dir: str | Path, hooks: Sequence[TrainHook] = (),
                 device: torch.device | str = "cpu", criterion: nn.Module | None = None,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = False, sync_bn: bool = False,
                 dtype: torch.dtype = torch.float32,
                 eval_every: int = 1, max_steps_per_epoch: int | None = None, progress: bool = False,
                 run_config: dict[str, Any] | None = None, resume: bool = True, max_bad_steps: int = 0,
                 name: str | None = None, progress_interval: float = DEFAULT_INTERVAL_S) -> None:
        self.device = torch.device(device)
        self.dtype = dtype  # of parameters and inputs while training; the returned model is float32
        self.model = model.to(self.device, dtype)
        self.spec = model_spec(self.model)
        self.channels_last = channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.optimizer = optimizer
        self.epochs = int(epochs)
        self.lr_schedule = lr_schedule
        self.out_dir = Path(out_dir)
        self.guard = DivergenceGuard(name or self.out_dir.name, max_bad_steps)
        self.hooks = list(hooks)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=amp_dtype == torch.float16 and self.device.type == "cuda")
        self.eval_every = int(eval_every)
        self.max_steps_per_epoch = max_steps_per_epoch
        self.progress = progress
        self.progress_interval = float(progress_interval)  # seconds between log lines when stderr is no terminal
        self.run_config = run_config or {}
        self.start_epoch = 0
        self.global_step = 0
        self.best_top1 = -1.0
        self.history: list[dict[str, Any]] = []
        if resume and (self.out_dir / "last.pt").is_file():
            self._resume(self.out_dir / "last.pt")
        self.train_model: nn.Module = self._wrap_ddp(sync_bn)

    # -- set-up

    def _wrap_ddp(self, sync_bn: bool) -> nn.Module:
        if not dist.is_initialized():
            return self.model
        model = self.model
        if sync_bn:  # a view sharing self.model's tensors; self.model keeps plain BNs
            model = dist.sync_batchnorm_view(self.model, self.device.type)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # -- checkpoints

    def _checkpoint(self, epoch: int, *, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "spec": self.spec,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "epoch": epoch,
            "config": self.run_config,
            "best_top1": self.best_top1,
            "history": self.history,
        }
        if full:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict(),
                global_step=self.global_step,
                rng={
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                hooks={type(h).__name__: h.state_dict() for h in self.hooks if hasattr(h, "state_dict")},
                guard=self.guard.state_dict(),
            )
        return state

    def _resume(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        if not same_architecture(ckpt.get("spec"), self.spec):
            raise PolarpruneError(f"{path}: the checkpoint's architecture differs from this run's model; "
                                  "use another out folder or delete the checkpoint")
        load_state_strict(self.model, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        for hook in self.hooks:
            saved = ckpt.get("hooks", {}).get(type(hook).__name__)
            if saved is not None and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(saved)
        self.guard.load_state_dict(ckpt.get("guard", {}))
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best_top1 = float(ckpt["best_top1"])
        self.history = list(ckpt["history"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    def _save(self, epoch: int, improved: bool) -> None:
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(self._checkpoint(epoch, full=True), self.out_dir / "last.pt")
            if improved:
                atomic_torch_save(self._checkpoint(epoch, full=False), self.out_dir / "best.pt")
            atomic_write_json_lines(self.out_dir / "metrics.jsonl", self.history)
        dist.barrier()

    # -- training

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        loader = self.train_loader
        loader.set_epoch(epoch)
        steps = len(loader) if self.max_steps_per_epoch is None else min(len(loader), self.max_steps_per_epoch)
        self.train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss_sum, correct, count
        bar = self._progress(steps, epoch)
        start = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            if i >= steps:
                break
            lr = self.lr_schedule(epoch + i / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.guard.epoch, self.guard.step = epoch + 1, i + 1
            images = images.to(self.device, dtype=self.dtype, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss, logits, applied = optimisation_step(
                self.model, self.train_model, images, labels, criterion=self.criterion, optimizer=self.optimizer,
                scaler=self.scaler, hooks=self.hooks, amp_dtype=self.amp_dtype, guard=self.guard,
            )
            self.global_step += 1
            if not applied:  # skipped by the divergence guard: not part of the epoch's numbers
                continue
            with torch.no_grad():
                n = labels.numel()
                sums[0] += loss.detach() * n
                sums[1] += logits.argmax(1).eq(labels).sum()
                sums[2] += n
            bar.step(lambda: progress_stats(sums, time.perf_counter() - start, lr))
        elapsed = time.perf_counter() - start
        bar.close()
        dist.all_reduce_sum(sums)
        count = max(sums[2].item(), 1.0)
        return {"train_loss": sums[0].item() / count, "train_top1": 100.0 * sums[1].item() / count,
                "images_per_s": count / max(elapsed, 1e-9), "lr": self.lr_schedule(float(epoch))}

    def _check_finite_weights(self, epoch: int) -> None:
        """Refuse to checkpoint a model whose weights stopped being finite (e.g. a huge learning
        rate: finite steps that overflow the weights); the last checkpoint stays as it was."""
        if not all_finite(t for t in self.model.state_dict().values() if t.is_floating_point()):
            raise DivergenceError(
                f"{self.guard.where}: training diverged in epoch {epoch + 1}: the weights are no longer finite "
                "(the last complete checkpoint is kept; lower train.lr)"
            )

    def _progress(self, steps: int, epoch: int) -> Progress:
        """A bar on a terminal, steady log lines otherwise; nothing when off or on the other ranks."""
        if not (self.progress and dist.is_main()):
            return NoProgress()
        return epoch_progress(steps, f"epoch {epoch + 1}/{self.epochs}", interval=self.progress_interval)

    def fit(self, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train from ``start_epoch`` to ``epochs``, evaluating, logging and checkpointing each epoch."""
        total = self.epochs
        writer = _Writer(self.out_dir / "tb", enabled=dist.is_main() and self.start_epoch < total)
        for hook in self.hooks:
            hook.on_train_start(self.model, total)
        final = self.history[-1] if self.history else {}
        try:
            for epoch in range(self.start_epoch, total):
                t0 = time.perf_counter()
                row: dict[str, Any] = {"epoch": epoch + 1}
                row.update(self._train_epoch(epoch))
                self._check_finite_weights(epoch)
                if (epoch + 1) % self.eval_every == 0 or epoch + 1 == total:
                    metrics = evaluate(self.model, self.eval_loader, self.device, amp_dtype=self.amp_dtype,
                                       channels_last=self.channels_last, dtype=self.dtype)
                    row.update({"eval_top1": metrics["top1"], "eval_top5": metrics["top5"], "eval_loss": metrics["loss"]})
                reported: dict[str, Any] = {}
                for hook in self.hooks:
                    reported.update(hook.on_epoch_end(self.model, epoch, writer.tb))
                row.update(reported)
                row["epoch_time_s"] = time.perf_counter() - t0
                improved = "eval_top1" in row and row["eval_top1"] > self.best_top1
                if improved:
                    self.best_top1 = row["eval_top1"]
                self.history.append(row)
                self._save(epoch + 1, improved)
                writer.scalars(row, epoch + 1)
                final = row
                log.info(_epoch_line(row, total, reported))
                if on_epoch is not None:
                    on_epoch(row)
        except Exception as exc:  # a peer died or hung: one clear line instead of a gloo/NCCL traceback
            if dist.is_collective_failure(exc):
                raise PolarpruneError(dist.collective_failure_message(exc, f"training {self.out_dir}")) from exc
            raise
        finally:
            writer.close()
        top1, top5 = final.get("eval_top1"), final.get("eval_top5")
        if top1 is None:  # nothing trained (epochs=0): evaluate what we have
            metrics = evaluate(self.model, self.eval_loader, self.device, dtype=self.dtype)
            top1, top5 = metrics["top1"], metrics["top5"]
        self.model.to(torch.float32)  # what pruning, model files and the next stage take
        return TrainResult(model=self.model, out_dir=self.out_dir, final_top1=float(top1),
                           best_top1=max(self.best_top1, float(top1)), final_top5=float(top5), history=self.history,
                           resumed_from_epoch=self.start_epoch)


def _epoch_line(row: dict[str, Any], total: int, reported: dict[str, Any]) -> str:
    """The epoch's log line: the engine's numbers, then every metric the hooks reported (``reported``)."""
    parts = [f"epoch {row['epoch']}/{total}", f"loss {row['train_loss']:.4f}", f"train {row['train_top1']:.2f}%"]
    if "eval_top1" in row:
        parts.append(f"top1 {row['eval_top1']:.2f}%")
    parts += [f"lr {row['lr']:.4g}", f"{row['images_per_s']:.0f} img/s"]
    parts += [f"{key} {_metric(value)}" for key, value in reported.items()]
    return " | ".join(parts)


def _metric(value: Any) -> str:
    """A hook's metric for the log line: numbers with 4 significant digits, anything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
