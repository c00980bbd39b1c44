"""Learning-rate schedules as a pure function of the (fractional) epoch, recomputed every step:
a resumed run needs no scheduler state, and warm-up is smooth within an epoch."""

from __future__ import annotations

import math

from ..config import ScheduleConfig


def resolve_milestones(cfg: ScheduleConfig, total_epochs: int) -> list[float]:
    """Milestones in epochs: fractions (all < 1) are scaled by ``total_epochs``."""
    if cfg.milestones and all(m < 1 for m in cfg.milestones):
        return [m * total_epochs for m in cfg.milestones]
    return list(cfg.milestones)


def milestone_factor(cfg: ScheduleConfig, epoch: int, total_epochs: int) -> float:
    """Product of the decay factors of every milestone reached by integer ``epoch``."""
    milestones = resolve_milestones(cfg, total_epochs)
    gammas = cfg.gammas if isinstance(cfg.gammas, list) else [cfg.gammas] * len(milestones)
    return math.prod((gamma for milestone, gamma in zip(milestones, gammas) if epoch >= milestone), start=1.0)


def lr_at(cfg: ScheduleConfig, base_lr: float, epoch: float, total_epochs: int) -> float:
    """The learning rate at fractional ``epoch`` (0 <= epoch < total_epochs)."""
    whole = int(math.floor(epoch))
    if cfg.type == "multistep":
        lr = base_lr * milestone_factor(cfg, whole, total_epochs)
    elif cfg.type == "cosine":
        start = cfg.warmup_epochs
        span = max(total_epochs - start, 1e-8)
        progress = min(max((epoch - start) / span, 0.0), 1.0)
        lr = cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        lr = base_lr
    if cfg.first_epoch_lr is not None and whole == 0:
        lr = cfg.first_epoch_lr
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        frac = epoch / cfg.warmup_epochs
        lr *= cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * frac
    return lr
