"""The composition root of one training run: a ``TrainConfig`` becomes data, model, hooks, optimizer
and a ``Trainer``. The order of the steps is fixed: it decides the random numbers each part draws.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..config import DataConfig, DistillConfig, SparsityConfig, TrainConfig, TrainSection, apply_overrides, dump_yaml, read_yaml, validate
from ..data import build_data, probe_batch
from ..deploy.latency_cost import latency_cost_model
from ..deploy.runtimes import runtime
from ..errors import PolarpruneError
from ..fileio import atomic_write_text
from ..hardware import cpu_native_bf16
from ..models import create, get_entry, init_bn_gamma, record_input_shape
from ..pruning.latency_cost import LatencyCost
from ..serialization import load_any_model
from ..sparsity import build_hooks, resolve_sparsity
from ..training.distill import DistillationLoss
from ..training.engine import Trainer, TrainResult
from ..training.hooks import TrainHook
from ..training.schedule import lr_at

log = logging.getLogger(__name__)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training config from YAML (or defaults when ``path`` is None), apply overrides and check
    it all, the sparsity regularizer's own parameters included."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    source = str(path) if path else "config"
    cfg = validate(TrainConfig, data, source=source)
    return cfg.model_copy(update={"sparsity": resolve_sparsity(cfg.sparsity, source)})


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available (the local rank's GPU under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PolarpruneError(f"device {name!r}: CUDA is not available on this machine (use device=cpu)")
        if name == "cuda" and dist.env_world_size() > 1:
            name = f"cuda:{dist.local_rank()}"
    elif name != "cpu":
        raise PolarpruneError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; in deterministic mode also pin the algorithms."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def parameter_groups(model: nn.Module, weight_decay: float, bn_weight_decay: bool) -> list[dict[str, Any]]:
    """SGD parameter groups; BN scaling factors and shifts skip weight decay when switched off."""
    if bn_weight_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if p.requires_grad and id(p) in bn_params]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(t: TrainSection, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with (optional Nesterov) momentum over ``parameter_groups``."""
    return torch.optim.SGD(parameter_groups(model, t.weight_decay, t.bn_weight_decay), lr=t.lr, momentum=t.momentum,
                           nesterov=t.nesterov and t.momentum > 0)


def amp_dtype_of(t: TrainSection, device: torch.device) -> torch.dtype | None:
    """Mixed precision: None when off; bfloat16 on the CPU; ``amp_dtype`` on GPUs."""
    if not t.amp:
        return None
    return torch.float16 if device.type != "cpu" and t.amp_dtype == "float16" else torch.bfloat16


_warned_emulated_bf16: list[bool] = []  # once per process: a pipeline builds a trainer per stage


def warn_emulated_bf16(amp_dtype: torch.dtype | None, device: torch.device, native: bool | None = None) -> bool:
    """Whether bf16 autocast is asked of a CPU that only emulates bf16: there it trains several
    times slower than fp32 (BENCHMARKS.md, section 4), a setting nobody wants by accident. The
    first time in a process, rank 0 logs a warning."""
    if amp_dtype != torch.bfloat16 or device.type != "cpu":
        return False
    if (cpu_native_bf16() if native is None else native) is not False:
        return False
    if _warned_emulated_bf16 or dist.rank() != 0:
        return True
    _warned_emulated_bf16.append(True)
    log.warning("train.amp: this CPU has no native bf16 (no AVX-512 BF16 or AMX), so bf16 autocast is emulated and "
                "trains several times slower than fp32; set train.amp=false (train.channels_last=true is the faster "
                "CPU setting there)")
    return True


def data_config_for(cfg: TrainConfig) -> DataConfig:
    """``cfg.data`` with the model's own normalisation and input size filled in when
    ``data.normalization`` is ``model`` (explicit ``mean``/``std``/``image_size`` win)."""
    if cfg.data.normalization != "model":
        return cfg.data
    entry = get_entry(cfg.model.name)
    if entry is None:
        raise PolarpruneError(f"data.normalization is 'model' but model {cfg.model.name!r} has no registry entry")
    update: dict[str, Any] = {}
    if cfg.data.mean is None and entry.mean is not None:
        update["mean"] = tuple(entry.mean)
    if cfg.data.std is None and entry.std is not None:
        update["std"] = tuple(entry.std)
    if cfg.data.image_size is None:
        update["image_size"] = entry.input_size
    return cfg.data.model_copy(update=update)


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The model a config asks for: from a checkpoint/pruned file, or fresh from the registry."""
    if cfg.model.checkpoint:
        model = load_any_model(cfg.model.checkpoint)
        if cfg.model.bn_init is not None:
            init_bn_gamma(model, cfg.model.bn_init, cfg.model.bn_init_scope)
        return model
    classes = cfg.model.num_classes or num_classes
    if cfg.model.num_classes and cfg.model.num_classes != num_classes:
        raise PolarpruneError(
            f"model.num_classes is {cfg.model.num_classes} but data set {cfg.data.name!r} has {num_classes} classes"
        )
    return create(cfg.model.name, classes, in_channels=in_channels, bn_init=cfg.model.bn_init,
                  bn_init_scope=cfg.model.bn_init_scope, weights=cfg.model.weights, **cfg.model.options)


def build_criterion(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Cross-entropy (with ``label_smoothing``), distilled from ``cfg.distill.teacher`` when set:
    the teacher (a checkpoint or model file) is loaded on ``device``, in eval mode, frozen."""
    task = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    if cfg.distill is None:
        return task
    return distillation_criterion(cfg.distill, task, device, channels_last=cfg.train.channels_last,
                                  dtype=getattr(torch, cfg.train.dtype))


