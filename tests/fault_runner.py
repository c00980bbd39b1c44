"""Test helper: the ``polarprune`` command with a fault installed, for the kill-and-resume tests.

Usage::

    python tests/fault_runner.py [--kill-at [PATH_SUBSTRING:]STEP] [--rank R] [--signal KILL|STOP]
                                 [--kill-before-done STAGE] -- COMMAND ARGS...

``--kill-at``: every Trainer whose output folder contains PATH_SUBSTRING gets a hook that sends
the signal to its own process when the run reaches global step STEP (STEP steps done, the next
not yet applied); ``--rank`` limits it to that torchrun rank; ``--signal STOP`` simulates a hung
process. ``--kill-before-done``: SIGKILL after STAGE's work, just before its ``done.json``.
Then the command runs as ``polarprune COMMAND ARGS...`` (also under torchrun).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from polarprune import cli
from polarprune.training import TrainHook
from polarprune.workflows import pipeline, train


class KillAtStep(TrainHook):
    """Signals this process when ``trainer.global_step`` reaches ``step``, before that step's update."""

    def __init__(self, trainer, step: int, sig: signal.Signals) -> None:
        self.trainer = trainer
        self.step = step
        self.sig = sig

    def loss_term(self, model):
        if self.trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)
        return None


def install_kill_at_step(where: str, step: int, sig: signal.Signals) -> None:
    build_trainer = train.build_trainer

    def with_fault(cfg, **kwargs):
        trainer = build_trainer(cfg, **kwargs)
        if where in str(trainer.out_dir):
            trainer.hooks.append(KillAtStep(trainer, step, sig))
        return trainer

    train.build_trainer = with_fault


def install_kill_before_done(stage: str) -> None:
    write_done = pipeline.write_done

    def with_fault(stage_dir, payload):
        if stage_dir.name == stage:
            os.kill(os.getpid(), signal.SIGKILL)
        write_done(stage_dir, payload)

    pipeline.write_done = with_fault


def main(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="fault_runner")
    parser.add_argument("--kill-at")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "STOP"])
    parser.add_argument("--kill-before-done")
    args = parser.parse_args(argv[:split])
    if args.kill_at and (args.rank is None or args.rank == int(os.environ.get("RANK", "0"))):
        where, _, step = args.kill_at.rpartition(":")
        install_kill_at_step(where, int(step), signal.SIGSTOP if args.signal == "STOP" else signal.SIGKILL)
    if args.kill_before_done:
        install_kill_before_done(args.kill_before_done)
    return cli.main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
