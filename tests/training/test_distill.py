"""Distillation loss against values worked out by hand from its definition."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from polarprune.training.distill import distillation_kl, distillation_loss

STUDENT = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
TEACHER = [[3.0, 0.0, -2.0], [0.5, 0.5, 2.0]]
LABELS = [0, 2]


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kl(temperature: float) -> float:
    """T^2 * mean over samples of sum_c p_t(c) * log(p_t(c) / p_s(c))."""
    per_sample = []
    for s_row, t_row in zip(STUDENT, TEACHER):
        p_s, p_t = _softmax(s_row, temperature), _softmax(t_row, temperature)
        per_sample.append(sum(t * math.log(t / s) for s, t in zip(p_s, p_t)))
    return temperature**2 * sum(per_sample) / len(per_sample)


def _hand_ce() -> float:
    return sum(-math.log(_softmax(row, 1.0)[label]) for row, label in zip(STUDENT, LABELS)) / len(LABELS)


def test_kl_term_matches_hand_computation_at_several_temperatures() -> None:
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    for temperature in (1.0, 2.0, 4.0):
        assert distillation_kl(student, teacher, temperature).item() == pytest.approx(_hand_kl(temperature), rel=1e-6)
    # the hand formula itself, checked on paper for sample 0 at T=1:
    # p_s = (.7856, .1753, .0391), p_t = (.9465, .0471, .0064) -> .1763 - .0619 - .0116 = .1029
    p_s, p_t = _softmax(STUDENT[0], 1.0), _softmax(TEACHER[0], 1.0)
    assert sum(t * math.log(t / s) for s, t in zip(p_s, p_t)) == pytest.approx(0.1029, abs=2e-4)


def test_mixed_loss_equals_alpha_kl_plus_one_minus_alpha_ce() -> None:
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    labels = torch.tensor(LABELS)
    task = F.cross_entropy(student, labels)
    assert task.item() == pytest.approx(_hand_ce(), rel=1e-6)
    loss = distillation_loss(student, teacher, task, temperature=4.0, alpha=0.9)
    expected = 0.9 * _hand_kl(4.0) + 0.1 * _hand_ce()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert teacher.grad is None  # the teacher is a fixed target
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_kl_gradient_is_t_times_probability_difference() -> None:
    """d(T^2 KL)/d(student logit) = T * (p_s - p_t) / batch, by differentiating the definition."""
    temperature = 3.0
    student = torch.tensor(STUDENT, requires_grad=True)
    distillation_kl(student, torch.tensor(TEACHER), temperature).backward()
    for i, (s_row, t_row) in enumerate(zip(STUDENT, TEACHER)):
        p_s, p_t = _softmax(s_row, temperature), _softmax(t_row, temperature)
        expected = [temperature * (s - t) / len(STUDENT) for s, t in zip(p_s, p_t)]
        assert student.grad[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_alpha_zero_is_the_task_loss_and_identical_logits_give_zero_kl() -> None:
    student = torch.tensor(STUDENT)
    task = torch.tensor(1.25)
    assert distillation_loss(student, torch.tensor(TEACHER), task, temperature=2.0, alpha=0.0).item() == pytest.approx(1.25)
    assert distillation_kl(student, student.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_bad_arguments_are_rejected() -> None:
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(student, teacher, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, torch.tensor(1.0), temperature=2.0, alpha=1.5)
    with pytest.raises(ValueError, match="differ"):
        distillation_kl(student, teacher[:, :2], 2.0)


def test_distillation_criterion_runs_the_frozen_teacher_on_the_inputs() -> None:
    """The criterion equals the pure function on the teacher's logits; the teacher stays in
    eval mode without gradients; a teacher identical to the student gives a zero KL gradient."""
    from torch import nn

    from polarprune.training.distill import DistillationLoss

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    teacher = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    criterion = DistillationLoss(teacher, nn.CrossEntropyLoss(), temperature=2.0, alpha=0.7).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    logits = student(inputs)
    loss = criterion(logits, labels, inputs)
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    expected = distillation_loss(logits, teacher_logits, F.cross_entropy(logits, labels), temperature=2.0, alpha=0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # not even BN statistics

    twin = DistillationLoss(__import__("copy").deepcopy(student).eval(), nn.CrossEntropyLoss(), temperature=3.0, alpha=1.0)
    student.eval().zero_grad()
    twin(student(inputs), labels, inputs).backward()
    assert max(p.grad.abs().max().item() for p in student.parameters()) < 1e-6


@pytest.mark.slow
def test_a_finetune_stage_distils_from_the_sparsity_stage(tmp_path) -> None:
    """End to end: ``distill: {teacher: sparsity}`` resolves to that stage's model file, and the
    loss the fine-tuning logs for its single step is the hand formula on that step's batch,
    with the teacher in eval mode (its running statistics, not the batch's)."""
    import yaml

    from polarprune.data import build_data
    from polarprune.serialization import load_any_model
    from polarprune.workflows import Pipeline, load_recipe
    from polarprune.workflows.recipe import stage_config

    recipe = load_recipe("demo-polarization", [
        "model.options.width=8", "stages.sparsity.train.epochs=1", "stages.finetune.train.epochs=1",
        "stages.finetune.train.max_steps_per_epoch=1", "train.progress=false",
        "stages.finetune.distill={teacher: sparsity, temperature: 3.0, alpha: 0.8}",
    ])
    run = tmp_path / "run"
    Pipeline(recipe, run).run()
    ran = yaml.safe_load((run / "finetune" / "config.yaml").read_text())
    assert ran["distill"] == {"teacher": str(run / "sparsity" / "last.pt"), "temperature": 3.0, "alpha": 0.8}

    cfg = stage_config(recipe, "finetune", run)
    loader = build_data(cfg.data, seed=cfg.seed).train_loader
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    student = load_any_model(run / "prune" / "pruned.safetensors").train()  # as the step ran it
    teacher = load_any_model(run / "sparsity" / "last.pt").eval()
    logits = student(images)
    with torch.no_grad():
        expected = distillation_loss(logits, teacher(images), F.cross_entropy(logits, labels), temperature=3.0, alpha=0.8)
    logged = json.loads((run / "finetune" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert logged == pytest.approx(expected.item(), rel=1e-5)
