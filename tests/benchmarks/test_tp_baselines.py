"""bench/tp_baselines.py, which every Torch-Pruning row of BENCHMARKS.md depends on, on a small
CIFAR ResNet-20: the ratio bisection, the layers it keeps away from Torch-Pruning, the regularizer
hook, and a prune matched to a MACs target that removes block-internal channels only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import tp_baselines as tb  # noqa: E402

from polarprune import models, serialization  # noqa: E402
from polarprune.flops import count_model  # noqa: E402

INPUT_SHAPE = (3, 32, 32)


@pytest.fixture()
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20", num_classes=10).eval()


def test_bisect_ratio_halves_towards_the_target() -> None:
    # reduction(r) = r, target 0.3: 0.475 (high) -> 0.2375 (low) -> 0.35625 (high) -> 0.296875, within 0.005: stop
    ratio, tries = tb.bisect_ratio(lambda r: r, 0.3)
    assert [t[0] for t in tries] == pytest.approx([0.475, 0.2375, 0.35625, 0.296875]) and ratio == pytest.approx(0.296875)
    # never within tolerance: the closest try of max_tries wins
    ratio, tries = tb.bisect_ratio(lambda r: 0.6 if r > 0.4 else 0.1, 0.3, max_tries=3)
    assert [t[0] for t in tries] == pytest.approx([0.475, 0.2375, 0.35625])  # 0.6 is too much, 0.1 too little
    assert ratio == 0.2375  # 0.1 misses by 0.2, 0.6 by 0.3: the first try closest to the target wins


def test_the_residual_stream_is_kept_away_from_torch_pruning(resnet20: torch.nn.Module) -> None:
    names = {name for name, module in resnet20.named_modules() if any(module is kept for kept in tb.residual_stream_layers(resnet20))}
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert names == {"conv1", "fc", *(f"{block}.conv2" for block in blocks)}  # stem, 9 block outputs, classifier
    with pytest.raises(ValueError, match="unknown Torch-Pruning method 'tp-x'"):
        tb.build_pruner("tp-x", resnet20, torch.randn(1, *INPUT_SHAPE), reg=0.01)


def test_the_bnscale_hook_adds_reg_times_the_sign_of_gamma(resnet20: torch.nn.Module) -> None:
    with torch.no_grad():
        resnet20.layer1[0].bn1.weight[:4] = -0.5  # some negative gammas: the sign must follow them
    hook = tb.TPRegularizerHook("tp-bnscale", resnet20, torch.randn(2, *INPUT_SHAPE), reg=0.01)
    assert not resnet20.training  # the model was in eval mode before and is again after tracing
    for p in resnet20.parameters():
        p.grad = torch.zeros_like(p)
    hook.after_backward(resnet20)
    bn = resnet20.layer1[0].bn1
    assert torch.equal(bn.weight.grad, 0.01 * torch.sign(bn.weight.detach()))
    assert bn.weight.grad[:4].tolist() == pytest.approx([-0.01] * 4)
    assert torch.count_nonzero(resnet20.layer1[0].conv1.weight.grad) == 0  # convolutions are not regularized


def test_prune_to_macs_matches_the_target_and_removes_block_internal_channels(resnet20: torch.nn.Module, tmp_path: Path) -> None:
    example = torch.randn(4, *INPUT_SHAPE)
    before = count_model(resnet20, INPUT_SHAPE)
    expected = resnet20(example)
    matched = tb.prune_to_macs("tp-groupnorm", resnet20, example, 0.3, INPUT_SHAPE, reg=1e-3)
    after = count_model(matched.model, INPUT_SHAPE)
    assert abs(matched.macs_reduction - 0.3) <= 0.01 and after.macs < before.macs and after.params < before.params
    assert matched.macs_reduction == pytest.approx(1 - after.macs / before.macs)
    assert matched.pruning_ratio in {r for r, _ in matched.tries}
    assert matched.model(example).shape == (4, 10)
    assert torch.equal(resnet20(example), expected)  # the input model is left as it was
    pruned_convs = [name for name, m in matched.model.named_modules()
                    if isinstance(m, torch.nn.Conv2d) and m.out_channels < resnet20.get_submodule(name).out_channels]
    assert pruned_convs and all(name.endswith(".conv1") for name in pruned_convs)  # residual widths unchanged
    # the pruned model carries its plan, so the library saves and rebuilds it without pickling
    path = serialization.save(matched.model, tmp_path / "tp.safetensors")
    loaded = serialization.load(path)
    assert torch.allclose(loaded(example), matched.model(example), atol=1e-6)
