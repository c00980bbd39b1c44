"""Sparsity training inside ultralytics' own trainer, and a YOLO pipeline (baseline -> sparsity -> prune -> fine-tune).

Needs the ``ultralytics`` extra (AGPL-3.0), imported only when used. docs/yolo.md describes it.

How the hooks sit in ultralytics' training step (no copy of its loop; only its extension points):

- ``on_pretrain_routine_end`` (after the model, optimizer, scaler and EMA exist): ``sparsity.build_hooks`` on the
  unwrapped model, and two torch optimizer hooks on ``trainer.optimizer``.
- The optimizer's step pre-hook runs inside ``GradScaler.step`` after ``unscale_`` and the gradient clipping, and
  only when the step is taken (no inf/NaN): the gradients are unscaled, so the penalty's gradient (``loss_term``,
  back-propagated on its own) and the L1 subgradients (``after_backward``) are added at their true size, once per
  optimizer step (not once per accumulated batch). AMP's loss scale never touches them.
- The step post-hook (right after the parameters change, before ultralytics updates its EMA) clamps the gammas
  (``after_step``) and runs the mid-epoch target checks on the live model.
- ``on_train_epoch_end``: monitoring and the epoch-end target check read the trained model (the trial prune is
  analysed on it); the regularized gammas of the EMA, which ultralytics validates and saves and the prune step
  gets, are summarised next to them (``ema_`` keys: the EMA follows the trained gammas with its decay). A reached
  target sets ``trainer.stop``, ultralytics' own stop: the epoch is validated and saved, then training ends.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import Section, SparsityConfig
from ..errors import PolarpruneError, require_extra
from ..fileio import atomic_write_json, read_json
from ..models.imports import code_trusted

log = logging.getLogger(__name__)

PURPOSE = "the ultralytics integration"
IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
SPARSITY_LOG = "sparsity.jsonl"
SPARSITY_STATE = "sparsity_state.json"  # in ultralytics' weights folder, written with each checkpoint
RESULT = "result.json"
STAGES = ("baseline", "sparsity", "prune", "finetune")


def _module(name: str) -> Any:
    """An ultralytics module, or a one-line error naming the extra to install."""
    return require_extra(name, "ultralytics", PURPOSE)


@dataclass(frozen=True)
class YoloTask:
    """An ultralytics task this integration trains: where its trainer and model classes live."""

    name: str
    trainer_module: str
    trainer_class: str
    model_class: str

    def trainer(self) -> type:
        return getattr(_module(self.trainer_module), self.trainer_class)

    def model(self) -> type:
        return getattr(_module("ultralytics.nn.tasks"), self.model_class)


TASKS: dict[str, YoloTask] = {task.name: task for task in (
    YoloTask("detect", "ultralytics.models.yolo.detect", "DetectionTrainer", "DetectionModel"),
    YoloTask("segment", "ultralytics.models.yolo.segment", "SegmentationTrainer", "SegmentationModel"),
)}


def task_of(name: str) -> YoloTask:
    """The task record, or a one-line error listing the supported ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise PolarpruneError(f"ultralytics task {name!r} is not supported; supported: {', '.join(TASKS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Sparsity inside ultralytics' trainer


class UltralyticsSparsity:
    """polarprune's sparsity hooks run as callbacks of an ultralytics trainer (``attach(trainer)``).

    ``stop_on_target``: a reached MACs/latency target ends the training (ultralytics' ``trainer.stop``); otherwise
    lambda is 0 from then on and the run goes to its last epoch. ``cost``: the latency cost model a
    ``target_latency_ratio`` is checked with. ``epoch_rows`` holds each epoch's metrics (also in ``sparsity.jsonl``
    of the run folder)."""

    def __init__(self, sparsity: SparsityConfig | Mapping[str, Any], *, stop_on_target: bool = True, cost: Any = None) -> None:
        from pydantic import ValidationError

        from ..config import format_validation_error
        from ..sparsity import resolve_sparsity

        try:
            cfg = sparsity if isinstance(sparsity, SparsityConfig) else SparsityConfig.model_validate(dict(sparsity))
        except ValidationError as exc:
            raise PolarpruneError(format_validation_error(exc, "ultralytics sparsity", prefix="sparsity")) from None
        self.cfg = resolve_sparsity(cfg, source="ultralytics sparsity")
        self.stop_on_target = bool(stop_on_target)
        self.cost = cost
        self.hooks: list[Any] = []
        self.epoch_rows: list[dict[str, float]] = []
        self._model: nn.Module | None = None

    def attach(self, trainer: Any) -> "UltralyticsSparsity":
        """Register the callbacks on ``trainer`` (an ultralytics trainer, or a ``YOLO`` model: both have
        ``add_callback``); returns self."""
        for event, callback in (("on_pretrain_routine_end", self.setup), ("on_train_start", self.on_train_start),
                                ("on_train_batch_end", self.on_train_batch_end), ("on_train_epoch_end", self.on_train_epoch_end),
                                ("on_model_save", self.save_state)):
            trainer.add_callback(event, callback)
        return self

    @property
    def target_reached(self) -> bool:
        return any(getattr(hook, "target_reached", False) for hook in self.hooks)

    def setup(self, trainer: Any) -> None:
        """Build the hooks on the trainer's model and hook them into its optimizer; a latency target without a
        given ``cost`` gets the training workflow's latency cost model (measured once, cached)."""
        from ..sparsity import build_hooks
        from ..workflows.train import sparsity_cost_model

        model = _module("ultralytics.utils.torch_utils").unwrap_model(trainer.model)
        example = example_input(model, int(trainer.args.imgsz))
        cost = self.cost if self.cost is not None else sparsity_cost_model(self.cfg, model, example)
        self.hooks = build_hooks(self.cfg, model, example, cost=cost)
        check_prunable(self.hooks, self.cfg, type(model).__name__)
        self._model = model
        if getattr(trainer, "resume", False):
            self.load_state(trainer)
        trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self.before_step())
        trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: self.after_step())
        log.info("sparsity: %s on %d BNs of %s", self.cfg.regularizer, len(self.hooks[0].bn_names) if self.hooks else 0,
                 type(model).__name__)

    def on_train_start(self, trainer: Any) -> None:
        for hook in self.hooks:
            hook.on_train_start(self._model, int(trainer.epochs))

    def before_step(self) -> None:
        """Unscaled, clipped gradients, the step about to be taken: add the penalty's gradient and the subgradients."""
        model = self._model
        assert model is not None
        with torch.enable_grad():
            for hook in self.hooks:
                term = hook.loss_term(model)
                if term is not None:
                    term.backward()
        for hook in self.hooks:
            hook.after_backward(model)

    def after_step(self) -> None:
        """The parameters just changed (the EMA follows next): clamp, and the mid-epoch target checks."""
        for hook in self.hooks:
            hook.after_step(self._model)

    def on_train_batch_end(self, trainer: Any) -> None:
        if self.stop_on_target and self.target_reached:
            trainer.stop = True

    def on_train_epoch_end(self, trainer: Any) -> None:
        """The hooks' epoch end on the trained model (trial prunes, target check), plus the gammas of the EMA that
        ultralytics validates and saves (``ema_`` keys); a reached target stops the run."""
        from ..sparsity.monitor import gamma_summary

        row: dict[str, float] = {"epoch": float(trainer.epoch + 1)}
        for hook in self.hooks:
            row.update(hook.on_epoch_end(self._model, int(trainer.epoch)))
        ema = trainer.ema.ema if getattr(trainer, "ema", None) is not None else None
        if ema is not None and self.hooks:
            row.update({f"ema_{k}": v for k, v in gamma_summary([ema.get_submodule(n).weight for n in self.hooks[0].bn_names]).items()})
        self.epoch_rows.append(row)
        log.info("sparsity epoch %d: %s", trainer.epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        save_dir = getattr(trainer, "save_dir", None)
        if save_dir is not None and main_process():
            with open(Path(save_dir) / SPARSITY_LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.stop_on_target and self.target_reached:
            trainer.stop = True


    def save_state(self, trainer: Any) -> None:
        """Next to ultralytics' checkpoint: each hook's state (lambda, whether the target was reached), for a resume."""
        states = [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in self.hooks]
        atomic_write_json(Path(trainer.wdir) / SPARSITY_STATE, {"hooks": states, "epoch_rows": self.epoch_rows})

    def load_state(self, trainer: Any) -> None:
        """A resumed ultralytics run: the hooks' state saved with its ``last.pt`` (none saved: a fresh start)."""
        path = Path(trainer.wdir) / SPARSITY_STATE
        if not path.is_file():
            log.warning("sparsity: resuming without %s; lambda and the target state start afresh", path)
            return
        saved = read_json(path)
        for hook, state in zip(self.hooks, saved.get("hooks", [])):
            if state is not None and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(state)
        self.epoch_rows = list(saved.get("epoch_rows", []))


def main_process() -> bool:
    """Rank 0 of ultralytics' DDP workers, or a single process: the one that writes files."""
    return int(os.environ.get("RANK", "-1")) in (-1, 0)


def example_input(model: nn.Module, imgsz: int) -> torch.Tensor:
    """A zero image batch of one at ``imgsz`` on the model's device (what the analyses trace)."""
    first = next(model.parameters())
    channels = int(getattr(model, "yaml", {}).get("channels", 3)) if isinstance(getattr(model, "yaml", None), dict) else 3
    return torch.zeros(1, channels, imgsz, imgsz, device=first.device)


def check_prunable(hooks: list[Any], cfg: SparsityConfig, model_name: str) -> None:
    """A MACs or latency target needs channels the prune step can remove: a one-line error otherwise."""
    if cfg.target_macs_ratio is None and cfg.target_latency_ratio is None:
        return
    trials = [hook.trial for hook in hooks if getattr(hook, "trial", None) is not None]
    if trials and not trials[0].analysis.prunable_groups():
        raise PolarpruneError(f"sparsity target on {model_name}: the model has no prunable channel group (nothing to prune)")


# ---------------------------------------------------------------------------------------------------------------
# Inputs checked up front


def read_data_yaml(path: str | Path) -> dict[str, Any]:
    """The data set's YAML, with every image folder it names holding images and YOLO label files; a one-line
    error naming the folder otherwise (ultralytics would warn and train on nothing)."""
    source = Path(path)
    if not source.is_file():
        raise PolarpruneError(f"data set YAML not found: {source}")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolarpruneError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "train" not in data or "val" not in data or "names" not in data:
        raise PolarpruneError(f"{source}: a YOLO data YAML needs 'train', 'val' and 'names'")
    root = Path(data.get("path") or source.parent)
    root = root if root.is_absolute() else source.parent / root
    for split in ("train", "val"):
        check_split(root / str(data[split]), split, source)
    return data


def check_split(images: Path, split: str, source: Path) -> None:
    """Images in ``images`` and, for at least one, its label file in the matching ``labels`` folder."""
    if not images.is_dir():
        raise PolarpruneError(f"{source}: {split} image folder {images} does not exist")
    files = [p for p in sorted(images.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise PolarpruneError(f"{source}: {split} image folder {images} holds no images")
    labels = [label_path(p) for p in files]
    if not any(p.is_file() for p in labels):
        raise PolarpruneError(f"{source}: no labels for the {split} images in {images} "
                              f"(expected YOLO .txt files such as {labels[0]})")


def label_path(image: Path) -> Path:
    """Where YOLO keeps an image's label file: the last ``images`` folder of its path becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def build_yolo(model_yaml: str | Path, nc: int, task: str | None = None) -> nn.Module:
    """The ultralytics model a YAML describes (random weights), or a one-line error naming the YAML."""
    tasks = _module("ultralytics.nn.tasks")
    name = str(model_yaml)
    try:
        cfg = tasks.yaml_model_load(name)
        return task_of(task or tasks.guess_model_task(cfg)).model()(cfg, nc=nc, verbose=False)
    except PolarpruneError:
        raise
    except Exception as exc:  # noqa: BLE001  ultralytics raises anything on a broken YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolarpruneError(f"model YAML {name} does not build: {first}") from None


def model_task(model: nn.Module) -> str:
    """The ultralytics task of a built model (``detect``, ``segment``, ...)."""
    return str(getattr(model, "task", None) or _module("ultralytics.nn.tasks").guess_model_task(model))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline: baseline -> sparsity -> prune -> fine-tune, each stage's result file reused


# The pipeline's lambda when none is given: about 64x a mean-loss lambda (the CIFAR recipes' 1e-4 for L1-type
# pushes), since ultralytics' loss sums over the ``nbs`` (64) images of a step (docs/yolo.md, "Tuning lambda").
YOLO_LAMBDA = {"polarization": 5e-3, "l1": 1e-3, "mask-l1": 1e-3}
YOLO_REGULARIZER = "polarization"


def yolo_sparsity(section: Mapping[str, Any]) -> dict[str, Any]:
    """A sparsity section with the pipeline's defaults filled: the regularizer, and its YOLO lambda."""
    filled = {"regularizer": YOLO_REGULARIZER, **section}
    if "lbd" not in filled and filled["regularizer"] in YOLO_LAMBDA:
        filled["lbd"] = YOLO_LAMBDA[filled["regularizer"]]
    return filled


class YoloPipelineConfig(Section):
    """One YOLO pipeline run (``run_yolo``, ``polarprune yolo``); every training is ultralytics' own."""

    data: str = Field(description="the YOLO data set YAML (train, val, names)")
    model: str = Field("yolov8n.yaml", description="a model YAML (random start) or a local ultralytics .pt file")
    task: str | None = Field(None, description="detect or segment (null: from the model)")
    out: str = Field("runs/yolo", description="the run folder: one subfolder per stage, each with result.json")
    imgsz: int = Field(640, ge=32, description="training and pruning image size")
    batch: int = Field(16, ge=1)
    workers: int = Field(2, ge=0)
    device: str | None = Field(None, description="ultralytics' device string (null: its choice)")
    epochs: int = Field(100, ge=0, description="baseline epochs (0: no baseline, the model is used as given)")
    sparsity_epochs: int = Field(50, ge=1)
    finetune_epochs: int = Field(50, ge=0, description="0: no fine-tuning")
    sparsity: SparsityConfig = Field(default_factory=lambda: SparsityConfig(**yolo_sparsity({})),
                                     description="the sparsity section (default polarization; lambda from YOLO_LAMBDA)")
    stop_on_target: bool = Field(True, description="a reached sparsity target ends the sparsity stage")
    prune: dict[str, Any] = Field(default_factory=lambda: {"strategy": "grad"}, description="PruneOptions fields")
    train_args: dict[str, Any] = Field(default_factory=dict, description="more ultralytics training arguments, every stage")

    @field_validator("sparsity", mode="before")
    @classmethod
    def _yolo_defaults(cls, value: Any) -> Any:
        return yolo_sparsity(value) if isinstance(value, Mapping) else value

    @field_validator("train_args")
    @classmethod
    def _own_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & {"model", "data", "epochs", "imgsz", "batch", "workers", "device", "project", "name", "resume"})
        if taken:
            raise ValueError(f"train_args may not set {', '.join(taken)} (they are keys of the pipeline)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "YoloPipelineConfig":
        from ..pruning.options import parse_options
        from ..sparsity import resolve_sparsity

        if self.sparsity.regularizer == "none":
            raise ValueError("sparsity.regularizer: none has no sparsity stage; choose l1, polarization or mask-l1")
        if self.task is not None:
            task_of(self.task)
        resolve_sparsity(self.sparsity, source="yolo pipeline")
        parse_options(options=None, **self.prune)
        return self


def load_pipeline_config(config: YoloPipelineConfig | Mapping[str, Any]) -> YoloPipelineConfig:
    """``config`` validated; a one-line error naming the key otherwise."""
    if isinstance(config, YoloPipelineConfig):
        return config
    from pydantic import ValidationError

    from ..config import format_validation_error

    try:
        return YoloPipelineConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise PolarpruneError(format_validation_error(exc, "yolo pipeline")) from None


def train_args(cfg: YoloPipelineConfig, stage: str, model: str, epochs: int) -> dict[str, Any]:
    """ultralytics' arguments for one stage: its folder is ``OUT/<stage>``."""
    args = {"model": model, "data": str(Path(cfg.data).resolve()), "epochs": epochs, "imgsz": cfg.imgsz,
            "batch": cfg.batch, "workers": cfg.workers, "project": str(Path(cfg.out).resolve()), "name": stage,
            "exist_ok": True, **cfg.train_args}
    if cfg.device is not None:
        args["device"] = cfg.device
    return args


def stage_trainer(trainer_class: type, cfg: YoloPipelineConfig, stage: str, model: str, epochs: int) -> Any:
    """The stage's ultralytics trainer; when an earlier run of the stage was interrupted (its ``last.pt`` still holds
    the optimizer and epochs are left), ultralytics' own resume picks it up from there."""
    overrides = train_args(cfg, stage, model, epochs)
    last = Path(overrides["project"]) / stage / "weights" / "last.pt"
    if interrupted(last, epochs):
        log.info("yolo: %s resumes %s", stage, last)
        overrides["resume"] = str(last)
    return trainer_class(overrides=overrides)


def interrupted(last: Path, epochs: int) -> bool:
    """Whether ``last`` is a checkpoint of an unfinished run (a finished one has its optimizer stripped)."""
    if not last.is_file():
        return False
    ckpt, _ = _module("ultralytics.nn.tasks").torch_safe_load(str(last))
    return ckpt.get("optimizer") is not None and int(ckpt.get("epoch", -1)) + 1 < epochs


def train_result(trainer: Any) -> dict[str, Any]:
    """What a finished ultralytics training leaves: its weights (best, last) and final validation metrics."""
    metrics = {str(k): float(v) for k, v in (trainer.metrics or {}).items() if _is_number(v)}
    best = Path(trainer.best)
    return {"best": str(best) if best.is_file() else None, "last": str(trainer.last), "metrics": metrics}


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def reuse_or_run(folder: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The stage's ``result.json`` when present (the stage is done), else run it and write that file last."""
    result_file = folder / RESULT
    if result_file.is_file():
        log.info("yolo: %s done before, reusing %s", folder.name, result_file)
        return dict(read_json(result_file))
    result = run()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_file, result)
    return result


def run_baseline(cfg: YoloPipelineConfig, task: YoloTask) -> dict[str, Any]:
    """Plain ultralytics training of ``cfg.model``; with 0 epochs the model itself is the baseline."""
    if cfg.epochs == 0:
        return {"best": cfg.model, "last": cfg.model, "metrics": {}, "skipped": True}
    trainer = stage_trainer(task.trainer(), cfg, "baseline", cfg.model, cfg.epochs)
    trainer.train()
    return train_result(trainer)


def run_sparsity(cfg: YoloPipelineConfig, task: YoloTask, start: str) -> dict[str, Any]:
    """ultralytics training with the sparsity callbacks, from the baseline's weights. The prune step takes
    ``last`` (the EMA when the target was reached, or at the end), not the best-fitness epoch."""
    trainer = stage_trainer(task.trainer(), cfg, "sparsity", start, cfg.sparsity_epochs)
    sparsity = UltralyticsSparsity(cfg.sparsity, stop_on_target=cfg.stop_on_target).attach(trainer)
    trainer.train()
    return {**train_result(trainer), "target_reached": sparsity.target_reached, "epochs": sparsity.epoch_rows}


def load_trained(path: str | Path) -> nn.Module:
    """The model of an ultralytics checkpoint (its EMA), float32, eval mode. ultralytics' own files are pickles:
    load only the ones your runs wrote."""
    source = Path(path)
    if not source.is_file():
        raise PolarpruneError(f"ultralytics weights not found: {source}")
    model, _ = _module("ultralytics.nn.tasks").load_checkpoint(str(source))
    for param in model.parameters():  # the EMA's are frozen; the dependency analysis prunes trainable layers only
        param.requires_grad_(True)
    return model.float().eval()


def run_prune(cfg: YoloPipelineConfig, task: YoloTask, weights: str, folder: Path) -> dict[str, Any]:
    """The sparsity stage's model pruned with the cost model its strategy asks for (``latency-target``: measured
    latency, as the prune command does); the pruned model goes to a polarprune file (no pickle) that carries the
    model YAML, so ``load_pruned`` rebuilds it into ultralytics' class."""
    from ..deploy.latency_cost import prune_with_cost_model
    from ..serialization import save

    model = load_trained(weights)
    pruned, report, latency = prune_with_cost_model(model, example_input(model, cfg.imgsz), **cfg.prune)
    folder.mkdir(parents=True, exist_ok=True)
    path = save(pruned, folder / "pruned.safetensors",
                extra={"yolo_yaml": model.yaml, "nc": int(model.nc), "task": task.name})
    log.info("yolo: pruned MACs %s -> %s", f"{report.macs_before:,}", f"{report.macs_after:,}")
    return {"weights": str(path), "report": report.summary(), "latency": latency.as_dict() if latency is not None else None}


def load_pruned(path: str | Path) -> nn.Module:
    """A pruned YOLO file back into ultralytics' model class: built from the stored YAML, the file's plan applied,
    weights filled (``serialization.load`` with the fresh instance)."""
    from ..serialization import load, read_metadata

    extra = read_metadata(path)["extra"]
    if "yolo_yaml" not in extra:
        raise PolarpruneError(f"{path}: not a pruned YOLO file (no model YAML in its metadata)")
    fresh = task_of(extra["task"]).model()(dict(extra["yolo_yaml"]), nc=int(extra["nc"]), verbose=False)
    return load(path, model=fresh)


def pruned_trainer(task: YoloTask, module: nn.Module) -> type:
    """The task's trainer class whose ``get_model`` returns ``module`` (the pruned network, as it is) instead
    of building one from a YAML: ultralytics then trains, validates and saves it as its own."""
    base = task.trainer()

    def get_model(self: Any, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if weights is not None:  # ultralytics resumes: the interrupted run's weights, same pruned shapes
            module.load_state_dict(weights.float().state_dict())
        return module

    return type(f"Pruned{base.__name__}", (base,), {"get_model": get_model, "__doc__": pruned_trainer.__doc__})


def run_finetune(cfg: YoloPipelineConfig, task: YoloTask, pruned: str) -> dict[str, Any]:
    """ultralytics training of the pruned model (never rebuilt from the YAML); 0 epochs: the pruned file as is."""
    if cfg.finetune_epochs == 0:
        return {"best": None, "last": None, "metrics": {}, "skipped": True}
    module = load_pruned(pruned)
    trainer = stage_trainer(pruned_trainer(task, module), cfg, "finetune", pruned, cfg.finetune_epochs)
    trainer.train()
    return train_result(trainer)


def check_model(cfg: YoloPipelineConfig, nc: int) -> YoloTask:
    """The task of ``cfg.model``: a YAML must build, a .pt file must exist (nothing is downloaded)."""
    if cfg.model.lower().endswith(".pt"):
        if not Path(cfg.model).is_file():
            raise PolarpruneError(f"model file not found: {cfg.model} (give a local .pt or a model YAML)")
        if not code_trusted():
            raise PolarpruneError(f"model {cfg.model}: an ultralytics .pt file is a pickle and loading it runs code; "
                                  f"pass --trust-code (Python: inside polarprune.models.imports.trusting_code()) if you "
                                  f"trust it, or give a model YAML")
        return task_of(cfg.task or str(_module("ultralytics.nn.tasks").guess_model_task(cfg.model)))
    return task_of(cfg.task or model_task(build_yolo(cfg.model, nc, cfg.task)))


def run_yolo(config: YoloPipelineConfig | Mapping[str, Any]) -> dict[str, Any]:
    """baseline -> sparsity -> prune -> fine-tune in ``config.out``; a stage whose ``result.json`` exists is not
    run again (rerun the same call to resume). Returns every stage's result (also ``summary.json``)."""
    cfg = load_pipeline_config(config)
    data = read_data_yaml(cfg.data)
    task = check_model(cfg, len(data["names"]))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = reuse_or_run(out / "baseline", lambda: run_baseline(cfg, task))
    start = baseline["best"] or baseline["last"]
    sparsity = reuse_or_run(out / "sparsity", lambda: run_sparsity(cfg, task, start))
    pruned = reuse_or_run(out / "prune", lambda: run_prune(cfg, task, sparsity["last"], out / "prune"))
    finetune = reuse_or_run(out / "finetune", lambda: run_finetune(cfg, task, pruned["weights"]))
    summary = {"config": cfg.model_dump(), "baseline": baseline, "sparsity": sparsity, "prune": pruned, "finetune": finetune}
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = ["UltralyticsSparsity", "YoloPipelineConfig", "YoloTask", "TASKS", "run_yolo", "read_data_yaml", "build_yolo",
           "load_trained", "load_pruned", "pruned_trainer", "example_input", "label_path", "load_pipeline_config"]
