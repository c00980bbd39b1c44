"""Physical pruning: exact equivalence, compensation and its bound, groups and rules, block removal,
flops-target, the torchvision models, repeated prunes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from polarprune import serialization
from polarprune.errors import PolarpruneError
from polarprune.flops import count_model
from polarprune.models import create
from polarprune.models.cifar_resnet import PadShortcut
from polarprune.pruning import channel_groups, plan_pruning, prunable_bn_names, prune_model
from polarprune.pruning.api import analysed_copy
from polarprune.pruning.compensation import compensate
from polarprune.pruning.modules import ChannelPlacementShortcut
from polarprune.pruning.options import parse_options
from polarprune.pruning.resolve import balance_segments, decide, keep_at_least

BN = nn.modules.batchnorm._BatchNorm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: one intra-op thread keeps these tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise_bns(model: nn.Module, seed: int = 0, low: float = 0.2) -> None:
    """Random running statistics and affine parameters (gammas in [low, 1]) in every BN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(low + torch.rand(n, generator=g) * (1 - low))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def zero_half(model: nn.Module, x: torch.Tensor, beta: float = 0.0, only: str | None = None, seed: int = 1) -> dict[str, set[int]]:
    """Zero the gammas (and set the betas to ``beta``) of half of every prunable group's channels,
    in every BN of the group. ``only``: restrict to groups whose name contains it."""
    chosen = {}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in channel_groups(model, x):
            if not group.prunable or (only is not None and only not in group.name):
                continue
            drop = set(torch.randperm(group.num_channels, generator=g)[: group.num_channels // 2].tolist())
            chosen[group.name] = drop
            for item in group.bn_items():
                bn = model.get_submodule(item.module_name)
                for idx, root in zip(item.idxs, item.root_idxs):
                    if root in drop:
                        bn.weight[idx] = 0.0
                        bn.bias[idx] = beta
    return chosen


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------------------------
# exact equivalence


@pytest.mark.parametrize(
    "name,size",
    [("resnet56", 32), ("vgg16", 32), ("resnet50", 64), ("mobilenet_v2", 64)],
)
def test_zero_gamma_and_beta_channels_prune_exactly(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create(name).eval()
    randomise_bns(model)
    x = torch.randn(2, 3, size, size)
    zero_half(model, x)
    before = outputs(model, x)
    pruned, report = prune_model(model, x, "fixed")
    after = outputs(pruned, x)
    assert (after - before).abs().max().item() < 1e-4
    assert report.max_abs_output_diff < 1e-4
    assert report.macs_after < 0.6 * report.macs_before
    # inner and residual groups really lost channels
    assert any(r.channels_after < r.channels_before for r in report.rows if not r.residual)
    if name in ("resnet56", "resnet50", "mobilenet_v2"):
        residual = [r for r in report.rows if r.residual]
        assert residual and all(r.channels_after < r.channels_before for r in residual)
    # the original is untouched (inplace=False) and its mode restored
    assert torch.equal(outputs(model, x), before)


def test_option_a_shortcut_is_replaced_exactly() -> None:
    pad = PadShortcut(2, 16)
    place = ChannelPlacementShortcut.from_pad_shortcut(2, 16, 16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    a, b = pad(x), place(y)
    assert torch.equal(a, b)
    weights = torch.randn_like(a)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_resnet56_option_a_residual_channels_and_save_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet56").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 32, 32)
    zero_half(model, x)
    pruned, report = prune_model(model, x, "fixed")
    stages = {r.group: r for r in report.rows if r.residual}
    assert len(stages) == 3
    # stage 1 (the stem's group) loses exactly the zeroed half; stages 2 and 3 keep the channels
    # that an option-A shortcut fills with a kept channel, but still lose some
    assert stages["bn1"].channels_after == 8
    assert all(r.channels_after < r.channels_before for r in stages.values())
    assert any(r["kind"] == "placement_shortcut" for r in pruned.polarprune_spec["plan"]["replace"])
    path = tmp_path / "r56.safetensors"
    serialization.save(pruned, path)
    loaded = serialization.load(path)
    assert torch.equal(outputs(loaded, x), outputs(pruned, x))


# --------------------------------------------------------------------------------------------
# compensation


@pytest.mark.parametrize("name,size", [("resnet56", 32), ("resnet50", 64), ("mobilenet_v2", 64)])
def test_compensation_reduces_the_difference(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create(name).eval()
    randomise_bns(model)
    x = torch.randn(2, 3, size, size)
    zero_half(model, x, beta=0.3)
    _, report = prune_model(model, x, "fixed")
    assert report.max_abs_output_diff_uncompensated is not None
    assert report.max_abs_output_diff_uncompensated > 1e-3
    assert report.max_abs_output_diff < 0.5 * report.max_abs_output_diff_uncompensated
    _, plain = prune_model(model, x, "fixed", compensate=False)
    assert plain.max_abs_output_diff == pytest.approx(report.max_abs_output_diff_uncompensated, rel=1e-4, abs=1e-6)


def test_zero_constants_fold_nothing() -> None:
    # removed channels with beta = 0 carry relu(0) = 0: nothing to fold, no bias is created,
    # and the one output check is the uncompensated one too
    torch.manual_seed(0)
    model = create("resnet20").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 32, 32)
    zero_half(model, x, beta=0.0)
    pruned, report = prune_model(model, x, "fixed")
    plain, uncompensated = prune_model(model, x, "fixed", compensate=False)
    assert report.max_abs_output_diff < 1e-5
    assert report.max_abs_output_diff_uncompensated == report.max_abs_output_diff
    assert report.params_after == uncompensated.params_after
    assert all(m.bias is None for m in pruned.modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(outputs(pruned, x), outputs(plain, x))
    analysis = analysed_copy(model, x)
    folded = compensate(analysis.model, analysis, decide(analysis, options=parse_options("fixed")), x)
    assert folded.folded_channels > 0 and folded.adjustments == [] and not folded.changes_outputs


def test_compensation_is_exact_for_the_vgg_fc_head() -> None:
    torch.manual_seed(0)
    model = create("vgg16").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 32, 32)
    zero_half(model, x, beta=0.5, only="classifier")  # BN1d of the 512-unit FC layer
    pruned, report = prune_model(model, x, "fixed")
    assert [r.channels_after for r in report.rows if r.group == "classifier.1"] == [256]
    assert report.max_abs_output_diff_uncompensated > 1e-2
    assert report.max_abs_output_diff < 1e-4


def test_compensation_is_exact_for_1x1_consumers() -> None:
    # bottleneck bn2 channels feed conv3 (1x1, no padding): folded into bn3's running mean
    torch.manual_seed(0)
    model = create("resnet50").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith(".bn2"):
                m.weight[: m.num_features // 2] = 0.0
                m.bias[: m.num_features // 2] = 0.4
    pruned, report = prune_model(model, x, "fixed")
    assert report.max_abs_output_diff_uncompensated > 1e-3
    assert report.max_abs_output_diff < 1e-4
    assert pruned.layer1[0].conv3.bias is None  # no new parameter: the BN absorbed it


def test_compensation_border_bound_of_a_padded_conv() -> None:
    """conv3x3(pad 1) consumer: interior exact, border within sum_c |const_c| * sum_k |W[o,c,k]|."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1, bias=False)
    ).eval()
    randomise_bns(model)
    removed = [1, 4, 6]
    beta = torch.tensor([0.7, 0.2, 0.5])
    with torch.no_grad():
        model[1].weight[removed] = 0.0
        model[1].bias[removed] = beta
    x = torch.randn(2, 3, 10, 10)
    before = outputs(model, x)
    pruned, report = prune_model(model, x, "fixed")
    after = outputs(pruned, x)
    assert pruned[3].in_channels == 5
    diff = (after - before).abs()
    assert diff[..., 1:-1, 1:-1].max().item() < 1e-5
    bound = (model[3].weight[:, removed].abs().sum(dim=(2, 3)) * beta.relu()).sum(dim=1)  # per output channel
    assert diff.amax(dim=(0, 2, 3)).le(bound + 1e-5).all()
    assert diff.max().item() > 1e-3  # the border really differs: the bound is not vacuous
    assert report.max_abs_output_diff == pytest.approx(diff.max().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# groups, rules, strategies on models


def test_groups_of_resnet56() -> None:
    model = create("resnet56")
    x = torch.randn(1, 3, 32, 32)
    groups = channel_groups(model, x)
    residual = [g for g in groups if g.residual]
    assert [g.num_channels for g in residual] == [16, 32, 64]
    assert len(residual[0].bn_names) == 1 + 9  # stem + bn2 of the 9 blocks of stage 1
    assert not [g for g in groups if g.name == "fc"][0].prunable
    names = prunable_bn_names(model, x)
    assert len(names) == 1 + 27 * 2 and names[0] == "bn1"


def _vote_model() -> tuple[nn.Module, torch.Tensor]:
    model = create("resnet20").eval()
    randomise_bns(model, low=0.5)
    stage1 = ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    with torch.no_grad():
        for channel, zeros in ((0, 4), (1, 1), (2, 2), (3, 3)):
            for bn in stage1[:zeros]:
                model.get_submodule(bn).weight[channel] = 0.0
    return model, torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("rule,expected", [("any", [False, True, True, True]), ("all", [False, False, False, False]), ("mean", [False, True, True, False])])
def test_group_rules(rule: str, expected: list[bool]) -> None:
    model, x = _vote_model()
    masks = plan_pruning(model, x, "fixed", group_rule=rule)
    assert masks["layer1.1.bn2"][:4].tolist() == expected
    assert torch.equal(masks["bn1"], masks["layer1.2.bn2"])  # one mask for the whole group
    assert masks["layer1.1.bn2"][4:].all()


def test_bn_names_choose_the_voters() -> None:
    model, x = _vote_model()
    # without the stem (as the polarization code regularizes ResNet-56), channel 1 is only zero
    # in the stem: the bn2 voters remove nothing of it; channel 3 is zero in 2 of 3 bn2s
    voters = [n for n in prunable_bn_names(model, x) if n != "bn1"]
    masks = plan_pruning(model, x, "fixed", bn_names=voters, group_rule="all")
    assert masks["bn1"][:4].tolist() == [False, True, False, False]
    with pytest.raises(PolarpruneError, match="no BatchNorm layer named"):
        plan_pruning(model, x, "fixed", bn_names=["layer9.bn1"])


def test_ratio_strategies_halve_every_group() -> None:
    model = create("resnet20").eval()
    randomise_bns(model)
    x = torch.randn(1, 3, 32, 32)
    # layer1.0.conv1's filter k has L1 norm 144 * 0.01 * (rank[k] + 1) (signs alternate, so only
    # |w| counts); its BN's gamma runs the other way, 1 - rank[k] / 16
    rank = torch.tensor([3, 12, 0, 7, 15, 9, 1, 14, 4, 11, 6, 2, 13, 8, 10, 5], dtype=torch.float32)
    signs = torch.tensor([1.0, -1.0]).repeat(72).view(1, 16, 3, 3)
    with torch.no_grad():
        model.layer1[0].conv1.weight.copy_(0.01 * (rank + 1).view(16, 1, 1, 1) * signs)
        model.layer1[0].bn1.weight.copy_(1 - rank / 16)
    expected = {
        "l1-norm": [1, 4, 5, 7, 9, 12, 13, 14],  # the 8 largest filter norms: rank >= 8
        "uniform": [0, 2, 3, 6, 8, 10, 11, 15],  # the 8 largest gammas: rank < 8
    }
    gammas = model.layer1[0].bn1.weight.detach()

    def kept_channels(pruned: nn.Module) -> list[int]:
        """Which of layer1.0.bn1's channels survived (its gammas are all different)."""
        kept = [int((gammas == g).nonzero()) for g in pruned.layer1[0].bn1.weight.detach()]
        # the conv keeps the same filters (their input side shrinks with the residual stream)
        filter_sizes = pruned.layer1[0].conv1.weight.abs().amax(dim=(1, 2, 3))
        assert torch.allclose(filter_sizes, 0.01 * (rank[kept] + 1))
        return sorted(kept)

    kept: dict[str, list[int]] = {}
    for strategy, seed in (("uniform", 3), ("l1-norm", 3), ("random", 3), ("random", 4)):
        pruned, report = prune_model(model, x, strategy, ratio=0.5, seed=seed)
        assert all(r.channels_after == r.channels_before // 2 for r in report.rows), strategy
        assert pruned.layer3[2].conv1.in_channels == 32
        kept[f"{strategy}{seed if strategy == 'random' else ''}"] = kept_channels(pruned)
    assert kept["l1-norm"] == expected["l1-norm"]
    assert kept["uniform"] == expected["uniform"]
    # random: 8 of 16, neither of the score-based choices, another draw under another seed
    assert len(kept["random3"]) == 8
    assert kept["random3"] not in (expected["l1-norm"], expected["uniform"])
    assert kept["random4"] != kept["random3"]
    again = plan_pruning(model, x, "random", ratio=0.5, seed=3)["layer1.0.bn1"]
    assert again.nonzero().flatten().tolist() == kept["random3"]  # the same draw under the same seed


def test_mask_strategy_and_errors() -> None:
    model = create("resnet20").eval()
    randomise_bns(model)
    x = torch.randn(1, 3, 32, 32)
    keep = torch.tensor([True, False] * 8)
    pruned, report = prune_model(model, x, "mask", masks={"layer1.0.bn1": keep})
    assert pruned.layer1[0].conv1.out_channels == 8
    assert pruned.layer1[1].conv1.out_channels == 16  # no mask: whole
    assert torch.equal(pruned.layer1[0].bn1.weight, model.layer1[0].bn1.weight[keep])
    with pytest.raises(PolarpruneError, match="has 3 entries"):
        prune_model(model, x, "mask", masks={"layer1.0.bn1": [1, 0, 1]})
    with pytest.raises(PolarpruneError, match="not a BatchNorm"):
        prune_model(model, x, "mask", masks={"layer1.0.conv1": keep})
    with pytest.raises(PolarpruneError, match="needs masks"):
        prune_model(model, x, "mask")
    with pytest.raises(PolarpruneError, match="unknown pruning strategy"):
        prune_model(model, x, "search")


def test_min_channels_and_block_removal() -> None:
    model = create("resnet20").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 32, 32)
    # everything under the threshold: every branch goes, residual groups keep min_channels
    pruned, report = prune_model(model, x, "fixed", threshold=2.0)
    assert len(report.removed_blocks) == 9
    assert [r.channels_after for r in report.rows if r.residual] == [1, 1, 1]
    assert outputs(pruned, x).shape == (2, 10)
    pruned, report = prune_model(model, x, "fixed", threshold=2.0, remove_empty_blocks=False, min_channels=2)
    assert report.removed_blocks == []
    assert all(r.channels_after == 2 for r in report.rows)


def test_emptied_branch_becomes_its_shortcut_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    randomise_bns(model)
    with torch.no_grad():
        for block in (model.layer1[1], model.layer2[0]):  # layer2.0 has the option-A shortcut
            block.bn1.weight.zero_()
            block.bn1.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    pruned, report = prune_model(model, x, "fixed")
    assert report.removed_blocks == ["layer1.1", "layer2.0"]
    assert report.max_abs_output_diff < 1e-4  # the branch's constant bn2(0) moved into the shift
    assert type(pruned.layer2[0]).__name__ == "ShortcutOnlyBlock"
    path = tmp_path / "blocks.safetensors"
    serialization.save(pruned, path)
    assert torch.equal(outputs(serialization.load(path), x), outputs(pruned, x))
    kept, _ = prune_model(model, x, "fixed", remove_empty_blocks=False)
    assert kept.layer1[1].conv1.out_channels == 1
    # prune the pruned model again: the shift of a removed branch is sliced with its group
    again, second = prune_model(pruned, x, "uniform", ratio=0.5)
    assert again.layer2[0].shift.num_channels == again.layer2[1].conv1.in_channels < 32
    path = tmp_path / "again.safetensors"
    serialization.save(again, path)
    assert torch.equal(outputs(serialization.load(path), x), outputs(again, x))


def expected_kept(model: nn.Module, x: torch.Tensor, threshold: float) -> dict[str, int]:
    """Channels each prunable group of a CIFAR ResNet keeps at ``threshold`` under the ``any`` rule,
    worked out by hand: a channel stays when one of its BNs has |gamma| above the threshold, or when
    the option-A shortcut of the next stage places a kept channel of the previous stage on it (the
    shortcut pads W/2 zero channels on each side: channel c of the wider stage carries c - W/2)."""
    keep = {}
    for group in channel_groups(model, x):
        if not group.prunable:
            continue
        kept = torch.zeros(group.num_channels, dtype=torch.bool)
        for item in group.bn_items():
            gammas = model.get_submodule(item.module_name).weight.detach().abs()
            for idx, root in zip(item.idxs, item.root_idxs):
                kept[root] |= bool(gammas[idx] > threshold)
        keep[group.name] = kept
    for previous, wider in (("bn1", "layer2.0.bn2"), ("layer2.0.bn2", "layer3.0.bn2")):
        width = keep[previous].numel()
        keep[wider][width // 2 : width // 2 + width] |= keep[previous]
    return {name: int(kept.sum()) for name, kept in keep.items()}


def test_grad_and_percent_on_a_polarized_model() -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 32, 32)
    zero_half(model, x)
    with torch.no_grad():  # polarized: the zeroed half sits in [0, 0.001), the rest in [0.6, 1]
        for m in model.modules():
            if isinstance(m, BN):
                small = m.weight == 0
                m.weight[small] = torch.rand(int(small.sum())) * 0.001
                m.weight[~small] = 0.6 + 0.4 * torch.rand(int((~small).sum()))
    pruned, report = prune_model(model, x, "grad")
    assert report.max_abs_output_diff < 5e-3  # only near-zero gammas (and zero betas) went
    # grad: 100 bins on [0, 1]; every layer's small gammas fill bin 0 and bins 1..59 are empty, so the
    # first valley is bin 1 and the threshold its left edge, 0.01, in every layer
    assert {r.group: r.threshold for r in report.rows} == {r.group: pytest.approx(0.01, abs=1e-12) for r in report.rows}
    assert all(r.channels_after == r.channels_before // 2 for r in report.rows if not r.residual)
    kept = {r.group: r.channels_after for r in report.rows}
    assert kept == expected_kept(model, x, 0.01)
    assert kept["bn1"] == 8 and 16 < kept["layer2.0.bn2"] < 32 and 32 < kept["layer3.0.bn2"] < 64  # shortcuts keep some
    # percent: one global threshold, the round(0.25 * 688)-th smallest of the 688 BN gammas (all small)
    _, by_percent = prune_model(model, x, "percent", percent=0.25)
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, BN)])
    assert gammas.numel() == 688
    cut = float(torch.sort(gammas).values[172 - 1])
    assert cut < 0.001 and {r.threshold for r in by_percent.rows} == {cut}
    assert {r.group: r.channels_after for r in by_percent.rows} == expected_kept(model, x, cut)
    assert by_percent.channels_after < by_percent.channels_before


def test_removed_torchvision_block_keeps_its_downsample() -> None:
    torch.manual_seed(0)
    model = create("resnet18").eval()
    randomise_bns(model)
    with torch.no_grad():
        for block in (model.layer2[0], model.layer3[1]):  # layer2.0 has a conv+BN downsample
            block.bn1.weight.zero_()
            block.bn1.bias.zero_()
    x = torch.randn(2, 3, 64, 64)
    masks = plan_pruning(model, x, "fixed")
    assert masks["layer2.0.downsample.1"].all() and not masks["layer2.0.bn2"].any()
    pruned, report = prune_model(model, x, "fixed")
    assert report.removed_blocks == ["layer2.0", "layer3.1"]
    assert report.max_abs_output_diff < 1e-4
    assert isinstance(pruned.layer2[0].downsample[0], nn.Conv2d)


def test_flops_target_half_of_resnet56() -> None:
    torch.manual_seed(0)
    model = create("resnet56").eval()
    randomise_bns(model, low=0.0)
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune_model(model, x, "flops-target", target_macs_reduction=0.5)
    assert abs(report.macs_reduction - 0.5) < 0.02
    assert report.macs_after == count_model(pruned, x).macs
    assert 0.0 < report.options["threshold"] < 1.0
    with pytest.raises(PolarpruneError, match="target_macs_reduction"):
        prune_model(model, x, "flops-target")


def test_repeated_prunes_compose(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet56").eval()
    randomise_bns(model, low=0.0)
    x = torch.randn(2, 3, 32, 32)
    once, first = prune_model(model, x, "fixed", threshold=0.3)
    twice, second = prune_model(once, x, "fixed", threshold=0.6)
    assert second.macs_after < first.macs_after
    rebuilt = serialization.build_model(twice.polarprune_spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in twice.state_dict().items()}
    path = tmp_path / "twice.safetensors"
    serialization.save(twice, path)
    assert torch.equal(outputs(serialization.load(path), x), outputs(twice, x))


def test_inplace_and_modes() -> None:
    model = create("resnet20")
    model.train()
    x = torch.randn(2, 3, 32, 32)
    copy_model, _ = prune_model(model, x, "uniform", ratio=0.5)
    assert model.training and copy_model.training
    assert model.layer1[0].conv1.out_channels == 16
    same, _ = prune_model(model, x, "uniform", ratio=0.5, inplace=True)
    assert same is model and model.layer1[0].conv1.out_channels == 8


def test_balance_and_keep_helpers() -> None:
    keep = torch.tensor([True, True, True, False, False, False])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    segs = [[0, 1, 2], [3, 4, 5]]
    assert balance_segments(keep, scores, segs, "max").tolist() == [True, True, True, True, True, True]
    assert balance_segments(keep, scores, segs, "mean").tolist() == [True, True, False, True, True, False]
    assert keep_at_least(torch.zeros(4, dtype=torch.bool), torch.tensor([0.1, 0.4, 0.3, 0.2]), 2).tolist() == [False, True, True, False]


# --------------------------------------------------------------------------------------------
# torchvision models: about half the channels, forward, MACs, save/load

TORCHVISION = [
    pytest.param("resnet18"),
    pytest.param("resnet50"),
    pytest.param("mobilenet_v2"),
    pytest.param("efficientnet_b0"),
    pytest.param("regnet_x_400mf"),
    pytest.param("vgg16_bn", marks=pytest.mark.slow),
    pytest.param("densenet121", marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_prune_to_half(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10).eval()
    randomise_bns(model, low=0.1)
    x = torch.randn(1, 3, 64, 64)
    pruned, report = prune_model(model, x, "uniform", ratio=0.5)
    assert report.channels_after == pytest.approx(report.channels_before / 2, rel=0.05)
    assert report.macs_reduction > 0.4
    assert outputs(pruned, x).shape == (1, 10)
    path = tmp_path / f"{name}.safetensors"
    serialization.save(pruned, path, extra={"report": report.summary()})
    loaded = serialization.load(path)
    assert torch.equal(outputs(loaded, x), outputs(pruned, x))
    assert serialization.read_metadata(path)["extra"]["report"]["macs_after"] == report.macs_after


@pytest.mark.parametrize("name,threshold", [("resnet56", 0.5), ("resnet20", 0.97), ("mobilenet_v2", 0.5)])
def test_macs_estimate_matches_the_counter(name: str, threshold: float) -> None:
    """flops-target relies on the per-layer MACs model: it must equal count_model after surgery."""
    from polarprune.pruning.graph import analyze, prepare_for_pruning
    from polarprune.pruning.resolve import decide
    from polarprune.pruning.surgery import apply_decision

    torch.manual_seed(0)
    model = create(name).eval()
    randomise_bns(model, low=0.0)
    x = torch.randn(1, 3, 32, 32)
    prepare_for_pruning(model, x)
    decision = decide(analyze(model, x), "fixed", threshold=threshold)
    assert decision.estimated_macs_before == count_model(model, x).macs
    assert (name == "resnet20") == bool(decision.removed_blocks)  # removed branches cost nothing
    apply_decision(model, decision)
    assert decision.estimated_macs == count_model(model, x).macs < decision.estimated_macs_before


def test_round_to_multiples() -> None:
    from polarprune.pruning.resolve import round_kept

    keep = torch.tensor([True, False, True, False, False, False])
    scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.3])
    assert round_kept(keep, scores, 4, "up").tolist() == [True, True, True, True, False, False]
    assert round_kept(keep, scores, 4, "nearest").tolist() == [True, True, True, True, False, False]
    three = torch.tensor([True, True, True, False, False, False])
    assert round_kept(three, scores, 2, "nearest").tolist() == [True, True, True, True, False, False]  # 3 -> 4 (half up)
    assert round_kept(keep, scores, 1, "up").tolist() == keep.tolist()
    model = create("resnet20").eval()
    randomise_bns(model, low=0.0)
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune_model(model, x, "fixed", threshold=0.5, round_to=4)
    assert all(r.channels_after % 4 == 0 for r in report.rows)
    assert outputs(pruned, x).shape == (1, 10)


# --------------------------------------------------------------------------------------------
# trial prunes: one analysis, the same decisions and MACs as prune_model


def polarize(model: nn.Module, seed: int = 0, share: float = 0.4) -> None:
    """Gammas as after polarization: about ``share`` of every BN's channels near 0, the rest in [0.3, 0.8)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                low = torch.rand(m.num_features, generator=g) < share
                m.weight.copy_(torch.where(low, torch.rand(m.num_features, generator=g) * 0.008,
                                           0.3 + 0.5 * torch.rand(m.num_features, generator=g)))


STRATEGY_CASES = (("grad", {}), ("fixed", {}), ("percent", {"percent": 0.3}))


def assert_trial_matches(model: nn.Module, x: torch.Tensor, compensate: bool = False) -> list[float]:
    from polarprune.pruning import TrialAnalysis

    trial = TrialAnalysis(model, x)
    ratios = []
    for strategy, options in STRATEGY_CASES:
        _, report = prune_model(model, x, strategy, compensate=compensate, **options)
        real = report.macs_after / report.macs_before
        assert trial.macs_ratio(model, strategy, **options) == real, strategy
        ratios.append(real)
    assert len(set(ratios)) > 1 or ratios[0] < 1.0  # the strategies really removed channels
    return ratios


@pytest.mark.parametrize("name,size", [
    ("resnet20", 32), ("resnet56", 32), ("vgg16", 32), ("resnet50", 64), ("mobilenet_v2", 64),
    pytest.param("densenet121", 64, marks=pytest.mark.slow),
])
def test_trial_macs_ratio_equals_prune_model(name: str, size: int) -> None:
    from polarprune.pruning import trial_macs_ratio

    torch.manual_seed(0)
    model = create(name, 10).eval()
    polarize(model)
    x = torch.randn(1, 3, size, size)
    ratios = assert_trial_matches(model, x)
    assert trial_macs_ratio(model, x, "grad") == ratios[0]
    assert min(ratios) < 0.9


def test_trial_when_the_first_block_of_a_stage_loses_its_branch() -> None:
    """The stride-2 option-A block's branch goes: the next block's conv1 keeps its zero-padded
    inputs (the old trial counted them as removed: 0.9624 against the real 0.9718)."""
    torch.manual_seed(0)
    model = create("resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.layer2[0].bn1.weight.zero_()
    minimal = assert_trial_matches(model, x, compensate=True)
    _, report = prune_model(model, x, "fixed")
    assert report.removed_blocks == ["layer2.0"] and minimal[1] == pytest.approx(0.9718, abs=1e-4)
    polarize(model, seed=3)  # a mixed case: polarized, and stage-2/3 first blocks emptied
    with torch.no_grad():
        model.layer2[0].bn1.weight.zero_()
        model.layer3[0].bn1.weight.zero_()
    assert_trial_matches(model, x)


def test_trial_on_a_model_with_removed_branches() -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    polarize(model, seed=1)
    with torch.no_grad():
        model.layer1[1].bn1.weight.zero_()
        model.layer2[0].bn1.weight.zero_()
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune_model(model, x, "fixed")
    assert report.removed_blocks == ["layer1.1", "layer2.0"]
    polarize(pruned, seed=2)
    ratios = assert_trial_matches(pruned, x)
    assert max(ratios) < 1.0


def test_trial_follows_the_live_gammas_and_params() -> None:
    from polarprune.pruning import TrialAnalysis

    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    trial = TrialAnalysis(model, x)
    assert trial.macs_ratio(model, "fixed", epoch=0) == 1.0
    with torch.no_grad():
        model.layer1[0].bn1.weight[:8] = 0.0
    assert trial.macs_ratio(model, "fixed", epoch=0) == 1.0  # cached for the epoch
    # layer1.0.conv1 loses 8 of 16 outputs and layer1.0.conv2 8 of 16 inputs: 2 * 9*16*8*32*32 MACs
    macs, params = trial.ratios(model, "fixed", epoch=1)
    before = count_model(model, x).macs
    assert macs == (before - 2 * 9 * 16 * 8 * 32 * 32) / before
    _, report = prune_model(model, x, "fixed", compensate=False)
    assert params == report.params_after / report.params_before
    assert trial.channel_macs()["layer1.0.bn1"] == 2 * 9 * 16 * 32 * 32  # its producer's and consumer's share


def test_trial_reads_another_model_of_the_same_architecture() -> None:
    """A trial analysis reads the gammas of a copy (e.g. an EMA) passed to ``decide``; convs without a bias
    (a None parameter slot) are not a different architecture."""
    import copy

    from polarprune.pruning import TrialAnalysis

    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    trial = TrialAnalysis(model, x)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.layer1[0].bn1.weight[:8] = 0.0
    before = count_model(model, x).macs
    assert trial.macs_ratio(other, "fixed") == (before - 2 * 9 * 16 * 8 * 32 * 32) / before
    with pytest.raises(PolarpruneError, match="no parameter"):
        trial.macs_ratio(create("resnet32").eval(), "fixed")


def test_torchvision_shufflenet_prunes_exactly() -> None:
    """Torch-Pruning cannot trace the channel shuffle; polarprune keeps the shuffled channels whole
    and prunes the channels inside every branch."""
    import torchvision
    from torchvision.models.shufflenetv2 import InvertedResidual

    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x1_0(num_classes=10).eval()
    randomise_bns(model)
    x = torch.randn(2, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # half of every BN's gamma and beta set to 0
        for m in model.modules():
            if isinstance(m, BN):
                drop = torch.randperm(m.num_features, generator=g)[: m.num_features // 2]
                m.weight[drop] = 0.0
                m.bias[drop] = 0.0
    groups = channel_groups(model, x)
    assert any("channel shuffle stage2.0.shuffle" in group.reason for group in groups)
    inside = [group for group in groups if "stage2.1.branch2.1" in group.bn_names]
    assert inside[0].prunable and "stage2.1.branch2.4" in inside[0].bn_names  # the branch's first BN and its depthwise BN
    pruned, report = prune_model(model, x, "fixed")
    assert torch.allclose(outputs(pruned, x), outputs(model, x), atol=1e-5)
    assert report.macs_after < 0.8 * report.macs_before
    assert pruned.stage2[1].branch2[0].out_channels < model.stage2[1].branch2[0].out_channels
    assert all(type(block) is InvertedResidual for block in pruned.modules() if isinstance(block, InvertedResidual))
    assert not hasattr(pruned.stage2[1], "shuffle")
