"""Tests for polarprune.flops and the `polarprune flops` command: reference values of the
papers' models, hand-computed costs of tiny models, and the counter leaving the model alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polarprune.cli import main
from polarprune.errors import PolarpruneError
from polarprune.flops import (
    ModelCost,
    conv_macs,
    count_model,
    count_params,
    format_units,
    per_image,
    pool_window,
    profile_model,
)
from polarprune.models import create

# ---------------------------------------------------------------------------------------------
# Reference values (REFERENCE.md section 5)


def test_resnet56_cifar10_macs_match_the_paper() -> None:
    cost = count_model(create("resnet56", 10), (3, 32, 32))
    assert cost.macs == 125_485_696  # exact: a missing classifier (640 MACs) would fail
    assert cost.params == count_params(create("resnet56", 10))


def test_vgg16_cifar100_macs_match_the_paper() -> None:
    assert count_model(create("vgg16", 100), (3, 32, 32)).macs == 313_509_888


def test_torchvision_resnet50_macs_at_224() -> None:
    model = create("resnet50", 1000)
    cost = count_model(model, (3, 224, 224))
    assert cost.macs == 4_089_184_256
    # the same count made independently: every conv's output elements x (in/groups) x kernel
    # area, every linear's in x out, read from forward hooks
    counted: list[int] = []

    def conv_or_linear(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            counted.append(output.numel() * module.in_channels // module.groups * kh * kw)
        elif isinstance(module, torch.nn.Linear):
            counted.append(module.in_features * module.out_features)

    for m in model.modules():
        m.register_forward_hook(conv_or_linear)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    assert sum(counted) == cost.macs
    assert cost.params == 25_557_032  # torchvision's documented parameter count


# ---------------------------------------------------------------------------------------------
# Hand-computed tiny models


def test_grouped_conv_with_bias() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True)
    cost = count_model(conv, (4, 5, 5))
    macs = 3 * 3 * (4 // 2) * 6 * 5 * 5  # k*k*(C_in/groups)*C_out*H_out*W_out = 2700
    assert cost == ModelCost(macs=macs, flops=macs + 6 * 5 * 5, params=6 * 2 * 9 + 6)


def test_strided_conv_of_pruned_width_7() -> None:
    conv = nn.Conv2d(3, 7, 3, stride=2, bias=False)  # 9x9 -> 4x4
    cost = count_model(conv, (3, 9, 9))
    assert cost.macs == cost.flops == 3 * 3 * 3 * 7 * 4 * 4
    assert cost.params == 7 * 3 * 9


def test_pruned_widths_in_a_sequence() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 7, 3, padding=1, bias=False), nn.BatchNorm2d(7), nn.ReLU(), nn.Conv2d(7, 5, 3, padding=1, bias=False)
    )
    cost = count_model(model, (3, 8, 8))
    macs = 9 * 3 * 7 * 64 + 9 * 7 * 5 * 64
    assert cost.macs == macs
    assert cost.flops == macs + 2 * 7 * 64 + 7 * 64  # BN: scale+shift; ReLU: 1 per element


def test_pruned_cifar_resnet_block() -> None:
    """Narrowing one basic block's inner width 16 -> 5 saves exactly the two convs' share."""
    full = create("resnet20", 10)
    pruned = create("resnet20", 10)
    block = pruned.layer1[0]
    block.conv1 = nn.Conv2d(16, 5, 3, 1, 1, bias=False)
    block.bn1 = nn.BatchNorm2d(5)
    block.conv2 = nn.Conv2d(5, 16, 3, 1, 1, bias=False)
    saved_macs = 2 * 9 * 16 * (16 - 5) * 32 * 32
    saved_flops = saved_macs + (16 - 5) * 32 * 32 * (2 + 1)  # bn1 and the first ReLU shrink too
    full_cost, pruned_cost = count_model(full, (3, 32, 32)), count_model(pruned, (3, 32, 32))
    assert full_cost.macs - pruned_cost.macs == saved_macs
    assert full_cost.flops - pruned_cost.flops == saved_flops


def test_linear_with_and_without_bias() -> None:
    assert count_model(nn.Linear(5, 3), (5,)) == ModelCost(macs=15, flops=18, params=18)
    assert count_model(nn.Linear(5, 3, bias=False), (5,)) == ModelCost(macs=15, flops=15, params=15)
    # a linear over a sequence costs in*out per row
    assert count_model(nn.Linear(5, 3, bias=False), (4, 5)).macs == 4 * 15


@pytest.mark.parametrize(
    ("module", "shape", "flops"),
    [
        (nn.BatchNorm2d(4), (4, 3, 3), 2 * 36),
        (nn.BatchNorm2d(4, affine=False), (4, 3, 3), 2 * 36),
        (nn.ReLU(), (4, 3, 3), 36),
        (nn.ReLU(inplace=True), (4, 3, 3), 36),
        (nn.ReLU6(), (4, 3, 3), 36),
        (nn.Hardswish(), (4, 3, 3), 36),
        (nn.SiLU(), (4, 3, 3), 36),
        (nn.Sigmoid(), (4, 3, 3), 36),
        (nn.GELU(), (4, 3, 3), 36),
        (nn.MaxPool2d(2), (2, 4, 4), 2 * 2 * 2 * 4),  # 8 outputs, window 4
        (nn.AvgPool2d(3, stride=1), (1, 5, 5), 9 * 9),  # 9 outputs, window 9
        (nn.AdaptiveAvgPool2d(1), (3, 4, 4), 48),  # global pooling: 1 per input element
        (nn.AdaptiveMaxPool2d(1), (3, 4, 4), 48),
        (nn.Softmax(dim=1), (5,), 3 * 5),
        (nn.LayerNorm(6), (2, 6), 6 * 12),  # runtime statistics 4 + affine 2
        (nn.GroupNorm(2, 4, affine=False), (4, 3, 3), 4 * 36),
    ],
)
def test_elementwise_layers(module: nn.Module, shape: tuple[int, ...], flops: int) -> None:
    cost = count_model(module, shape)
    assert cost.macs == 0
    assert cost.flops == flops


class Residual(nn.Module):
    """1x1 conv, BN, in-place residual add and in-place functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return F.relu(out, inplace=True)