def distillation_criterion(
    distill: DistillConfig, task: nn.Module, device: torch.device, *, channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> DistillationLoss:
    """``DistillationLoss`` with the teacher read from ``distill.teacher`` (a file path)."""
    teacher = load_any_model(distill.teacher).to(device, dtype)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return DistillationLoss(teacher, task, temperature=distill.temperature, alpha=distill.alpha)


def sparsity_cost_model(cfg: SparsityConfig, model: nn.Module, example_inputs: torch.Tensor) -> LatencyCost | None:
    """The latency cost model ``cfg.target_latency_ratio`` is checked with (None without that target): tables
    of a float32 CPU copy of ``model`` in ``cfg.latency_runtime``, measured on rank 0 (cached) and sent to the
    others, so every rank decides from the same numbers. An unknown runtime is a one-line error."""
    if cfg.target_latency_ratio is None:
        return None
    runtime(cfg.latency_runtime)  # checked on every rank before any work
    cost = None
    if dist.is_main():
        cpu_model = copy.deepcopy(model).to("cpu", torch.float32)
        cost = latency_cost_model(cpu_model, example_inputs[:1].to("cpu", torch.float32), cfg.latency_runtime,
                                  cfg.latency_batch, cfg.latency_threads, cache_dir=cfg.latency_cache)
    return dist.broadcast_object(cost)


def build_trainer(cfg: TrainConfig, *, model: nn.Module | None = None, hooks: Sequence[TrainHook] | None = None,
                  resume: bool = True) -> Trainer:
    """A ``Trainer`` for ``cfg``: ``model`` (e.g. a pruned one to fine-tune) replaces the config's
    model, ``hooks`` replace the sparsity hooks of ``cfg.sparsity``."""
    cfg = cfg.model_copy(update={"sparsity": resolve_sparsity(cfg.sparsity)})  # checked before anything runs
    device = resolve_device(cfg.device)
    dist.init_from_env(device.type)
    seed_everything(cfg.seed, cfg.deterministic)
    batch = cfg.data.per_process_batch(dist.world_size())
    data_cfg = data_config_for(cfg).model_copy(update={"batch_size": batch})
    data = build_data(data_cfg, seed=cfg.seed, rank=dist.rank(), world_size=dist.world_size())
    if len(data.train_loader) == 0 and cfg.train.epochs > 0:
        raise PolarpruneError(f"data.batch_size {batch} is larger than the training set "
                              f"({data.train_size} images over {dist.world_size()} process(es))")
    model = model if model is not None else build_model(cfg, data.num_classes, data.in_channels)
    record_input_shape(model, (data.in_channels, *data.input_size))  # checkpoints and model files say what it takes
    t = cfg.train
    dtype = getattr(torch, t.dtype)
    model.to(device, dtype)
    if hooks is None:
        probe = probe_batch(data, 8).to(device, dtype)
        hooks = build_hooks(cfg.sparsity, model, probe, cost=sparsity_cost_model(cfg.sparsity, model, probe))
    amp_dtype = amp_dtype_of(t, device)
    warn_emulated_bf16(amp_dtype, device)
    return Trainer(
        model, data.train_loader, data.eval_loader, build_optimizer(t, model), epochs=t.epochs,
        lr_schedule=partial(lr_at, t.schedule, t.lr, total_epochs=t.epochs), out_dir=cfg.out, hooks=hooks, device=device,
        criterion=build_criterion(cfg, device), amp_dtype=amp_dtype, channels_last=t.channels_last,
        sync_bn=t.sync_bn, dtype=dtype, eval_every=t.eval_every, max_steps_per_epoch=t.max_steps_per_epoch, progress=t.progress,
        progress_interval=t.progress_interval,
        run_config=cfg.model_dump(mode="json"), resume=resume, max_bad_steps=t.max_bad_steps,
    )


def run_training(cfg: TrainConfig, **options: Any) -> TrainResult:
    """Train as ``cfg`` says (resuming from ``cfg.out``/last.pt if present), with ``build_trainer``'s
    ``options``; the config is saved as ``config.yaml`` next to the checkpoints."""
    trainer = build_trainer(cfg, **options)
    if dist.is_main():
        atomic_write_text(trainer.out_dir / "config.yaml", dump_yaml(cfg))
    return trainer.fit()
