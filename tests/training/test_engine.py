"""Training engine: exact resume after SIGKILL, hook order and gradients, atomic checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fixtures import make_cifar10
from polarprune.config import TrainConfig, dump_yaml, validate
from polarprune.errors import PolarpruneError
from polarprune.training import TrainHook
from polarprune.training.checkpoint import atomic_torch_save, load_model_from_checkpoint, read_checkpoint
from polarprune.workflows.train import build_trainer, parameter_groups, run_training

FAULT_RUNNER = str(Path(__file__).resolve().parents[1] / "fault_runner.py")


def digits_config(out: Path, **train) -> TrainConfig:
    data = {
        "out": str(out),
        "seed": 1,
        "deterministic": True,
        "model": {"name": "small_cnn", "options": {"width": 8}},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": 2, "lr": 0.05, "progress": False, **train},
    }
    return validate(TrainConfig, data)


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resnet20_killed_in_epoch_2_resumes_to_identical_weights(tmp_path):
    """Acceptance: 2 epochs on a CIFAR fixture, SIGKILL during epoch 2, resume == uninterrupted."""
    root = tmp_path / "data"
    make_cifar10(root, n_train=96, n_test=32)
    base = {
        "seed": 3,
        "deterministic": True,
        "device": "cpu",
        "model": {"name": "resnet20"},
        "data": {"name": "cifar10", "root": str(root), "batch_size": 16},
        "train": {"epochs": 2, "lr": 0.05, "progress": False,
                  "schedule": {"type": "multistep", "milestones": [1], "gammas": [0.5]}},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(dump_yaml(validate(TrainConfig, base)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "polarprune", "train", str(cfg_path)]

    straight = tmp_path / "straight"
    subprocess.run(cmd + [f"out={straight}"], env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    steps_per_epoch = 96 // 16
    kill = [sys.executable, FAULT_RUNNER, "--kill-at", f"killed:{steps_per_epoch + 2}", "--"]  # third step of epoch 2
    proc = subprocess.run(kill + cmd[3:] + [f"out={killed}"], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert read_checkpoint(killed / "last.pt")["epoch"] == 1  # the last complete checkpoint survived
    resumed = subprocess.run(cmd + [f"out={killed}"], env=env, capture_output=True, text=True, check=True)
    assert "resumed from" in resumed.stderr

    a = read_checkpoint(straight / "last.pt")
    b = read_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert state_equal(a["model"], b["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_completed_run_is_not_trained_again(tmp_path):
    cfg = digits_config(tmp_path / "run", epochs=1)
    first = run_training(cfg)
    again = run_training(cfg)
    assert again.resumed_from_epoch == 1
    assert len(again.history) == 1
    assert again.final_top1 == pytest.approx(first.final_top1)
    assert first.final_top1 > 25  # one epoch of a width-8 net is already far above chance (10%)


class RecordingHook(TrainHook):
    """Records the order of calls and the gradient it sees after backward."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.grad_norms: list[float] = []

    def loss_term(self, model):
        self.calls.append("loss_term")
        return None

    def after_backward(self, model):
        self.calls.append("after_backward")
        self.grad_norms.append(float(model.classifier[-1].weight.grad.norm()))

    def after_step(self, model):
        self.calls.append("after_step")

    def on_epoch_end(self, model, epoch, writer=None):
        self.calls.append("epoch_end")
        return {"hook_metric": 1.5}


class NamingHook(TrainHook):
    """Reports metrics under names the engine has never heard of."""

    def on_epoch_end(self, model, epoch, writer=None):
        return {"toy_ratio": 0.000123456, "toy_count": 7}


def test_hooks_run_in_order_and_metrics_are_logged(tmp_path, caplog):
    hook = RecordingHook()
    with caplog.at_level("INFO", logger="polarprune.training.engine"):
        result = run_training(digits_config(tmp_path / "run", epochs=1, max_steps_per_epoch=3), hooks=[hook, NamingHook()])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert line.endswith("| hook_metric 1.5 | toy_ratio 0.0001235 | toy_count 7")  # whatever the hooks report
    assert hook.calls == ["loss_term", "after_backward", "after_step"] * 3 + ["epoch_end"]
    assert all(n > 0 for n in hook.grad_norms)
    assert result.history[0]["hook_metric"] == 1.5
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"hook_metric": 1.5' in lines[0]


class ZeroGradHook(TrainHook):
    """Zeroes every gradient after backward: the step must then leave weights unchanged (no wd, no momentum)."""

    def after_backward(self, model):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


def test_after_backward_really_acts_before_the_step(tmp_path):
    cfg = digits_config(tmp_path / "run", epochs=1, max_steps_per_epoch=2, weight_decay=0.0, momentum=0.0)
    trainer = build_trainer(cfg, hooks=[ZeroGradHook()])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" not in k and "num_batches" not in k}
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_weight_decay_switch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    groups = parameter_groups(model, 5e-4, bn_weight_decay=False)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert len(parameter_groups(model, 5e-4, bn_weight_decay=True)) == 1


def test_amp_bf16_on_cpu_trains(tmp_path):
    def conv_output_dtypes(amp: bool, out: Path, **train) -> tuple[set[torch.dtype], float]:
        """The dtypes the first conv produced in training forwards, and the final top-1."""
        trainer = build_trainer(digits_config(out, epochs=1, amp=amp, **train))
        conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
        seen: set[torch.dtype] = set()
        conv.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
        return seen, trainer.fit().final_top1

    dtypes, top1 = conv_output_dtypes(True, tmp_path / "amp")
    assert dtypes == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert top1 > 30
    assert conv_output_dtypes(False, tmp_path / "fp32", max_steps_per_epoch=2)[0] == {torch.float32}


