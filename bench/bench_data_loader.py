"""What the in-memory loader costs next to a training step (CIFAR-sized data, batch 128).

Side by side in one process, interleaved and repeated: (a) producing one augmented,
normalised batch from 50,000 uint8 32x32x3 images with ``InMemoryLoader`` (crop with 4-pixel
padding + flip); (b) one SGD step of CIFAR ResNet-56 on such a batch (forward, backward,
step). Reports the medians and their ratio, and writes JSON + Markdown to bench/results/.

    .venv/bin/python bench/bench_data_loader.py [--repeats 7] [--batch 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, data_sizes, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.data import InMemoryLoader  # noqa: E402
from polarprune.models import create  # noqa: E402

IMAGES = 50_000


def time_loader_batches(loader: InMemoryLoader, iterator, count: int) -> float:
    """Seconds per batch over ``count`` batches (a new epoch when the iterator runs out)."""
    start = time.perf_counter()
    for _ in range(count):
        try:
            next(iterator[0])
        except StopIteration:
            loader.set_epoch(loader.epoch + 1)
            iterator[0] = iter(loader)
            next(iterator[0])
    return (time.perf_counter() - start) / count


def time_train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch, count: int) -> float:
    """Seconds per SGD step (forward, cross-entropy, backward, step)."""
    images, labels = batch
    criterion = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(count):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()
    return (time.perf_counter() - start) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (medians over them)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--loader-batches", type=int, default=20, help="batches timed per round")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    add_provenance_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (IMAGES,))
    loader = InMemoryLoader(
        images, labels, batch_size=args.batch, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
        train=True, padding=4, flip=True, seed=args.seed,
    )
    iterator = [iter(loader)]
    model = create("resnet56", 10)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batch = next(iter(loader))

    time_loader_batches(loader, iterator, 3)  # warm-up
    time_train_steps(model, optimizer, batch, 1)
    loader_s, step_s = [], []
    for _ in range(args.repeats):
        loader_s.append(time_loader_batches(loader, iterator, args.loader_batches))
        step_s.append(time_train_steps(model, optimizer, batch, args.steps))
    loader_median = statistics.median(loader_s)
    step_median = statistics.median(step_s)
    ratios = [a / b for a, b in zip(loader_s, step_s)]
    result = {
        "benchmark": "in-memory loader batch vs ResNet-56 training step",
        "provenance": provenance(args.seed, data=data_sizes(IMAGES, 0, "random uint8 32x32 images (no dataset)"),
                                 allow_dirty=args.allow_dirty),
        "batch_size": args.batch,
        "repeats": args.repeats,
        "loader_ms_per_batch_median": 1e3 * loader_median,
        "train_step_ms_median": 1e3 * step_median,
        "loader_over_step_median_ratio": statistics.median(ratios),
        "loader_ms_per_batch_all": [1e3 * v for v in loader_s],
        "train_step_ms_all": [1e3 * v for v in step_s],
    }
    markdown = (
        "# In-memory loader vs ResNet-56 training step (CPU)\n\n" + provenance_markdown(result["provenance"]) + "\n"
        f"Batch {args.batch}; {args.repeats} interleaved rounds; medians.\n\n"
        "| what | median per batch |\n|---|---|\n"
        f"| loader: gather, 4-px crop + flip, normalise | {1e3 * loader_median:.2f} ms |\n"
        f"| ResNet-56 step: forward + backward + SGD | {1e3 * step_median:.0f} ms |\n"
        f"| loader / step (median of per-round ratios) | {100 * statistics.median(ratios):.2f} % |\n"
    )
    write_results("data_loader", result, markdown)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_all")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
