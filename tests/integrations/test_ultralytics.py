"""The ultralytics integration: sparsity inside ultralytics' own trainer (penalty gradient under AMP's loss
scale, the target stop, EMA monitoring), the YOLO pipeline with resumption, and its one-line errors.

Everything trains on a tiny YOLO-format set written by the test (64 px images, coloured boxes)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics try a download
pytest.importorskip("ultralytics")

from polarprune.config import SparsityConfig  # noqa: E402
from polarprune.errors import PolarpruneError  # noqa: E402
from polarprune.integrations import ultralytics as ultra  # noqa: E402
from yolo_data import write_yolo_set  # noqa: E402

# A YOLO of plain convs: small and fast (YOLOv8n itself runs in the slow tests).
TINY_YAML = """nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
head:
  - [[2, 3, 4], 1, Detect, [nc]]
"""
TINY_SEG_YAML = TINY_YAML.replace("Detect, [nc]", "Segment, [nc, 8, 16]")


@pytest.fixture(scope="module")
def yolo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yolo_set(tmp_path_factory.mktemp("yolo_set"))


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("yolo_yaml") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def train_overrides(data: Path, model: str, out: Path, **more: object) -> dict[str, object]:
    """A few CPU steps: batch 4 on 8 images, no accumulation (nbs = batch), SGD, no plots."""
    return {"model": model, "data": str(data), "epochs": 1, "imgsz": 64, "batch": 4, "nbs": 4, "workers": 0,
            "device": "cpu", "optimizer": "SGD", "lr0": 0.01, "warmup_epochs": 0, "amp": False, "plots": False,
            "val": False, "mosaic": 0.0, "project": str(out), "name": "run", "exist_ok": True, "verbose": False, **more}


def spread_gammas(values: tuple[float, ...]) -> object:
    """A callback giving every BN's gammas distinct values (a fresh YOLO has all at 1, where sign(g - mean) = 0)."""
    def callback(trainer: object) -> None:
        model = trainer.model  # type: ignore[attr-defined]
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    pattern = torch.tensor(values)
                    module.weight.copy_(pattern.repeat(module.weight.numel() // len(values) + 1)[: module.weight.numel()])
    return callback


def polarization_gradient(gammas: list[torch.Tensor], lbd: float, t: float, alpha: float) -> torch.Tensor:
    """d/dg of lbd * sum_i (t|g_i| - |g_i - alpha*mean(g)|), worked out by hand: the mean over every regularized
    gamma gives each channel the extra term lbd * alpha/N * sum_j sign(g_j - alpha*mean)."""
    g = torch.cat([x.reshape(-1) for x in gammas]).double()
    mean = g.mean()
    inner = torch.sign(g - alpha * mean)
    return lbd * (t * torch.sign(g) - inner + alpha / g.numel() * inner.sum())


class StepProbe:
    """Records, at each optimizer step, the regularized gammas' gradients before the integration adds its terms
    (a global pre-hook runs before an optimizer's own) and after (a pre-hook registered after the integration's)."""

    def __init__(self, sparsity: ultra.UltralyticsSparsity) -> None:
        self.sparsity = sparsity
        self.before: list[torch.Tensor] = []
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.scales: list[float] = []
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._handle = register_optimizer_step_pre_hook(self._before)

    def gammas(self) -> list[torch.Tensor]:
        model = self.sparsity._model
        return [model.get_submodule(name).weight for name in self.sparsity.hooks[0].bn_names]

    def _before(self, optimizer: object, args: object, kwargs: object) -> None:
        self.before = [g.grad.detach().clone() for g in self.gammas()]

    def _after(self, optimizer: object, args: object, kwargs: object) -> None:
        gammas = self.gammas()
        flat = lambda ts: torch.cat([t.reshape(-1) for t in ts]).double()  # noqa: E731
        self.rows.append((flat([g.detach() for g in gammas]), flat(self.before), flat([g.grad for g in gammas])))

    def install(self, trainer: object) -> None:
        trainer.optimizer.register_step_pre_hook(self._after)  # type: ignore[attr-defined]
        self.scales.append(float(trainer.scaler.get_scale()))  # type: ignore[attr-defined]

    def close(self) -> None:
        self._handle.remove()


def scaled_amp(trainer: object) -> None:
    """AMP's loss scaling on the CPU: every loss is multiplied by 1024 before backward and the gradients are
    divided back by ``unscale_``, exactly ultralytics' CUDA path (autocast itself does not change the grads' dtype)."""
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # type: ignore[attr-defined]


def train_probed(trainer: object, settings: dict[str, object], gammas: tuple[float, ...]) -> tuple[ultra.UltralyticsSparsity, StepProbe]:
    """Train under a 1024x loss scale, gammas spread over ``gammas``, the regularizer of ``settings``, probed."""
    trainer.add_callback("on_pretrain_routine_end", scaled_amp)  # type: ignore[attr-defined]
    trainer.add_callback("on_pretrain_routine_end", spread_gammas(gammas))  # type: ignore[attr-defined]
    sparsity = ultra.UltralyticsSparsity({**settings, "monitor": False}).attach(trainer)
    probe = StepProbe(sparsity)
    trainer.add_callback("on_pretrain_routine_end", probe.install)  # type: ignore[attr-defined]
    try:
        trainer.train()  # type: ignore[attr-defined]
    finally:
        probe.close()
    return sparsity, probe


@pytest.mark.slow
def test_polarization_gradient_inside_ultralytics_trainer_on_yolov8n(yolo_set: Path, tmp_path: Path) -> None:
    """YOLOv8n trains a few steps in ultralytics' DetectionTrainer under a 1024x loss scale; at each step the
    gradient the integration adds to the BN gammas equals the hand-computed polarization gradient (not 1024x it)."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    lbd, t, alpha = 0.05, 1.2, 1.0
    trainer = DetectionTrainer(overrides=train_overrides(yolo_set, "yolov8n.yaml", tmp_path))
    sparsity, probe = train_probed(trainer, {"regularizer": "polarization", "lbd": lbd, "t": t, "alpha": alpha},
                                   (0.2, 0.45, 0.7, 0.9))
    assert probe.scales == [1024.0]
    assert len(probe.rows) == 2  # 8 images, batch 4, one step each
    assert len(sparsity.hooks[0].bn_names) > 50  # every YOLOv8n BN the analysis finds prunable
    for gammas, before, after in probe.rows:
        expected = polarization_gradient([gammas], lbd, t, alpha)
        assert torch.allclose(after - before, expected, rtol=1e-5, atol=1e-7)
        assert (after - before).abs().max() > 0.01  # the penalty is really there, at its unscaled size
    gammas = torch.cat([m.weight.detach().reshape(-1) for m in trainer.ema.ema.modules() if isinstance(m, nn.BatchNorm2d)])
    assert float(gammas.min()) >= 0.0 and float(gammas.max()) <= 1.0  # clamped before the EMA followed


def test_l1_subgradient_added_once_per_step_unscaled(yolo_set: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    """``l1`` adds lambda*sign(gamma) to the unscaled gradient of each regularized gamma, once per step."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    lbd = 0.03
    trainer = DetectionTrainer(overrides=train_overrides(yolo_set, str(tiny_yaml), tmp_path))
    _, probe = train_probed(trainer, {"regularizer": "l1", "lbd": lbd}, (0.3, 0.6))
    assert len(probe.rows) == 2
    for gammas, before, after in probe.rows:
        assert torch.allclose(after - before, lbd * torch.sign(gammas), rtol=1e-6, atol=1e-8)


def test_mask_l1_in_the_segmentation_trainer(tmp_path: Path) -> None:
    """``mask-l1`` in ultralytics' SegmentationTrainer: lambda*sign(gamma) on exactly the channels the mask file
    does not keep, nothing on the others, at the unscaled size."""
    from ultralytics.models.yolo.segment import SegmentationTrainer

    from polarprune.sparsity import save_mask

    data = write_yolo_set(tmp_path / "seg", polygons=True)
    (tmp_path / "seg.yaml").write_text(TINY_SEG_YAML)
    model = ultra.build_yolo(tmp_path / "seg.yaml", nc=2)
    keep = {name: torch.arange(m.num_features) % 2 == 0 for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and name.startswith("model.") and name.count(".") == 2}
    save_mask(keep, tmp_path / "mask.json", None)
    trainer = SegmentationTrainer(overrides=train_overrides(data, str(tmp_path / "seg.yaml"), tmp_path))
    lbd = 0.02
    sparsity, probe = train_probed(trainer, {"regularizer": "mask-l1", "lbd": lbd, "mask": str(tmp_path / "mask.json")}, (0.3, 0.6))
    assert sparsity.hooks[0].bn_names == list(keep) and len(probe.rows) == 2
    pushed = torch.cat([~keep[n] for n in keep]).double()
    for gammas, before, after in probe.rows:
        assert torch.allclose(after - before, lbd * torch.sign(gammas) * pushed, rtol=1e-6, atol=1e-8)


def test_attached_to_a_yolo_model_its_train_call_regularizes(yolo_set: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    """``attach`` on a ``YOLO`` object: its ``train()`` builds the trainer with these callbacks, and the epoch row
    shows the polarization clamp at work (no gamma above 1 after the step, from 1.5 before it)."""
    from ultralytics import YOLO

    model = YOLO(str(tiny_yaml))
    model.add_callback("on_pretrain_routine_end", spread_gammas((1.5, 0.5)))
    sparsity = ultra.UltralyticsSparsity({"regularizer": "polarization", "lbd": 1e-3}).attach(model)
    overrides = train_overrides(yolo_set, str(tiny_yaml), tmp_path)
    model.train(**{k: v for k, v in overrides.items() if k != "model"})
    assert len(sparsity.epoch_rows) == 1 and sparsity.hooks[0].bn_names
    gammas = torch.cat([g.detach().reshape(-1) for g in sparsity.hooks[0].gammas(sparsity._model)])
    assert float(gammas.max()) <= 1.0 and sparsity.epoch_rows[0]["gamma_mean"] == pytest.approx(float(gammas.abs().mean()))


def test_target_stop_ends_training_and_ema_is_summarised(yolo_set: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    """Half of every BN's gammas near 0: the first step's trial prune meets target_macs_ratio, lambda drops to 0,
    and ultralytics' own stop ends the run after epoch 1 of 3; the epoch row also summarises the EMA's gammas."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    trainer = DetectionTrainer(overrides=train_overrides(yolo_set, str(tiny_yaml), tmp_path, epochs=3))
    trainer.add_callback("on_pretrain_routine_end", spread_gammas((0.8, 1e-4)))
    sparsity = ultra.UltralyticsSparsity({"regularizer": "polarization", "lbd": 1e-3, "target_macs_ratio": 0.9,
                                          "target_check_every": 1}).attach(trainer)
    trainer.train()
    hook = sparsity.hooks[0]
    assert sparsity.target_reached and hook.lbd == 0.0
    assert trainer.epoch == 0  # stopped in the first of three epochs
    rows = (Path(trainer.save_dir) / ultra.SPARSITY_LOG).read_text().splitlines()
    assert len(rows) == 1 and sparsity.epoch_rows[0]["sparsity_target_reached"] == 1.0
    ema_gammas = [trainer.ema.ema.get_submodule(n).weight.detach() for n in hook.bn_names]
    small = float((torch.cat(ema_gammas).abs() < 0.01).float().mean())
    assert sparsity.epoch_rows[0]["ema_gamma_frac_below_0.01"] == pytest.approx(small)
    assert 0.4 <= sparsity.epoch_rows[0]["gamma_frac_below_0.01"] <= 0.6  # the trained model: half near 0
    assert sparsity.epoch_rows[0]["trial_macs_ratio_grad"] <= 0.9


@pytest.mark.slow
def test_latency_target_stop(yolo_set: Path, tiny_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``target_latency_ratio``: the latency cost model is built as the training workflow builds it (here timed by a
    fake runtime whose costs are known), and the trial's predicted latency stops the run."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    from latency_fakes import fake_ms
    from polarprune.deploy import latency_cost
    from polarprune.workflows import train as workflow_train

    def faked(model: nn.Module, example: torch.Tensor, runtime: str, batch: int, threads: int, cache_dir: object = None) -> object:
        return latency_cost.latency_cost_model(model, example, runtime, batch, threads, cache_dir=tmp_path / "tables", measure=fake_ms)

    monkeypatch.setattr(workflow_train, "latency_cost_model", faked)
    trainer = DetectionTrainer(overrides=train_overrides(yolo_set, str(tiny_yaml), tmp_path, epochs=3))
    trainer.add_callback("on_pretrain_routine_end", spread_gammas((0.8, 1e-4)))
    sparsity = ultra.UltralyticsSparsity({"regularizer": "l1", "lbd": 1e-3, "target_latency_ratio": 0.9,
                                          "target_check_every": 1, "monitor": False}).attach(trainer)
    trainer.train()
    assert sparsity.target_reached and trainer.epoch == 0
    trial = sparsity.hooks[0].trial
    assert type(trial.cost).__name__ == "LatencyCost"
    assert trial.decide(sparsity._model, "grad").cost_ratio <= 0.9


@pytest.mark.slow
def test_target_stop_on_yolov8n(yolo_set: Path, tmp_path: Path) -> None:
    """The same stop on YOLOv8n (needs YOLOv8n's trial prune: the yolo branch's fix of the C2f groups)."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    trainer = DetectionTrainer(overrides=train_overrides(yolo_set, "yolov8n.yaml", tmp_path, epochs=2))
    trainer.add_callback("on_pretrain_routine_end", spread_gammas((0.8, 1e-4)))
    sparsity = ultra.UltralyticsSparsity({"regularizer": "polarization", "lbd": 1e-3, "target_macs_ratio": 0.95,
                                          "target_check_every": 1, "monitor": False}).attach(trainer)
    trainer.train()
    assert sparsity.target_reached and trainer.epoch == 0


def pipeline_config(data: Path, model: str, out: Path, **more: object) -> dict[str, object]:
    return {"data": str(data), "model": model, "out": str(out), "imgsz": 64, "batch": 4, "workers": 0, "device": "cpu",
            "epochs": 1, "sparsity_epochs": 1, "finetune_epochs": 1,
            "sparsity": {"regularizer": "polarization", "lbd": 1e-3},
            "prune": {"strategy": "l1-norm", "ratio": 0.25},  # fresh gammas are all 1: rank by weight norms
            "train_args": {"optimizer": "SGD", "lr0": 0.01, "warmup_epochs": 0, "amp": False, "plots": False,
                           "mosaic": 0.0, "nbs": 4, "verbose": False}, **more}


@pytest.mark.slow
def test_pipeline_prunes_finetunes_and_resumes(yolo_set: Path, tiny_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """baseline -> sparsity -> prune -> fine-tune: the fine-tuned checkpoint is ultralytics' own file of the pruned
    network (fewer parameters, its val runs); a second call reuses every stage; without the fine-tune result only
    that stage runs again."""
    from ultralytics import YOLO

    summary = ultra.run_yolo(pipeline_config(yolo_set, str(tiny_yaml), tmp_path / "run"))
    report = summary["prune"]["report"]
    assert report["macs_after"] < report["macs_before"] and report["params_after"] < report["params_before"]
    pruned = ultra.load_pruned(summary["prune"]["weights"])
    assert sum(p.numel() for p in pruned.parameters()) == report["params_after"]
    tuned = YOLO(summary["finetune"]["last"])
    assert sum(p.numel() for p in tuned.model.parameters()) == report["params_after"]
    metrics = tuned.val(data=str(yolo_set), imgsz=64, batch=4, device="cpu", plots=False, verbose=False)
    assert 0.0 <= float(metrics.box.map) <= 1.0
    onnx_file = tuned.export(format="onnx", imgsz=64, simplify=False)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(onnx_file)
    (boxes,) = session.run(None, {session.get_inputs()[0].name: torch.zeros(1, 3, 64, 64).numpy()})
    assert boxes.shape == (1, 4 + 2, 8 * 8 + 4 * 4 + 2 * 2)  # 4 box values + 2 classes, anchors at strides 8, 16, 32
    assert (tmp_path / "run" / "sparsity" / ultra.SPARSITY_LOG).is_file()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished stage ran again")

    for name in ("run_baseline", "run_sparsity", "run_prune", "run_finetune"):
        monkeypatch.setattr(ultra, name, boom)
    assert ultra.run_yolo(pipeline_config(yolo_set, str(tiny_yaml), tmp_path / "run"))["prune"] == summary["prune"]
    (tmp_path / "run" / "finetune" / ultra.RESULT).unlink()
    monkeypatch.setattr(ultra, "run_finetune", lambda cfg, task, pruned: {"rerun": pruned})
    again = ultra.run_yolo(pipeline_config(yolo_set, str(tiny_yaml), tmp_path / "run"))
    assert again["finetune"] == {"rerun": summary["prune"]["weights"]}


class Crash(Exception):
    """The machine went away."""


def interrupting_trainers(stage: str) -> tuple[type, type, list[int]]:
    """Detection trainers: one that crashes after ``stage``'s first epoch was validated and saved, one that records
    the epoch each training starts at."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    starts: list[int] = []

    def crash(trainer: object) -> None:
        if Path(trainer.save_dir).name == stage:  # type: ignore[attr-defined]
            raise Crash

    class CrashAfterSave(DetectionTrainer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.add_callback("on_fit_epoch_end", crash)

    class Recording(DetectionTrainer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.add_callback("on_train_start", lambda trainer: starts.append(trainer.start_epoch))

    return CrashAfterSave, Recording, starts


def crash_then_rerun(config: dict[str, object], stage: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, object], list[int]]:
    """Run the pipeline until ``stage`` crashes after its first epoch, then again; the second run's summary and
    the epochs its trainings started at."""
    crashing, recording, starts = interrupting_trainers(stage)
    with monkeypatch.context() as patch:
        patch.setattr(ultra.YoloTask, "trainer", lambda self: crashing)
        with pytest.raises(Crash):
            ultra.run_yolo(config)
    assert not (Path(str(config["out"])) / stage / ultra.RESULT).exists()
    monkeypatch.setattr(ultra.YoloTask, "trainer", lambda self: recording)
    return ultra.run_yolo(config), starts


@pytest.mark.slow
def test_interrupted_sparsity_stage_resumes_where_it_stopped(yolo_set: Path, tiny_yaml: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparsity stage killed after its first epoch was saved: the next call resumes ultralytics' run at epoch 2
    with the hooks' saved state (their epoch rows and lambda), instead of starting over."""
    config = pipeline_config(yolo_set, str(tiny_yaml), tmp_path / "run", epochs=0, sparsity_epochs=3, finetune_epochs=0,
                             sparsity={"regularizer": "polarization", "lbd": 2e-3})
    folder = tmp_path / "run" / "sparsity"
    saved: list[dict[str, object]] = []
    original = ultra.UltralyticsSparsity.load_state

    def load_state(self: ultra.UltralyticsSparsity, trainer: object) -> None:  # what the resume finds, then loads
        saved.append(ultra.read_json(folder / "weights" / ultra.SPARSITY_STATE))
        original(self, trainer)

    monkeypatch.setattr(ultra.UltralyticsSparsity, "load_state", load_state)
    summary, starts = crash_then_rerun(config, "sparsity", monkeypatch)
    assert starts == [1]  # ultralytics resumed at the second epoch
    state = saved[0]
    assert state["hooks"][0]["lbd"] == 2e-3 and state["hooks"][0]["next_epoch"] == 1 and len(state["epoch_rows"]) == 1
    rows = summary["sparsity"]["epochs"]
    assert [row["epoch"] for row in rows] == [1.0, 2.0, 3.0]  # epoch 1 from the first run, 2 and 3 resumed
    assert rows[0] == state["epoch_rows"][0] and all(row["lambda"] == 2e-3 for row in rows)
    assert len((folder / "results.csv").read_text().strip().splitlines()) == 1 + 3


@pytest.mark.slow
def test_interrupted_finetune_resumes_the_pruned_network(yolo_set: Path, tiny_yaml: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tuning killed after its first epoch: the next call reuses the other stages and resumes ultralytics'
    run of the pruned network at epoch 2 (its weights from the interrupted run, not rebuilt from the YAML)."""
    from ultralytics import YOLO

    config = pipeline_config(yolo_set, str(tiny_yaml), tmp_path / "run", epochs=0, sparsity_epochs=1, finetune_epochs=2)
    summary, starts = crash_then_rerun(config, "finetune", monkeypatch)
    assert starts == [1]  # only the fine-tuning trained, from its second epoch
    report = summary["prune"]["report"]
    tuned = YOLO(summary["finetune"]["last"])
    assert sum(p.numel() for p in tuned.model.parameters()) == report["params_after"] < report["params_before"]


@pytest.mark.slow
def test_pipeline_on_yolov8n(yolo_set: Path, tmp_path: Path) -> None:
    """The pipeline on YOLOv8n (needs the yolo branch's YOLOv8 pruning): the fine-tuned file is the pruned network."""
    from ultralytics import YOLO

    summary = ultra.run_yolo(pipeline_config(yolo_set, "yolov8n.yaml", tmp_path / "run", epochs=0))
    report = summary["prune"]["report"]
    assert report["params_after"] < report["params_before"]
    tuned = YOLO(summary["finetune"]["last"])
    assert sum(p.numel() for p in tuned.model.parameters()) == report["params_after"]


def test_data_folder_without_labels_is_one_line(tmp_path: Path) -> None:
    data = write_yolo_set(tmp_path / "set", n_train=2, n_val=1)
    for label in (tmp_path / "set" / "labels" / "train").iterdir():
        label.unlink()
    with pytest.raises(PolarpruneError, match=r"no labels for the train images") as info:
        ultra.read_data_yaml(data)
    assert "\n" not in str(info.value)
    with pytest.raises(PolarpruneError, match=r"no labels for the train images"):
        ultra.run_yolo(pipeline_config(data, "yolov8n.yaml", tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are checked


def test_yolo_yaml_that_does_not_build_is_one_line(yolo_set: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("nc: 2\nbackbone:\n  - [-1, 1, NoSuchBlock, [8, 3, 2]]\nhead:\n  - [[0], 1, Detect, [nc]]\n")
    with pytest.raises(PolarpruneError, match=r"model YAML .*broken.yaml does not build") as info:
        ultra.run_yolo(pipeline_config(yolo_set, str(broken), tmp_path / "run"))
    assert "\n" not in str(info.value)
    with pytest.raises(PolarpruneError, match=r"model file not found: .*missing.pt"):
        ultra.run_yolo(pipeline_config(yolo_set, str(tmp_path / "missing.pt"), tmp_path / "run"))
    pickle = tmp_path / "yolov8n.pt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(PolarpruneError, match=r"yolov8n.pt: an ultralytics .pt file is a pickle .* --trust-code") as info:
        ultra.run_yolo(pipeline_config(yolo_set, str(pickle), tmp_path / "run"))
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_target_on_model_with_nothing_to_prune_is_one_line() -> None:
    """A conv whose BN feeds the output directly: no channel can go, so a MACs target can never be met."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(imgsz=16),
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    sparsity = ultra.UltralyticsSparsity({"regularizer": "l1", "lbd": 1e-4, "include": ["1"], "target_macs_ratio": 0.5})
    with pytest.raises(PolarpruneError, match=r"no prunable channel group \(nothing to prune\)") as info:
        sparsity.setup(trainer)
    assert "\n" not in str(info.value) and "Sequential" in str(info.value)


def test_bad_pipeline_settings_are_one_line(yolo_set: Path) -> None:
    with pytest.raises(PolarpruneError, match=r"sparsity.target_macs_ratio"):
        ultra.UltralyticsSparsity({"regularizer": "l1", "target_macs_ratio": 2.0})
    with pytest.raises(PolarpruneError, match=r"train_args may not set epochs"):
        ultra.load_pipeline_config({"data": str(yolo_set), "train_args": {"epochs": 3}})
    with pytest.raises(PolarpruneError, match=r"regularizer"):
        ultra.load_pipeline_config({"data": str(yolo_set), "sparsity": {"regularizer": "none"}})
    with pytest.raises(PolarpruneError, match=r"task"):
        ultra.load_pipeline_config({"data": str(yolo_set), "task": "pose"})
    assert ultra.label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")


def test_command_flags_become_pipeline_keys_and_bad_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polarprune.cli import build_parser, main
    from polarprune.commands.yolo import pipeline_settings

    args = build_parser().parse_args(["yolo", "d.yaml", "prune.percent=0.4", "train_args.lr0=0.005", "--lbd", "3e-4",
                                      "--epochs", "0", "--target-macs-ratio", "0.5", "--strategy", "percent"])
    cfg = ultra.load_pipeline_config(pipeline_settings(args))
    assert cfg.sparsity.regularizer == "polarization" and cfg.sparsity.regularizer_options()["lbd"] == 3e-4
    assert cfg.sparsity.target_macs_ratio == 0.5 and cfg.epochs == 0
    assert cfg.prune == {"strategy": "percent", "percent": 0.4} and cfg.train_args == {"lr0": 0.005}
    l1 = ultra.load_pipeline_config(pipeline_settings(build_parser().parse_args(["yolo", "d.yaml", "--method", "l1"])))
    assert l1.sparsity.regularizer == "l1" and l1.sparsity.regularizer_options()["lbd"] == ultra.YOLO_LAMBDA["l1"]
    assert ultra.load_pipeline_config({"data": "d.yaml"}).sparsity.regularizer_options()["lbd"] == ultra.YOLO_LAMBDA["polarization"]

    data = write_yolo_set(tmp_path / "set", n_train=2, n_val=1)
    for label in (tmp_path / "set" / "labels" / "val").iterdir():
        label.unlink()
    assert main(["yolo", str(data), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("polarprune: error: ") and "no labels for the val images" in err and "\n" not in err