def test_checkpoint_roundtrip_rebuilds_model(tmp_path):
    result = run_training(digits_config(tmp_path / "run", epochs=1))
    model = load_model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert state_equal(model.state_dict(), {k: v.cpu() for k, v in result.model.state_dict().items()})


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"format": "x", "v": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_truncated_and_foreign_checkpoints(tmp_path):
    run_training(digits_config(tmp_path / "run", epochs=1))
    data = (tmp_path / "run" / "last.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PolarpruneError, match="truncated or corrupt"):
        read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(PolarpruneError, match="not a polarprune training checkpoint"):
        read_checkpoint(foreign)


def test_batch_larger_than_data_is_a_clear_error(tmp_path):
    cfg = digits_config(tmp_path / "run", epochs=1)
    cfg.data.batch_size = 5000
    with pytest.raises(PolarpruneError, match="data.batch_size 5000"):
        run_training(cfg)


# ----------------------------------------------------------------------------- progress output


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class NotATerminal:
    """A stream that says it is no terminal (stderr redirected to a file)."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def logged_lines(desc: str, step_seconds: list[float], stats=lambda: {}) -> list[str]:
    """The lines a 30 s-interval ``LogProgress`` writes over an epoch whose steps take ``step_seconds``."""
    from polarprune.training.progress import LogProgress

    lines: list[str] = []
    clock = FakeClock()
    progress = LogProgress(len(step_seconds), desc, interval=30.0, write=lines.append, clock=clock)
    for seconds in step_seconds:
        clock.now += seconds
        progress.step(stats)
    return lines


def test_progress_without_a_terminal_logs_at_a_steady_pace() -> None:
    """Not a TTY: a line every `interval` seconds or every tenth of the epoch, with the rate, an ETA and the numbers."""
    from polarprune.training.progress import LogProgress, epoch_progress, format_duration

    assert isinstance(epoch_progress(5, "x", stream=NotATerminal()), LogProgress)
    asked = []
    lines = logged_lines("epoch 1/3", [2.0] * 10 + [0.5] * 190,  # 2 s per step, then 0.5 s
                         lambda: asked.append(1) or {"loss": "1.234", "img_s": "64"})
    # steps 1-10 take 20 s (no line yet, under 30 s and 10% = 20 steps); 10% marks at 20, 40, ..., 180;
    # the interval adds none (a tenth of the epoch comes every 10 s after that); no line for the last step
    assert len(lines) == 9 == len(asked)  # the numbers are computed only for the lines written
    assert lines[0] == "epoch 1/3: step 20/200 (10%), 0.80 steps/s, ETA 3m45s, loss 1.234, img_s 64"
    assert lines[-1].startswith("epoch 1/3: step 180/200 (90%), ") and "ETA 12s" in lines[-1]  # 20 steps at 105 s / 180
    # a slow epoch: the interval comes first
    slow = logged_lines("e", [7.0] * 30 + [7.0] * 970)[:6]
    assert [line.split(",")[0] for line in slow] == ["e: step 5/1000 (0%)", "e: step 10/1000 (1%)",
                                                      "e: step 15/1000 (2%)", "e: step 20/1000 (2%)",
                                                      "e: step 25/1000 (2%)", "e: step 30/1000 (3%)"]
    assert slow[0] == "e: step 5/1000 (0%), 0.14 steps/s, ETA 1h56m"  # 995 steps left at 7 s each: 6,965 s
    # a quick epoch (2 s) stays quiet: no line within 5 s (a sixth of the interval) of the start
    assert logged_lines("q", [0.01] * 200) == []
    # a 20 s epoch: the tenths come every 2 s, faster than the least gap, so a line every 5 s
    medium = logged_lines("m", [0.2] * 100)
    assert [line.split(" (")[0] for line in medium] == ["m: step 25/100", "m: step 50/100", "m: step 75/100"]
    assert [format_duration(s) for s in (0, 18.4, 185, 3725)] == ["0s", "18s", "3m05s", "1h02m"]


def test_progress_on_a_terminal_is_a_bar() -> None:
    from polarprune.training.progress import BarProgress, epoch_progress

    terminal = NotATerminal()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    bar = epoch_progress(3, "epoch 1/1", stream=terminal)
    assert isinstance(bar, BarProgress)
    for _ in range(3):
        bar.step(lambda: {"loss": "0.500"})
    bar.close()
    assert "epoch 1/1" in terminal.text and "3/3" in terminal.text and "loss=0.500" in terminal.text


def test_training_logs_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path, monkeypatch) -> None:
    """A real (tiny) training run with stderr redirected: progress lines appear with an ETA."""
    import logging

    from polarprune.training import progress

    stream = NotATerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(progress.__name__)
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        cfg = digits_config(tmp_path / "run", epochs=1, progress=True, progress_interval=1e-9, max_steps_per_epoch=4)
        run_training(cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": 16})}))
    finally:
        logger.removeHandler(handler)
    steps = [line for line in lines if line.startswith("epoch 1/1: step ")]
    assert [line.split(" (")[0] for line in steps] == ["epoch 1/1: step 1/4", "epoch 1/1: step 2/4", "epoch 1/1: step 3/4"]
    assert all("ETA " in line and "steps/s" in line and "img_s " in line and "loss " in line for line in steps)
    assert "\r" not in stream.text  # no bar drawn into the redirected stream
