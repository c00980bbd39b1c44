"""The stages of the methods benchmarks on the library: one training stage, cached and resumable.

``bench_methods_cifar.py`` and ``bench_methods_full.py`` run each stage through
``polarprune.workflows.train.run_training`` with a validated ``TrainConfig`` and keep what a
finished stage gives in its folder:

- ``stage.json``: the stage's record (top-1, epochs, wall time, throughput, the machine),
  written atomically with ``polarprune.fileio``;
- ``model.safetensors``: the model, written with ``polarprune.serialization.save`` (weights,
  spec and pruning plan; nothing is pickled) and read back with ``serialization.load``.

``CifarStages`` is what both benchmarks ask of their data: the loaders, a probe batch, top-1
with the per-image correctness that paired tests need, the regularized BNs and their |gamma|.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import machine_info
from stats import encode_correct

from polarprune import serialization
from polarprune.config import TrainConfig, deep_merge
from polarprune.data import build_data, probe_batch
from polarprune.fileio import atomic_write_json, read_json
from polarprune.sparsity.selection import regularized_bn_names
from polarprune.workflows.train import run_training

ARCHIVE = "/work/shared/data/cifar10-jpg.tar.gz"
INPUT_SHAPE = (3, 32, 32)
RECORD = "stage.json"
MODEL_FILE = "model.safetensors"
LABELS = {
    "none": "no regularizer + global threshold",
    "l1": "L1 (Network Slimming) + global threshold",
    "polarization": "polarization + grad",
    "masksparsity": "MaskSparsity (L1 -> mask -> mask-L1)",
    "tp-bnscale": "Torch-Pruning BNScalePruner",
    "tp-groupnorm": "Torch-Pruning GroupNormPruner",
}


def stage_config(base: dict[str, Any], out: Path, epochs: int, sparsity: dict[str, Any] | None = None,
                 **train: Any) -> TrainConfig:
    """A validated training config for one stage (evaluation only after the last epoch)."""
    data = deep_merge(base, {"out": str(out), "train": {"epochs": epochs, "eval_every": max(epochs, 1), **train},
                             "sparsity": sparsity or {"regularizer": "none", "monitor": False}})
    return TrainConfig.model_validate(data)


def save_model(model: nn.Module, path: Path) -> Path:
    """Write ``model`` as a polarprune safetensors file (atomically; never pickled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return serialization.save(model, path)


def load_model(path: Path) -> nn.Module:
    """The model a stage or a method saved, rebuilt from its file's spec, on the CPU in eval mode."""
    return serialization.load(path).cpu().eval()


def read_record(path: Path) -> dict[str, Any] | None:
    """A stage's or a method's JSON record; None while it has not finished."""
    return read_json(path)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record atomically."""
    atomic_write_json(path, record)


def stage_record(cfg: TrainConfig, result: Any, wall_s: float) -> dict[str, Any]:
    """What a finished stage records: top-1, epochs, wall time, median throughput, its last epoch, the machine."""
    history = result.history or []
    return {
        "top1": result.final_top1, "epochs": cfg.train.epochs, "wall_s": round(wall_s, 1),
        "images_per_s": statistics.median([r["images_per_s"] for r in history]) if history else None,
        "last_epoch": {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))},
        "machine": machine_info(),  # a resumed run's stages may have finished on several machines
    }


def train_stage(cfg: TrainConfig, model: nn.Module | None = None, hooks: list | None = None,
                resume: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or read back the finished) stage at ``cfg.out``; returns its model and its record."""
    out = Path(cfg.out)
    done = read_record(out / RECORD)
    if done is not None:
        return load_model(out / MODEL_FILE), done
    start = time.perf_counter()
    result = run_training(cfg, model=model, hooks=hooks, resume=resume)
    record = stage_record(cfg, result, time.perf_counter() - start)
    trained = result.model.cpu().eval()
    save_model(trained, out / MODEL_FILE)
    write_record(out / RECORD, record)  # last: a record means the model file is complete
    return trained, record


def per_image_correct(model: nn.Module, loader: Any) -> list[bool]:
    """Whether ``model``'s top-1 class is right, image by image, in the loader's (fixed) order."""
    was_training = model.training
    model.eval()
    correct: list[bool] = []
    with torch.no_grad():
        for images, labels in loader:
            correct += model(images).argmax(dim=1).eq(labels).tolist()
    model.train(was_training)
    return correct


class CifarStages:
    """What every methods benchmark asks of its data: the loaders (built once from ``self.base``),
    a fixed probe batch, top-1 and per-image correctness, the regularized BNs and their |gamma|."""

    base: dict[str, Any]
    _bundle: Any = None
    _example: torch.Tensor | None = None

    @property
    def bundle(self) -> Any:
        if self._bundle is None:
            cfg = TrainConfig.model_validate(self.base)
            self._bundle = build_data(cfg.data, seed=cfg.seed)
        return self._bundle

    def example(self) -> torch.Tensor:
        if self._example is None:
            self._example = probe_batch(self.bundle, 8)
        return self._example

    def per_image(self, model: nn.Module) -> dict[str, Any]:
        """Per-image correctness on the test images in their fixed order (``stats.encode_correct``:
        ``n`` and a bitset) with the fp32 top-1 (%) it gives; paired tests compare two of these."""
        correct = per_image_correct(model, self.bundle.eval_loader)
        return {"top1": 100.0 * sum(correct) / max(len(correct), 1), **encode_correct(correct)}

    def top1(self, model: nn.Module) -> float:
        return self.per_image(model)["top1"]

    def bn_names(self, model: nn.Module) -> list[str]:
        return regularized_bn_names(model, self.example())

    def gammas(self, model: nn.Module) -> list[float]:
        """|gamma| of the BNs polarprune regularizes (bn1, bn2 of every block), for the histograms."""
        wanted = set(self.bn_names(model))
        return [v for name, m in model.named_modules() if name in wanted for v in m.weight.detach().abs().flatten().tolist()]