def test_residual_add_and_in_place_ops() -> None:
    profile = profile_model(Residual(), (2, 3, 3))
    assert profile.cost.macs == 2 * 2 * 9
    assert profile.per_op["add"].flops == 18
    assert profile.per_op["relu"].flops == 18
    assert profile.cost.flops == 36 + 36 + 18 + 18  # conv, BN, add, ReLU


class DataMovement(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, F.pad(x, (0, 0, 0, 0, 1, 1))[:, 1:3]], dim=1)
        return torch.flatten(y.permute(0, 2, 3, 1), 1)[:, ::2]


def test_data_movement_is_free() -> None:
    profile = profile_model(DataMovement(), (2, 3, 3))
    assert profile.cost == ModelCost(0, 0, 0)
    assert profile.uncounted == {}


def test_convolutions_of_any_dimension() -> None:
    assert count_model(nn.Conv1d(2, 3, 3, bias=False), (2, 10)).macs == 3 * 2 * 3 * 8
    assert count_model(nn.Conv3d(1, 2, (1, 2, 2), bias=False), (1, 2, 3, 3)).macs == 2 * 2 * 2 * 2 * 4
    # transposed: every input element is spread over C_out * k*k outputs
    assert count_model(nn.ConvTranspose2d(2, 3, 2, stride=2, bias=False), (2, 3, 3)).macs == 2 * 9 * 3 * 4


