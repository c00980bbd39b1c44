"""Distributed training: synchronised BN math, DDP equivalence with one process, failures.

The multi-process tests launch real process groups on the CPU (gloo) through torchrun
(``python -m torch.distributed.run``), one thread per process, in deterministic mode.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polarprune import distributed as dist
from polarprune.errors import PolarpruneError
from polarprune.models import create

IDENTITY = lambda t: t  # noqa: E731 - the reduction of a single process


# ----------------------------------------------------------------------------- synchronised BN math


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (7, 4)])
def test_global_batch_stats_of_one_process_are_batch_norm_statistics(shape):
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    mean, var, count = dist.global_batch_stats(x, IDENTITY)
    dims = [0, *range(2, x.dim())]
    assert count.item() == x.numel() // x.shape[1]
    torch.testing.assert_close(mean, x.mean(dims))
    torch.testing.assert_close(var, x.var(dims, unbiased=False))


class ThreadAllReduce:
    """An all-reduce (sum) between threads: each 'rank' is a thread with a chunk of the batch."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def for_rank(self, rank: int):
        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # everyone has read the slots before they are reused
            return total

        return reduce_sum


def test_global_batch_stats_over_chunks_equal_stats_of_the_whole_batch():
    x = torch.randn(9, 3, 2, 2, dtype=torch.float64) * 2 + 5
    chunks = [x[:4], x[4:]]  # unequal chunks: counts are summed, not assumed equal
    reducer = ThreadAllReduce(2)
    results: list = [None, None]

    def run(rank: int) -> None:
        results[rank] = dist.global_batch_stats(chunks[rank], reducer.for_rank(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for mean, var, count in results:
        assert count.item() == 9 * 2 * 2
        torch.testing.assert_close(mean, x.mean([0, 2, 3]))
        torch.testing.assert_close(var, x.var([0, 2, 3], unbiased=False))


def test_sync_batch_norm_of_one_process_matches_torch_forward_backward_and_running_stats():
    torch.manual_seed(0)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    rm_ref, rv_ref = rm.clone(), rv.clone()
    upstream = torch.randn(5, 4, 3, 3, dtype=torch.float64)

    out = dist.sync_batch_norm(x, weight, bias, rm, rv, 0.1, 1e-5, IDENTITY)
    grads = torch.autograd.grad((out * upstream).sum(), (x, weight, bias))
    ref = F.batch_norm(x, rm_ref, rv_ref, weight, bias, True, 0.1, 1e-5)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, weight, bias))

    assert out.dtype == torch.float64  # computed in float64, not through float32 (train.dtype=float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm_ref)
    torch.testing.assert_close(rv, rv_ref)  # unbiased running variance, as torch stores it


def test_sync_batch_norm_rejects_a_single_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dist.sync_batch_norm(torch.randn(1, 3), None, None, None, None, 0.1, 1e-5, IDENTITY)


def test_cpu_sync_batchnorm_without_process_group_is_plain_batch_norm():
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight)
    twin = dist.sync_twin(bn, "cpu")
    reference = copy.deepcopy(bn)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(twin(x), reference(x))
    torch.testing.assert_close(bn.running_mean, reference.running_mean)  # the twin updated bn's buffer
    assert int(bn.num_batches_tracked) == 1


# ----------------------------------------------------------------------------- the DDP view of a model


def test_sync_view_shares_every_tensor_and_leaves_the_model_unchanged():
    model = create("small_cnn", 10, in_channels=1, width=4)
    classes_before = [type(m) for m in model.modules()]
    view = dist.sync_batchnorm_view(model, "cpu")

    assert [type(m) for m in model.modules()] == classes_before  # the model keeps plain BNs
    synced = [m for m in view.modules() if isinstance(m, dist.CPUSyncBatchNorm)]
    plain = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(synced) == len(plain) == 5
    for (name, p), (view_name, q) in zip(model.named_parameters(), view.named_parameters()):
        assert name == view_name and p is q
    for (name, b), (view_name, c) in zip(model.named_buffers(), view.named_buffers()):
        assert name == view_name and b is c
    assert list(model.state_dict()) == list(view.state_dict())
    # modules without a BN below them are the very same objects
    assert view.pool is model.pool and view.features[0] is model.features[0]


