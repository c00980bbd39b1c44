"""Training throughput of the engine against a bare PyTorch loop (acceptance: >= 95 %).

Both train the same network (CIFAR ResNet-56 by default, the same initial weights) on the
same in-memory uint8 32x32 images (the ``fake`` data set), batch 128, on the CPU, with the
same work per step: take a shuffled batch, random 4-pixel crop + horizontal flip, normalise,
forward, cross-entropy, backward, SGD step (momentum 0.9, weight decay 5e-4).

- engine: ``build_trainer(cfg).fit(on_epoch=...)`` (the public API) with
  ``train.max_steps_per_epoch = steps``, progress off, evaluation only after the last epoch.
  One engine trial is one epoch: the time from the end of one ``on_epoch`` callback to the
  start of the next, so it includes everything ``fit`` does per epoch besides evaluation
  (the loader, the per-step bookkeeping, writing ``last.pt``, metrics.jsonl, TensorBoard);
- bare: the loop a user writes by hand, run inside the ``on_epoch`` callback, so that the
  trials interleave: engine, bare, engine, bare, ...

Each CPU setting runs the whole comparison on its own (``--settings``, default all four):
``fp32-nchw``, ``fp32-channels_last`` (``train.channels_last``: model and batches in the
channels-last memory format, exact), ``bf16-nchw`` and ``bf16-channels_last`` (``train.amp``:
bfloat16 autocast on the CPU, not exact); the bare loop does the same conversions by hand.

The first engine epoch and a few bare steps are a warm-up; the last engine epoch (which
evaluates) is not timed. Each trial is timed by the wall clock and by the CPU time of the
process: on a shared machine other jobs steal the CPU at random, which the wall clock sees and
the CPU time does not (with ``--threads 1`` the CPU time is the work done). Reports medians of
images/s, the ratios of the medians and the per-round ratios per setting (acceptance: both
ratios >= 95 % in every setting); writes bench/results/engine_throughput.{json,md} (the top-level
numbers are those of ``fp32-nchw``; ``cpu_settings`` holds every setting).

    .venv/bin/python bench/bench_engine_throughput.py [--trials 9] [--steps 10] [--batch-size 128] [--threads 1]
        [--settings fp32-nchw fp32-channels_last bf16-nchw bf16-channels_last]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, clock, data_sizes, paired_ratios, provenance, provenance_markdown, summary, write_results  # noqa: E402

from polarprune.config import TrainConfig, validate  # noqa: E402
from polarprune.data import crop_flip, load_fake_splits  # noqa: E402
from polarprune.workflows.train import build_trainer  # noqa: E402

ACCEPTANCE_RATIO = 0.95
WARMUP_STEPS = 3  # untimed bare steps before the first timed trial (allocations, lazy inits)
RESULT_STEM = "engine_throughput"
# setting -> (bf16 autocast, channels_last)
CPU_SETTINGS: dict[str, tuple[bool, bool]] = {
    "fp32-nchw": (False, False),
    "fp32-channels_last": (False, True),
    "bf16-nchw": (True, False),
    "bf16-channels_last": (True, True),
}


# ----------------------------------------------------------------------------- the bare loop


def bare_crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop of a zero-padded uint8 NCHW batch, then a left-right mirror where ``flip``,
    written the way a user would: one advanced-indexing gather on the padded batch."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(height)  # N x H
    cols = dx[:, None] + torch.arange(width)  # N x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch_index = torch.arange(n)[:, None, None]
    crops = padded[batch_index, :, rows[:, :, None], cols[:, None, :]]  # N x H x W x C
    return crops.permute(0, 3, 1, 2).contiguous()


class BareLoop:
    """Hand-written training loop over uint8 images held in memory (the reference)."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        padding: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        seed: int,
        bf16: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.bf16 = bf16
        self.model = model.to(memory_format=self.memory_format)
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.padding = padding
        self.batch_size = batch_size
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.criterion = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(seed)

    def run(self, steps: int) -> None:
        """Train ``steps`` steps (one shuffled pass)."""
        self.model.train()
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator)
        for step in range(steps):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            b = len(index)
            dy = torch.randint(0, 2 * self.padding + 1, (b,), generator=self.generator)
            dx = torch.randint(0, 2 * self.padding + 1, (b,), generator=self.generator)
            flip = torch.randint(0, 2, (b,), generator=self.generator).bool()
            raw = bare_crop_flip(self.images[index], self.padding, dy, dx, flip)
            inputs = ((raw.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            targets = self.labels[index]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.criterion(self.model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def check_same_augmentation(images: torch.Tensor, padding: int) -> None:
    """The bare crop/flip must be exactly the engine loader's for the same draws (same work)."""
    n = min(16, len(images))
    generator = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    ours = bare_crop_flip(images[:n], padding, offsets[:, 0], offsets[:, 1], flips)
    theirs = crop_flip(images[:n], padding, offsets, flips)
    if not torch.equal(ours, theirs):
        raise SystemExit("bare_crop_flip differs from polarprune.data.crop_flip: the comparison would be unfair")


# ----------------------------------------------------------------------------- the run


def make_config(args: argparse.Namespace, out: Path, setting: str = "fp32-nchw") -> TrainConfig:
    """An engine run of ``trials + 2`` epochs of ``steps`` steps; evaluation after the last only."""
    epochs = args.trials + 2
    return validate(
        TrainConfig,
        {
            "seed": args.seed,
            "device": "cpu",
            "out": str(out),
            "model": {"name": args.model},
            "data": {
                "name": "fake",
                "train_subset": args.steps * args.batch_size,
                "eval_subset": args.batch_size,
                "batch_size": args.batch_size,
                "eval_batch_size": args.batch_size,
            },
            "train": {
                "epochs": epochs,
                "lr": args.lr,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "progress": False,
                "max_steps_per_epoch": args.steps,
                "eval_every": epochs,
                "schedule": {"type": "constant"},
                "amp": CPU_SETTINGS[setting][0],
                "channels_last": CPU_SETTINGS[setting][1],
            },
        },
    )


def run(args: argparse.Namespace, setting: str = "fp32-nchw") -> dict[str, list[float]]:
    """Interleave engine epochs and bare trials; return wall-clock and CPU seconds per trial."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="polarprune-bench-") as tmp:
        cfg = make_config(args, Path(tmp) / "run", setting)
        trainer = build_trainer(cfg, resume=False)
        splits = load_fake_splits(cfg.data)  # the same uint8 tensors the engine's loader holds
        check_same_augmentation(splits.train_images, splits.padding)
        bare = BareLoop(
            copy.deepcopy(trainer.model),  # same initial weights as the engine's model
            splits.train_images,
            splits.train_labels,
            mean=splits.mean,
            std=splits.std,
            padding=splits.padding,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=0.9,
            weight_decay=5e-4,
            seed=args.seed + 1,
            bf16=CPU_SETTINGS[setting][0],
            channels_last=CPU_SETTINGS[setting][1],
        )
        timings: dict[str, list[float]] = {
            "engine_wall_s": [], "engine_cpu_s": [], "bare_wall_s": [], "bare_cpu_s": [],
            "engine_inner_s": [],  # the engine's own epoch_time_s (no checkpoint/log writing)
        }
        last_callback_end = [clock()]

        def on_epoch(row: dict[str, Any]) -> None:
            now = clock()
            epoch = row["epoch"]  # 1-based
            if 2 <= epoch <= args.trials + 1:  # epoch 1 is the warm-up, the last one evaluates
                timings["engine_wall_s"].append(now[0] - last_callback_end[0][0])
                timings["engine_cpu_s"].append(now[1] - last_callback_end[0][1])
                timings["engine_inner_s"].append(float(row["epoch_time_s"]))
            if epoch == 1:
                bare.run(WARMUP_STEPS)
            elif epoch <= args.trials + 1:
                begin = clock()
                bare.run(args.steps)
                end = clock()
                timings["bare_wall_s"].append(end[0] - begin[0])
                timings["bare_cpu_s"].append(end[1] - begin[1])
            done = len(timings["bare_wall_s"])
            print(f"{setting} epoch {epoch}: {done}/{args.trials} rounds timed", file=sys.stderr, flush=True)
            last_callback_end[0] = clock()

        trainer.fit(on_epoch=on_epoch)
    return timings


def throughput_comparison(images: int, engine_s: list[float], bare_s: list[float]) -> dict[str, Any]:
    """Images/s of both (per trial, summarised), the ratio of the medians and the per-round ratios."""
    engine = [images / s for s in engine_s]
    bare = [images / s for s in bare_s]
    return {
        "engine_images_per_s": summary(engine),
        "bare_images_per_s": summary(bare),
        "ratio_of_medians": statistics.median(engine) / statistics.median(bare),
        "per_round_ratios": summary(paired_ratios(engine, bare)),
    }


def setting_measures(args: argparse.Namespace, timings: dict[str, list[float]]) -> dict[str, Any]:
    """Wall-clock and CPU-time comparisons of one setting, the busy fraction, bookkeeping, verdict."""
    images = args.steps * args.batch_size
    wall = throughput_comparison(images, timings["engine_wall_s"], timings["bare_wall_s"])
    cpu = throughput_comparison(images, timings["engine_cpu_s"], timings["bare_cpu_s"])
    busy = [c / w for c, w in zip(timings["engine_cpu_s"] + timings["bare_cpu_s"], timings["engine_wall_s"] + timings["bare_wall_s"])]
    bookkeeping = [outer - inner for outer, inner in zip(timings["engine_wall_s"], timings["engine_inner_s"])]
    passed = wall["ratio_of_medians"] >= ACCEPTANCE_RATIO and cpu["ratio_of_medians"] >= ACCEPTANCE_RATIO
    return {"wall_clock": wall, "cpu_time": cpu, "cpu_per_wall_second": summary(busy),
            "engine_checkpoint_log_s_per_epoch": summary(bookkeeping), "passed": passed, "raw_seconds": timings}


def report(args: argparse.Namespace, per_setting: dict[str, dict[str, list[float]]]) -> tuple[dict[str, Any], str]:
    """The result record and its Markdown rendering."""
    measures = {name: setting_measures(args, timings) for name, timings in per_setting.items()}
    first = measures.get("fp32-nchw") or next(iter(measures.values()))
    wall, cpu = first["wall_clock"], first["cpu_time"]
    busy_summary, bookkeeping_summary = first["cpu_per_wall_second"], first["engine_checkpoint_log_s_per_epoch"]
    passed = all(m["passed"] for m in measures.values())
    result = {
        "benchmark": "engine training throughput vs a bare PyTorch loop",
        "provenance": provenance(args.seed, data=data_sizes(args.steps * args.batch_size, args.batch_size, "fake (random) images"),
                                 allow_dirty=args.allow_dirty),
        "settings": {
            "model": args.model,
            "device": "cpu",
            "batch_size": args.batch_size,
            "steps_per_trial": args.steps,
            "trials": args.trials,
            "lr": args.lr,
            "torch_threads": torch.get_num_threads(),
            "data": "fake (uint8 32x32x3 in memory), 4-px crop + flip, normalise",
        },
        "wall_clock": wall,
        "cpu_time": cpu,
        "cpu_per_wall_second": busy_summary,
        "engine_checkpoint_log_s_per_epoch": bookkeeping_summary,
        "acceptance": {
            "min_ratio": ACCEPTANCE_RATIO,
            "rule": "wall-clock and CPU-time ratios of medians both >= min_ratio, in every CPU setting",
            "passed": passed,
        },
        "cpu_settings": measures,
        "raw_seconds": first["raw_seconds"],
    }
    markdown = (
        "# Engine training throughput vs a bare PyTorch loop (CPU)\n\n"
        + provenance_markdown(result)
        + f"\n{args.model}, batch {args.batch_size}, {args.steps} steps per trial, {args.trials} interleaved "
        f"rounds (engine, bare, engine, bare, ...; warm-ups not counted), torch threads "
        f"{torch.get_num_threads()}. Same initial weights, same in-memory uint8 images, same per-step work "
        "(crop + flip, normalise, forward, loss, backward, SGD with momentum and weight decay). An "
        "engine trial is one epoch of `Trainer.fit` with `max_steps_per_epoch`, including its "
        "per-epoch checkpoint and logs; evaluation is not timed.\n\n"
        "| measure | engine median img/s | bare median img/s | engine / bare (medians) | per-round ratios: median (min-max) |\n"
        "|---|---|---|---|---|\n"
        + "".join(
            f"| {name} | {m['engine_images_per_s']['median']:.1f} | {m['bare_images_per_s']['median']:.1f} | "
            f"**{100 * m['ratio_of_medians']:.1f} %** | {100 * m['per_round_ratios']['median']:.1f} % "
            f"({100 * m['per_round_ratios']['min']:.1f}-{100 * m['per_round_ratios']['max']:.1f} %) |\n"
            for name, m in (("wall clock", wall), ("CPU time of the process", cpu))
        )
        + "\nEvery CPU setting (the table above is the first one's):\n\n"
        "| setting | engine img/s (CPU time) | bare img/s (CPU time) | engine / bare, wall | engine / bare, CPU time | passed |\n"
        "|---|---|---|---|---|---|\n"
        + "".join(
            f"| {name} | {m['cpu_time']['engine_images_per_s']['median']:.1f} | {m['cpu_time']['bare_images_per_s']['median']:.1f} | "
            f"{100 * m['wall_clock']['ratio_of_medians']:.1f} % | {100 * m['cpu_time']['ratio_of_medians']:.1f} % | "
            f"{'yes' if m['passed'] else 'NO'} |\n"
            for name, m in measures.items()
        )
        + f"\nAcceptance (both ratios >= {100 * ACCEPTANCE_RATIO:.0f} % in every setting): **{'passed' if passed else 'FAILED'}**.\n\n"
        f"CPU seconds per wall second during the trials: median {busy_summary['median']:.2f} "
        f"(min {busy_summary['min']:.2f}); with 1 thread, values below 1 mean other processes took the CPU, "
        "which is why the CPU-time measure is reported beside the wall clock on a shared machine. "
        f"Checkpoint + metrics + TensorBoard writing inside each engine epoch: median "
        f"{1e3 * bookkeeping_summary['median']:.0f} ms.\n"
    )
    return result, markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--trials", type=int, default=9, help="timed trials of each (after one warm-up)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per trial")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01, help="small enough that neither run diverges (NaN/inf)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", choices=list(CPU_SETTINGS), default=list(CPU_SETTINGS),
                        help="CPU settings to compare (each: engine vs a bare loop doing the same)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results/")
    parser.add_argument("--stem", default=RESULT_STEM,
                        help="result file name in bench/results/ (another machine's measurement beside the first)")
    add_provenance_options(parser)
    args = parser.parse_args()
    per_setting = {setting: run(args, setting) for setting in args.settings}
    result, markdown = report(args, per_setting)
    if not args.no_write:
        paths = write_results(args.stem, result, markdown)
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    print(markdown)
    return 0 if result["acceptance"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