class Attention(nn.Module):
    """Self-attention through three code paths: fused, unfused with weights, and SDPA."""

    def __init__(self, path: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == 0:
            return self.mha(x, x, x, need_weights=False)[0]
        if self.path == 1:
            return self.mha(x, x + 0, x + 0, need_weights=True)[0]
        return self.mha(x, x, x, need_weights=False, attn_mask=torch.zeros(5, 5))[0]


@pytest.mark.parametrize("path", [0, 1, 2])
def test_attention_macs_agree_across_code_paths(path: int) -> None:
    # q, k, v and output projections 4 * L*E*E, plus Q K^T and A V: 2 * L*L*E (L=5, E=8)
    assert count_model(Attention(path), (5, 8)).macs == 4 * 5 * 8 * 8 + 2 * 5 * 5 * 8


def test_unknown_ops_are_reported_not_hidden() -> None:
    class Cumulative(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=1)

    profile = profile_model(Cumulative(), (4,))
    assert profile.uncounted == {"cumsum": 1}
    assert profile.cost.flops == 0


# ---------------------------------------------------------------------------------------------
# The counter leaves the model alone; batches count per image


def test_counting_restores_modes_and_leaves_state_untouched() -> None:
    model = create("small_cnn", 10, in_channels=1)
    model.train()
    model.classifier[1].eval()  # a mixed-mode model: one frozen BN
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
    modes_before = [m.training for m in model.modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    count_model(model, (1, 8, 8))
    assert [m.training for m in model.modules()] == modes_before
    state_after = model.state_dict()
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_modes_restored_after_a_failing_forward() -> None:
    model = create("vgg11", 10)
    model.train()
    with pytest.raises(PolarpruneError, match=r"cannot run CifarVGG on an input of shape \(1, 3, 8, 8\)"):
        count_model(model, (3, 8, 8))  # five 2x2 max-pools do not fit an 8x8 image
    assert all(m.training for m in model.modules())


def test_example_batch_counts_per_image() -> None:
    model = create("resnet20", 10)
    single = count_model(model, (3, 32, 32))
    batch = count_model(model, torch.randn(4, 3, 32, 32))
    assert batch == single
    assert single.macs > 0


@pytest.mark.parametrize("shape", [(), (3, 0, 32), (3, -1, 32), (3.0, 32, 32)])
def test_bad_input_shapes_are_user_errors(shape: tuple) -> None:
    with pytest.raises(PolarpruneError, match="input shape"):
        count_model(nn.Conv2d(3, 4, 3), shape)


def test_wrong_channel_count_is_a_one_line_error() -> None:
    with pytest.raises(PolarpruneError) as info:
        count_model(create("resnet20", 10), (1, 32, 32))
    assert "\n" not in str(info.value)
    assert "(1, 1, 32, 32)" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_conv_macs_formula() -> None:
    assert conv_macs((1, 4, 5, 5), (6, 2, 3, 3), (1, 6, 5, 5)) == 2700
    assert conv_macs((1, 2, 3, 3), (2, 3, 2, 2), (1, 3, 6, 6), transposed=True) == 216


def test_pool_window() -> None:
    assert pool_window([3], 2) == 9
    assert pool_window(2, 3) == 8
    assert pool_window([2, 3], 2) == 6


def test_per_image_rounds_to_nearest() -> None:
    assert per_image(12, 4) == 3
    assert per_image(14, 4) == 4  # 3.5 rounds up
    assert per_image(13, 4) == 3
    assert per_image(10**20 + 3, 1) == 10**20 + 3  # exact for big counts


def test_format_units() -> None:
    assert format_units(125_485_696) == "125.49 M"
    assert format_units(4_089_184_256) == "4.09 G"
    assert format_units(853_018) == "853.02 K"
    assert format_units(640) == "640"


def test_model_cost_as_dict() -> None:
    assert ModelCost(1, 2, 3).as_dict() == {"macs": 1, "flops": 2, "params": 3}


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_json_is_exactly_the_three_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "resnet56", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert set(data) == {"macs", "flops", "params"}
    assert data == count_model(create("resnet56", 10), (3, 32, 32)).as_dict()
    assert out.strip().count("\n") == 0


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "vgg16", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "313,509,888" in out
    assert "313.51 M" in out
    assert "input 3x32x32" in out


def test_cli_input_size_and_channels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "small_cnn", "--in-channels", "1", "--input-size", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == count_model(create("small_cnn", 10, in_channels=1), (1, 8, 8)).as_dict()


def test_cli_torchvision_defaults_to_224(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "resnet18", "--num-classes", "1000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == count_model(create("resnet18", 1000), (3, 224, 224)).as_dict()
    assert 1.8e9 < data["macs"] < 1.83e9  # torchvision's ResNet-18: 1.81 G MACs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flops", "no_such_model"], "unknown model 'no_such_model'"),
        (["flops", "missing/model.safetensors"], "model file not found: missing/model.safetensors"),
        (["flops", "resnet20", "--input-size", "0"], "--input-size must be >= 1"),
        (["flops", "vgg11", "--input-size", "8"], "vgg11 does not run on input 1x3x8x8: it expects N x 3 x H x W"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polarprune: error: ")
    assert message in lines[0]


def test_cli_model_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model file that records no input size is counted at its family's (small_cnn: 1x8x8, the digits;
    the command once said 32 here, 16 times the MACs `prune` and `eval` report)."""
    serialization = pytest.importorskip("polarprune.serialization")
    model = create("small_cnn", 10, in_channels=1)
    path = tmp_path / "small.safetensors"
    serialization.save(model, path)
    assert main(["flops", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == count_model(model, (1, 8, 8)).as_dict() and data["macs"] == 1_497_728


def test_index_bookkeeping_costs_nothing() -> None:
    """A comparison on integer or bool tensors computes addresses, not activations: 0 FLOPs; the same
    comparison on floats costs one per element. So an option-A shortcut and its index-placing form count alike."""
    from polarprune.flops import CostCounter
    from polarprune.models.cifar_resnet import PadShortcut
    from polarprune.models.layers import ChannelPlacementShortcut

    with CostCounter() as counter:
        (torch.arange(6) + 1) >= 2
    assert counter.total.flops == 0 and not counter.uncounted
    with CostCounter() as counter:
        torch.linspace(0, 1, 6) >= 0.5
    assert counter.total.flops == 6
    x = torch.randn(1, 4, 8, 8)
    pad, placed = PadShortcut(2, 4), ChannelPlacementShortcut.from_pad_shortcut(2, 4, 4)
    assert torch.equal(pad(x), placed(x))
    assert count_model(pad, x) == count_model(placed, x)
