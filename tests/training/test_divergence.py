"""The divergence guard: a NaN injected at step k (by a test-side loader) stops training with one
line naming the stage, epoch and step, leaves ``last.pt`` as it was, and the run resumes from it;
``train.max_bad_steps`` skips such steps instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from polarprune.config import TrainConfig, validate
from polarprune.training.guard import DivergenceError, DivergenceGuard
from polarprune.workflows.train import build_trainer


class NaNAtStep:
    """The trainer's loader, except that the images of global step ``step`` (0-based) are NaN."""

    def __init__(self, loader: Any, step: int, first_step: int) -> None:
        self.loader = loader
        self.step = step
        self.position = first_step

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            if self.position == self.step:
                images = torch.full_like(images, float("nan"))
            self.position += 1
            yield images, labels


def config(out: Path, epochs: int, **train: Any) -> TrainConfig:
    return validate(TrainConfig, {
        "seed": 0, "deterministic": True, "device": "cpu", "out": str(out),
        "model": {"name": "small_cnn", "options": {"width": 8}},
        "data": {"name": "digits", "batch_size": 128},
        "train": {"epochs": epochs, "lr": 0.05, "progress": False, "schedule": {"type": "constant"}, **train},
    })


def trainer_with_nan(out: Path, epochs: int, step: int, **train: Any):
    trainer = build_trainer(config(out, epochs, **train))
    trainer.train_loader = NaNAtStep(trainer.train_loader, step, trainer.global_step)
    return trainer


def test_nan_at_step_k_stops_with_one_line_keeps_last_checkpoint_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "sparsity"
    build_trainer(config(out, 1)).fit()  # epoch 1 complete: last.pt
    before = (out / "last.pt").read_bytes()
    steps_per_epoch = len(build_trainer(config(tmp_path / "probe", 1)).train_loader)

    trainer = trainer_with_nan(out, 3, step=steps_per_epoch + 2)  # epoch 2, its 3rd step
    assert trainer.start_epoch == 1
    with pytest.raises(DivergenceError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sparsity: training diverged at epoch 2, step 3: the loss is nan")
    assert (out / "last.pt").read_bytes() == before  # bit-identical: nothing was written

    resumed = build_trainer(config(out, 3))
    assert resumed.start_epoch == 1
    result = resumed.fit()
    assert result.resumed_from_epoch == 1 and len(result.history) == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


class WatchedNaNStep(NaNAtStep):
    """``NaNAtStep`` that also records the trainer's state (parameters, BN buffers, optimizer state)
    just before each of the steps ``step - 1``, ``step`` and ``step + 1`` is taken."""

    def __init__(self, trainer: Any, step: int) -> None:
        super().__init__(trainer.train_loader, step, trainer.global_step)
        self.trainer = trainer
        self.before: dict[int, dict[str, torch.Tensor]] = {}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in super().__iter__():
            position = self.position - 1  # the global step of this batch
            if position in (self.step - 1, self.step, self.step + 1):
                self.before[position] = self.state()
            yield batch

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        for index, slots in self.trainer.optimizer.state_dict()["state"].items():
            tensors.update({f"optimizer.{index}.{k}": torch.as_tensor(v).clone() for k, v in slots.items()})
        return tensors


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_max_bad_steps_skips_the_step_and_undoes_its_batch_norm_update(tmp_path: Path) -> None:
    bad = 3
    skipping = build_trainer(config(tmp_path / "skip", 2, max_bad_steps=1))
    watched = skipping.train_loader = WatchedNaNStep(skipping, bad)
    result = skipping.fit()
    assert len(result.history) == 2 and skipping.guard.bad_steps == 1
    before, after, later = watched.before[bad - 1], watched.before[bad], watched.before[bad + 1]
    # an applied step changes every parameter, running statistic, BN batch counter and momentum buffer...
    changed = differing(before, after)
    assert {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))} <= set(changed)
    assert {f"model.{k}" for k, _ in skipping.model.named_parameters()} <= set(changed)
    assert any(k.startswith("optimizer.") for k in changed)
    # ...the skipped NaN step changes nothing at all, BN statistics included
    assert differing(after, later) == []
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values() if t.is_floating_point())

    # one more bad step than allowed stops it
    with pytest.raises(DivergenceError, match="1 bad step"):
        trainer = build_trainer(config(tmp_path / "two", 2, max_bad_steps=1))
        trainer.train_loader = NaNAtStep(NaNAtStep(trainer.train_loader, 3, 0), 5, 0)
        trainer.fit()


def test_a_huge_learning_rate_is_caught_instead_of_training_at_nan(tmp_path: Path) -> None:
    """The issue's example: ``train.lr=1e6`` used to train at loss nan and save NaN checkpoints."""
    with pytest.raises(DivergenceError, match="training diverged at epoch 1"):
        build_trainer(config(tmp_path / "run", 2, lr=1e6)).fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_guard_rules() -> None:
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.full_like(model.weight, float("inf"))
    guard = DivergenceGuard("finetune", max_bad_steps=0)
    assert guard.gradients_ok(model, scaler_enabled=True)  # fp16 overflow: the grad scaler's business
    assert guard.bad_steps == 0
    with pytest.raises(DivergenceError, match="a gradient is not finite"):
        guard.gradients_ok(model, scaler_enabled=False)
    assert DivergenceGuard("y").loss_ok(torch.tensor(1.0)) and DivergenceGuard("y").gradients_ok(torch.nn.Linear(1, 1), False)
    restored = DivergenceGuard("x", max_bad_steps=3)
    restored.load_state_dict({"bad_steps": 2})
    assert restored.state_dict() == {"bad_steps": 2}
