"""Training engine: loop, LR schedules, checkpoints, hooks."""

from .hooks import TrainHook

__all__ = ["TrainHook"]
