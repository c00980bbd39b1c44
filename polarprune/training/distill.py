"""Knowledge distillation (Hinton et al., 2015): the student also matches the teacher's
temperature-softened class probabilities. The teacher is never wrapped in DDP: each rank distils its own batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2`` (keeps the gradient scale independent of ``T``) times the batch mean of
    ``KL(p_teacher || p_student)`` on logits divided by ``T``, in float32 or wider."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    work = torch.promote_types(student_logits.dtype, torch.float32)
    log_p_student = F.log_softmax(student_logits.to(work) / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(work) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task_loss: torch.Tensor, *,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * distillation_kl + (1 - alpha) * task_loss`` (``alpha`` in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = distillation_kl(student_logits, teacher_logits, temperature)
    return alpha * soft + (1.0 - alpha) * task_loss.to(soft.dtype)


class DistillationLoss(nn.Module):
    """Criterion ``(logits, labels, inputs) -> loss``: ``distillation_loss`` against the teacher's logits
    on the same inputs (``uses_inputs``); the teacher stays in eval mode and frozen."""

    uses_inputs = True

    def __init__(self, teacher: nn.Module, task: nn.Module, *, temperature: float, alpha: float) -> None:
        super().__init__()
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.task = task
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return distillation_loss(logits, teacher_logits, self.task(logits, labels), temperature=self.temperature,
                                 alpha=self.alpha)
