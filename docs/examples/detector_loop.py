"""Sparsity training of a torchvision detector in a plain PyTorch loop, then pruning, fine-tuning and mAP.

docs/detection.md walks through it; tests/integrations/test_detector_example.py runs it on a tiny set.
Run it on a set made by ``polarprune make-detection-data``:

    python docs/examples/detector_loop.py --data DIR --steps 300 --image-size 160
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from polarprune import prune_model
from polarprune.config import SparsityConfig
from polarprune.data.coco import CocoImages, coco_map, predictions_from_outputs
from polarprune.sparsity import build_hooks
from polarprune.training.hooks import TrainHook


def build_detector(num_classes: int, image_size: int) -> nn.Module:
    """SSDlite320-MobileNetV3 from scratch (weights=None) for ``num_classes`` classes plus the background,
    run at ``image_size`` pixels instead of 320."""
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    model.transform.min_size, model.transform.max_size = (image_size,), image_size
    model.transform.fixed_size = (image_size, image_size)
    return model


def batches(data: CocoImages, batch_size: int, seed: int) -> Iterator[tuple[list, list]]:
    """Shuffled batches of (images, targets), epoch after epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [data[i] for i in order[start:start + batch_size]]
            yield [image for image, _ in items], [target for _, target in items]


def train(model: nn.Module, data: CocoImages, hooks: Sequence[TrainHook], steps: int, lr: float = 0.01,
          batch_size: int = 4, seed: int = 0) -> dict[str, float]:
    """``steps`` SGD steps with the hooks at their moments; returns the hooks' end-of-run numbers."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    model.train()
    for hook in hooks:
        hook.on_train_start(model, 1)
    for _, (images, targets) in zip(range(steps), batches(data, batch_size, seed)):
        loss = sum(model(images, targets).values())       # the detector's own losses
        for hook in hooks:                                  # polarization: its penalty joins the loss
            term = hook.loss_term(model)
            if term is not None:
                loss = loss + term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in hooks:                                  # L1, mask-L1: lambda * sign(gamma) on the gradient
            hook.after_backward(model)
        optimizer.step()
        for hook in hooks:                                  # clamp the gammas; target checks
            hook.after_step(model)
    metrics: dict[str, float] = {}
    for hook in hooks:                                      # trial prune and gamma monitor
        metrics.update(hook.on_epoch_end(model, 0))
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, data: CocoImages, batch_size: int = 8) -> dict[str, float]:
    """COCO mAP50-95 and mAP50 of ``model`` on ``data``."""
    model.eval()
    predictions = []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        outputs = model([image for image, _ in items])
        predictions += predictions_from_outputs(outputs, [target["image_id"] for _, target in items])
    return coco_map(predictions, data.subset_ground_truth())


def parameters(model: nn.Module) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def run(data_dir: str | Path, *, steps: int = 300, finetune_steps: int = 100, image_size: int = 160,
        sparsity: dict[str, Any] | None = None, strategy: str = "grad", prune_options: dict[str, Any] | None = None,
        val_images: int | None = None, batch_size: int = 4) -> dict[str, Any]:
    """Sparsity training -> prune -> fine-tune on a set made by ``make-detection-data``; mAP at each step."""
    root = Path(data_dir)
    train_set = CocoImages(root / "images", root / "annotations" / "instances_train.json")
    val_set = CocoImages(root / "images", root / "annotations" / "instances_val.json", limit=val_images)
    torch.manual_seed(0)
    model = build_detector(len(train_set.data["categories"]), image_size)
    example = [val_set[0][0]]                               # a detector takes a list of images
    cfg = SparsityConfig(**(sparsity or {"regularizer": "polarization", "lbd": 1e-4, "t": 1.2}))
    hooks = build_hooks(cfg, model, example)
    monitor = train(model, train_set, hooks, steps, batch_size=batch_size)
    sparse = evaluate(model, val_set)
    pruned, report = prune_model(model, example_inputs=example, strategy=strategy, **(prune_options or {}))
    at_prune = evaluate(pruned, val_set)
    train(pruned, train_set, [], finetune_steps, batch_size=batch_size)
    return {"monitor": monitor, "map_sparse": sparse, "map_pruned": at_prune, "map_finetuned": evaluate(pruned, val_set),
            "params": parameters(model), "params_pruned": parameters(pruned), "macs_ratio": report.macs_after / report.macs_before}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder written by polarprune make-detection-data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--lbd", type=float, default=1e-4)
    args = parser.parse_args(argv)
    result = run(args.data, steps=args.steps, finetune_steps=args.finetune_steps, image_size=args.image_size,
                 sparsity={"regularizer": "polarization", "lbd": args.lbd, "t": 1.2})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