def test_sync_view_trains_the_model():
    torch.manual_seed(0)
    model = create("small_cnn", 10, in_channels=1, width=4)
    reference = copy.deepcopy(model)
    view = dist.sync_batchnorm_view(model, "cpu").train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    for net in (view, reference.train()):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_sync_view_of_gpu_models_uses_torch_sync_batchnorm():
    view = dist.sync_batchnorm_view(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), "cuda")
    assert type(view[1]) is nn.SyncBatchNorm


# ----------------------------------------------------------------------------- errors and settings


def test_collective_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(dist.TIMEOUT_ENV, raising=False)
    assert dist.collective_timeout_s() == dist.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(dist.TIMEOUT_ENV, "12.5")
    assert dist.collective_timeout_s() == 12.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(dist.TIMEOUT_ENV, bad)
        with pytest.raises(PolarpruneError, match=dist.TIMEOUT_ENV):
            dist.collective_timeout_s()


def test_collective_failures_become_one_line_errors(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    gloo = torch.distributed.DistBackendError("[pair.cc:545] Read error: Connection reset by peer\nmore detail")
    with pytest.raises(PolarpruneError) as info:
        with dist.clear_collective_errors("training runs/x"):
            raise gloo
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("distributed run failed on rank 3 while training runs/x")
    assert "Connection reset by peer" in message and "more detail" not in message
    # other errors pass through unchanged, and outside a process group gloo-like words mean nothing
    with pytest.raises(KeyError):
        with dist.clear_collective_errors("training"):
            raise KeyError("x")
    assert not dist.is_collective_failure(RuntimeError("Connection reset by peer"))
    assert not dist.is_collective_failure(PolarpruneError("timeout"))


def test_single_process_helpers_are_identities():
    assert not dist.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.init_from_env("cpu") is False


# ----------------------------------------------------------------------------- multi-process runs (gloo)

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent
FAULT_RUNNER = TESTS_DIR / "fault_runner.py"
PER_PROCESS_BATCH = 16
REGULARIZERS = {
    "none": {"regularizer": "none"},
    "polarization": {"regularizer": "polarization", "lbd": 2e-3, "t": 1.2, "monitor": False},
    "l1": {"regularizer": "l1", "lbd": 2e-3, "monitor": False},
    "mask-l1": {"regularizer": "mask-l1", "lbd": 2e-3, "monitor": False},
}


def worker_env(**extra: str) -> dict[str, str]:
    """One thread per process, the repository importable, no inherited torchrun variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS_DIR)]))
    env.update(extra)
    return env


def failure_output(proc: subprocess.CompletedProcess) -> str:
    """The start of stderr (where a rank's own error is) and its end (torchrun's report)."""
    err = proc.stderr
    return err if len(err) <= 6000 else f"{err[:3000]}\n[...]\n{err[-3000:]}"


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def digits_run(out: Path, batch_size: int, sparsity: dict, mask: Path, **train) -> dict:
    """A few steps of small_cnn on digits with synchronised BN (the equivalence setting)."""
    sparsity = dict(sparsity)
    if sparsity["regularizer"] == "mask-l1":
        sparsity["mask"] = str(mask)
    return {
        "seed": 5,
        "deterministic": True,
        "device": "cpu",
        "out": str(out),
        "model": {"name": "small_cnn", "bn_init": 0.5, "options": {"width": 8}},
        "data": {"name": "digits", "batch_size": batch_size, "eval_batch_size": 128},
        "train": {"epochs": 2, "lr": 0.05, "progress": False, "sync_bn": True, "max_steps_per_epoch": 3,
                  "schedule": {"type": "constant"}, **train},
        "sparsity": sparsity,
    }


def write_half_mask(path: Path) -> None:
    """A mask-l1 file removing every second channel of the regularized BNs of small_cnn."""
    from polarprune.sparsity import regularized_bn_names, save_mask

    model = create("small_cnn", 10, in_channels=1, width=8)
    names = regularized_bn_names(model, torch.randn(2, 1, 8, 8), [], [])
    masks = {n: torch.arange(model.get_submodule(n).num_features) % 2 == 0 for n in names}
    save_mask(masks, path, "small_cnn")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 for equal tensors), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() if a.numel() else 0.0


def final_state(out: Path) -> dict[str, torch.Tensor]:
    from polarprune.training.checkpoint import read_checkpoint

    return read_checkpoint(out / "last.pt")["model"]


@pytest.fixture(scope="module")
def ddp_equivalence(tmp_path_factory) -> dict:
    """Every regularizer trained by 2 processes x batch B (one torchrun launch) and by 1 process
    x batch 2B (one launch): same seed, the same global sample order and augmentations."""
    root = tmp_path_factory.mktemp("ddp")
    mask = root / "mask.json"
    write_half_mask(mask)
    summaries = {}
    for label, nproc, batch in (("ddp", 2, PER_PROCESS_BATCH), ("single", 1, 2 * PER_PROCESS_BATCH)):
        plan = {
            "runs": [digits_run(root / label / name, batch, sparsity, mask) for name, sparsity in REGULARIZERS.items()],
            "summary": str(root / f"{label}.json"),
        }
        (root / f"{label}-plan.json").write_text(json.dumps(plan))
        worker = [str(TESTS_DIR / "ddp_worker.py"), str(root / f"{label}-plan.json")]
        cmd = torchrun(nproc, *worker) if nproc > 1 else [sys.executable, *worker]
        proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, failure_output(proc)
        summaries[label] = json.loads((root / f"{label}.json").read_text())
    return {"root": root, "summaries": summaries, "mask": mask}


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
def test_two_processes_train_what_one_process_with_the_double_batch_trains(ddp_equivalence, regularizer):
    root = ddp_equivalence["root"]
    ddp = final_state(root / "ddp" / regularizer)
    single = final_state(root / "single" / regularizer)
    assert ddp.keys() == single.keys()
    for key in ddp:  # weights, BN running statistics and batch counters
        assert relative_difference(single[key], ddp[key]) <= 1e-5, key
    info = ddp_equivalence["summaries"]["ddp"][str(root / "ddp" / regularizer)]
    assert info == {**info, "ranks_identical": True, "world_size": 2}
    assert ddp_equivalence["summaries"]["single"][str(root / "single" / regularizer)]["world_size"] == 1
    assert len(list((root / "ddp" / regularizer / "tb").glob("events.*"))) == 1  # rank 0 logs alone


@pytest.mark.slow
def test_the_regularizers_act_under_ddp(ddp_equivalence):
    """The equivalence above is not vacuous: each regularizer moves the gammas far more than the
    DDP/single-process difference, in its own direction."""
    from polarprune.sparsity.masks import load_mask

    root = ddp_equivalence["root"]
    plain = final_state(root / "ddp" / "none")
    runs = {name: final_state(root / "ddp" / name) for name in REGULARIZERS if name != "none"}
    gamma_keys = [k for k in plain if k.endswith(".weight") and plain[k].dim() == 1 and "classifier.3" not in k]
    for name, state in runs.items():
        assert max(relative_difference(plain[k], state[k]) for k in gamma_keys) > 1e-3, name
    # L1 shrinks every regularized gamma relative to no regularizer: the total |gamma| drops
    assert sum(runs["l1"][k].abs().sum() for k in gamma_keys) < sum(plain[k].abs().sum() for k in gamma_keys)
    # polarization clamps to [0, 1]
    assert all(runs["polarization"][k].min() >= 0 and runs["polarization"][k].max() <= 1 for k in gamma_keys)
    # mask-L1 pushes only the channels marked for removal: kept channels see no L1 at all
    masks = load_mask(ddp_equivalence["mask"], create("small_cnn", 10, in_channels=1, width=8))
    shrink_removed = sum((plain[f"{n}.weight"] - runs["mask-l1"][f"{n}.weight"])[~keep].sum() for n, keep in masks.items())
    shrink_kept = sum((plain[f"{n}.weight"] - runs["mask-l1"][f"{n}.weight"])[keep].sum() for n, keep in masks.items())
    assert shrink_removed > 0 and shrink_removed > 5 * abs(shrink_kept)


@pytest.mark.slow
def test_killed_rank_fails_the_run_quickly_and_the_rerun_resumes_exactly(ddp_equivalence, tmp_path):
    """SIGKILL of rank 1 in epoch 2: torchrun exits non-zero long before the collective timeout,
    naming the killed rank; the same command again resumes every rank from rank 0's last.pt and
    ends with the weights of the uninterrupted 2-process run."""
    from polarprune.config import dump_yaml, validate, TrainConfig
    from polarprune.serialization import read_checkpoint

    out = tmp_path / "victim"
    cfg = digits_run(out, PER_PROCESS_BATCH, REGULARIZERS["polarization"], ddp_equivalence["mask"])
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(dump_yaml(validate(TrainConfig, cfg)))
    cmd = torchrun(2, "-m", "polarprune", "train", str(config_file))
    kill_rank_1 = torchrun(2, str(FAULT_RUNNER), "--kill-at", "victim:4", "--rank", "1", "--", "train", str(config_file))

    env = worker_env(**{dist.TIMEOUT_ENV: "200"})
    start = time.monotonic()
    failed = subprocess.run(kill_rank_1, env=env, capture_output=True, text=True, timeout=200)
    elapsed = time.monotonic() - start
    assert failed.returncode != 0
    assert elapsed < 90, f"took {elapsed:.0f} s: the survivors waited for the collective timeout"
    assert "SIGKILL" in failed.stderr  # torchrun's root cause: the killed rank
    ours = [line for line in failed.stderr.splitlines() if line.startswith("polarprune: error:")]
    assert all("distributed run failed on rank 0 while training" in line for line in ours), ours
    assert read_checkpoint(out / "last.pt")["epoch"] == 1  # the completed epoch survived

    resumed = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, failure_output(resumed)
    assert resumed.stderr.count("resumed from") == 1  # logged by rank 0 only
    uninterrupted = final_state(ddp_equivalence["root"] / "ddp" / "polarization")
    after_resume = final_state(out)
    assert all(torch.equal(uninterrupted[k], after_resume[k]) for k in uninterrupted)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_hung_rank_fails_the_others_after_the_collective_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) without dying, so no connection closes: rank 0 gives up after
    POLARPRUNE_DIST_TIMEOUT seconds with one clear error line (processes started by hand with
    torchrun's variables, so that nothing else tears the group down)."""
    cfg = digits_run(tmp_path / "hang", PER_PROCESS_BATCH, REGULARIZERS["none"], tmp_path / "unused")
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(cfg))  # JSON is YAML
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", dist.TIMEOUT_ENV: "4"}
    stop_rank_1 = [str(FAULT_RUNNER), "--kill-at", "hang:2", "--rank", "1", "--signal", "STOP", "--"]
    procs = [
        subprocess.Popen([sys.executable, *stop_rank_1, "train", str(config_file)],
                         env=worker_env(**common, RANK=str(r), LOCAL_RANK=str(r)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    try:
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 1
        errors = [line for line in err.splitlines() if line.strip()]
        assert errors[-1].startswith("polarprune: error: distributed run failed on rank 0 while training"), err[-2000:]
        assert "Traceback" not in err
        assert procs[1].poll() is None  # still stopped: only the timeout could have freed rank 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
