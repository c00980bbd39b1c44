"""Distributed training: synchronised BN math, DDP equivalence with one process, failures.

The multi-process tests launch real process groups on the CPU (gloo) through torchrun
(``python -m torch.distributed.run``), one thread per process, in deterministic mode.
"""

from __future__ import annotations

import copy
import threading

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

    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
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
