"""The training options a config passes to the trainer: nesterov, label_smoothing, channels_last.

Each is checked for its effect (the update SGD makes, the loss value, the memory format), with
the expected values worked out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from polarprune.config import TrainConfig, validate
from polarprune.workflows.train import build_optimizer, build_trainer


def digits_config(out: Path, **train) -> TrainConfig:
    return validate(TrainConfig, {
        "out": str(out), "seed": 0, "deterministic": True,
        "model": {"name": "small_cnn", "options": {"width": 8}},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": 1, "lr": 0.1, "progress": False, **train},
    })


def one_parameter_update(cfg: TrainConfig, grad: float, steps: int) -> float:
    """The value of a parameter that starts at 1 after ``steps`` SGD steps with a constant gradient."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = build_optimizer(cfg.train, model)
    for _ in range(steps):
        optimizer.zero_grad()
        model.weight.grad = torch.full_like(model.weight, grad)
        optimizer.step()
    return model.weight.item()


def test_nesterov_changes_the_update_as_nesterov_momentum_does(tmp_path: Path) -> None:
    # lr 0.1, momentum 0.9, no weight decay, gradient 1 each step; momentum buffer b1 = 1, b2 = 1.9
    # plain momentum: w = 1 - 0.1*b1 - 0.1*b2 = 0.71; Nesterov uses g + 0.9*b: 1.9 then 2.71 -> 0.539
    common = {"momentum": 0.9, "weight_decay": 0.0}
    plain = one_parameter_update(digits_config(tmp_path, **common), 1.0, 2)
    nesterov = one_parameter_update(digits_config(tmp_path, nesterov=True, **common), 1.0, 2)
    assert plain == pytest.approx(0.71, abs=1e-6)
    assert nesterov == pytest.approx(1 - 0.1 * 1.9 - 0.1 * 2.71, abs=1e-6)
    # Nesterov needs momentum: with momentum 0 the option is dropped rather than rejected by SGD
    no_momentum = build_optimizer(digits_config(tmp_path, nesterov=True, momentum=0.0).train, nn.Linear(1, 1))
    assert no_momentum.defaults["nesterov"] is False


def smoothed_cross_entropy(logits: list[list[float]], labels: list[int], eps: float) -> float:
    """Mean over the batch of (1 - eps) * -log p_label + eps * mean_k(-log p_k), by hand."""
    total = 0.0
    for row, label in zip(logits, labels):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        nll = [log_z - v for v in row]
        total += (1 - eps) * nll[label] + eps * sum(nll) / len(row)
    return total / len(labels)


def test_label_smoothing_and_nesterov_reach_the_trainer(tmp_path: Path) -> None:
    trainer = build_trainer(digits_config(tmp_path / "run", label_smoothing=0.1, nesterov=True, momentum=0.9))
    assert all(group["nesterov"] for group in trainer.optimizer.param_groups)
    images, labels = next(iter(trainer.train_loader))
    with torch.no_grad():
        logits = trainer.model.eval()(images)
        loss = float(trainer.criterion(logits, labels))
    assert loss == pytest.approx(smoothed_cross_entropy(logits.tolist(), labels.tolist(), 0.1), rel=1e-5)
    plain = smoothed_cross_entropy(logits.tolist(), labels.tolist(), 0.0)
    assert abs(loss - plain) > 1e-4  # the smoothing changed the loss


def test_channels_last_on_cpu(tmp_path: Path) -> None:
    """``train.channels_last`` applies on the CPU too (issue 15): the model's 4-d weights are in
    the channels-last format, and a run trains like the default layout (to float rounding)."""
    trainer = build_trainer(digits_config(tmp_path / "run", channels_last=True, max_steps_per_epoch=5))
    assert trainer.channels_last is True
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    plain = build_trainer(digits_config(tmp_path / "plain", channels_last=False, max_steps_per_epoch=5))
    last, default = trainer.fit().model.state_dict(), plain.fit().model.state_dict()
    assert all(torch.allclose(last[k], default[k], atol=1e-4) for k in default)


def test_float64_training_returns_a_float32_model_and_resumes_in_float64(tmp_path: Path) -> None:
    """``train.dtype=float64``: parameters and inputs are float64 while training (so is the
    resumable ``last.pt``), the model handed on to pruning is float32, and rounding is small
    enough that the same run on 1 and on 2 intra-op threads agrees to 1e-9."""
    from polarprune.training.checkpoint import read_checkpoint

    runs = {}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            trainer = build_trainer(digits_config(tmp_path / f"t{n}", dtype="float64", max_steps_per_epoch=6))
            assert {p.dtype for p in trainer.model.parameters()} == {torch.float64}
            runs[n] = trainer.fit().model
    finally:
        torch.set_num_threads(threads)
    assert {p.dtype for p in runs[1].parameters()} == {torch.float32}
    saved = read_checkpoint(tmp_path / "t1" / "last.pt")["model"]
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float64}
    one, two = runs[1].state_dict(), runs[2].state_dict()
    assert all(torch.equal(one[k], two[k]) or torch.allclose(one[k].double(), two[k].double(), rtol=1e-9, atol=1e-9)
               for k in one)
    resumed = build_trainer(digits_config(tmp_path / "t1", dtype="float64", epochs=2, max_steps_per_epoch=6))
    assert resumed.start_epoch == 1
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in saved.items())  # bit-exact resume


def test_bf16_autocast_on_a_cpu_that_emulates_it_warns_once(tmp_path: Path, caplog, monkeypatch) -> None:
    """Emulated bf16 trains several times slower than fp32 (BENCHMARKS.md section 4): asking for
    it on such a CPU gets one warning per process naming the option; a native-bf16 CPU, fp32 and
    CUDA get none."""
    import polarprune.workflows.train as train_module

    monkeypatch.setattr(train_module, "_warned_emulated_bf16", [])  # the process's once-flag stays untouched
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train_module.warn_emulated_bf16(torch.bfloat16, cpu, native=False) is True
    assert train_module.warn_emulated_bf16(torch.bfloat16, cpu, native=True) is False
    assert train_module.warn_emulated_bf16(None, cpu, native=False) is False
    assert train_module.warn_emulated_bf16(torch.float16, cuda, native=False) is False
    monkeypatch.setattr(train_module, "cpu_native_bf16", lambda: None)  # flags unknown (not Linux): no claim
    assert train_module.warn_emulated_bf16(torch.bfloat16, cpu) is False
    monkeypatch.setattr(train_module, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(train_module, "_warned_emulated_bf16", [])  # the calls above said it already
    caplog.clear()
    with caplog.at_level("WARNING", logger="polarprune"):
        build_trainer(digits_config(tmp_path / "amp", amp=True))
        build_trainer(digits_config(tmp_path / "fp32"))
        build_trainer(digits_config(tmp_path / "amp2", amp=True))  # a pipeline's next stage: said already
    warnings = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "train.amp=false" in warnings[0]
