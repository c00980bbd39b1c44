"""The paper-accounting residual mode (``residual: scatter``) and the original MACs accounting.

ResNet-56 with 40% of every bn1/bn2 gamma and beta at 0: pruning those channels the original
way (bn2 outputs scattered back to full width) changes no logit, and the pruned model's MACs
equal the original accounting worked out from the layer shapes: per block
``9*C_in*k1*H*W`` (conv1: full input width, k1 outputs) + ``9*k1*k2*H*W`` (conv2), plus the
unchanged stem and classifier.
"""

from __future__ import annotations

import pytest
import torch

from polarprune import models
from polarprune.flops import count_model
from polarprune.models.cifar_resnet import BasicBlock, ScatterBasicBlock
from polarprune.models.expand import ChannelScatter
from polarprune.models.layers import ShortcutOnlyBlock
from polarprune.serialization import load, save
from polarprune.pruning import prune_model
from polarprune.pruning.options import PruneOptions
from polarprune.pruning.scatter import apply_scatter, original_accounting, original_macs, prune_scatter, scatter_keep_masks

RESNET56_MACS = 125_485_696


def resnet56_with_zero_channels(fraction: float = 0.4, seed: int = 0) -> torch.nn.Module:
    """ResNet-56 with random BN statistics; ``round(fraction*C)`` random channels of every block
    BN have gamma = beta = 0, the others gamma in [0.2, 1]."""
    torch.manual_seed(seed)
    model = models.create("resnet56", num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, bn in model.named_modules():
            if not isinstance(bn, torch.nn.BatchNorm2d):
                continue
            c = bn.num_features
            bn.weight.copy_(0.2 + 0.8 * torch.rand(c, generator=generator))
            bn.bias.copy_(0.2 * torch.rand(c, generator=generator) - 0.1)
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            if name.endswith(("bn1", "bn2")) and name != "bn1":
                zero = torch.randperm(c, generator=generator)[: round(fraction * c)]
                bn.weight[zero] = 0.0
                bn.bias[zero] = 0.0
    return model.eval()


def hand_count(model: torch.nn.Module, keep: dict[str, torch.Tensor]) -> int:
    """The original accounting from the layer shapes (per image, 32x32 input)."""
    total = 9 * 3 * 16 * 32 * 32 + 64 * 10  # stem conv, classifier
    side = 32
    for name, block in model.named_modules():
        if not isinstance(block, BasicBlock):
            continue
        side //= block.conv1.stride[0]
        k1, k2 = int(keep[f"{name}.bn1"].sum()), int(keep[f"{name}.bn2"].sum())
        if k1 == 0 or k2 == 0:
            continue
        total += 9 * block.conv1.in_channels * k1 * side * side + 9 * k1 * k2 * side * side
    return total


@pytest.fixture(scope="module")
def pruned_pair() -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor], list[str]]:
    model = resnet56_with_zero_channels()
    keep = scatter_keep_masks(model, "fixed", threshold=0.01)
    pruned, emptied = apply_scatter(model, keep)
    return model, pruned, keep, emptied


def test_scatter_keeps_the_logits(pruned_pair) -> None:
    model, pruned, keep, emptied = pruned_pair
    assert emptied == []
    assert int(keep["layer1.0.bn1"].sum()) == 16 - 6 and int(keep["layer3.8.bn2"].sum()) == 64 - 26
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (pruned(x) - model(x)).abs().max() < 1e-4
    # the residual stream keeps its width: every block's output is scattered back
    blocks = [m for m in pruned.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27 and all(isinstance(m, ScatterBasicBlock) for m in blocks)
    assert pruned.layer2[3].scatter.out_channels == 32
    assert pruned.layer2[3].conv2.out_channels == 32 - 13
    # parameters keep their names (plus one buffer per scattered block)
    before, after = set(model.state_dict()), set(pruned.state_dict())
    assert after - before == {f"{n}.scatter.source" for n, m in pruned.named_modules() if isinstance(m, ScatterBasicBlock)}
    assert before <= after


def test_scatter_macs_equal_the_original_accounting(pruned_pair) -> None:
    model, pruned, keep, _ = pruned_pair
    expected = hand_count(model, keep)
    assert count_model(model, (3, 32, 32)).macs == RESNET56_MACS
    assert count_model(pruned, (3, 32, 32)).macs == expected
    # the accounting function, on the unpruned model and the same per-BN decision
    assert original_macs(model, torch.zeros(1, 3, 32, 32), keep) == expected
    # about 0.6 of every conv1 and 0.36 of every conv2: near the 0.4845
    assert expected / RESNET56_MACS == pytest.approx(0.4845, abs=0.01)


def test_prune_scatter_reports_the_original_accounting(pruned_pair) -> None:
    model, _, keep, _ = pruned_pair
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pruned, report = prune_scatter(model, x, "fixed", threshold=0.01)
    expected = hand_count(model, keep)
    assert (report.macs_before, report.macs_after) == (RESNET56_MACS, expected)
    assert report.max_abs_output_diff < 1e-4 and not report.compensated
    assert [r.channels_after for r in report.rows] == [int(m.sum()) for m in keep.values()]
    # the same number from the accounting alone, as a default prune report gives it beside its own
    macs, reason = original_accounting(model, x, PruneOptions(strategy="fixed"))
    assert (macs, reason) == (expected, None)


def test_prune_model_residual_scatter_saves_and_loads(pruned_pair, tmp_path) -> None:
    model, _, keep, _ = pruned_pair
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pruned, report = prune_model(model, x, "fixed", residual="scatter")
    assert report.macs_after == report.macs_original_accounting == hand_count(model, keep)
    path = save(pruned, tmp_path / "scatter.safetensors")
    loaded = load(path).eval()
    assert isinstance(loaded.layer3[8], ScatterBasicBlock)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_a_default_prune_report_gives_the_original_accounting(pruned_pair) -> None:
    model, _, keep, _ = pruned_pair
    _, report = prune_model(model, torch.zeros(1, 3, 32, 32), "fixed")
    assert report.macs_original_accounting == hand_count(model, keep)
    assert report.macs_after > report.macs_original_accounting  # bn2 channels stay: their groups disagree
    assert "original code's accounting" in report.table()


def test_an_empty_bn_empties_its_block() -> None:
    model = resnet56_with_zero_channels()
    with torch.no_grad():
        model.layer2[4].bn1.weight.zero_()
    keep = scatter_keep_masks(model, "fixed", threshold=0.01)
    pruned, emptied = apply_scatter(model, keep)
    assert emptied == ["layer2.4"]
    assert isinstance(pruned.layer2[4], ShortcutOnlyBlock)
    expected = hand_count(model, keep)
    assert count_model(pruned, (3, 32, 32)).macs == expected == original_macs(model, torch.zeros(1, 3, 32, 32), keep)
    # the emptied block costs nothing: its two convs' MACs are missing from the total
    full = dict(keep, **{"layer2.4.bn1": torch.ones(32, dtype=torch.bool)})
    k2 = int(keep["layer2.4.bn2"].sum())
    assert hand_count(model, full) - expected == 9 * 32 * 32 * 16 * 16 + 9 * 32 * k2 * 16 * 16


def test_channel_scatter_places_channels() -> None:
    scatter = ChannelScatter([3, 0], 5)
    x = torch.tensor([[10.0, 20.0]]).view(1, 2, 1, 1)
    assert scatter(x).flatten().tolist() == [20.0, 0.0, 0.0, 10.0, 0.0]
    assert scatter.positions == [3, 0]
    with pytest.raises(ValueError, match="bad scatter positions"):
        ChannelScatter([1, 1], 3)
