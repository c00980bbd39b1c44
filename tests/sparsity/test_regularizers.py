"""Regularizer math against hand-computed values, the hook's place in a step (AMP), FLOPs weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from polarprune.config import SparsityConfig
from polarprune.flops import count_model
from polarprune.models import create
from polarprune.sparsity import build_hooks
from polarprune.sparsity.masks import save_mask
from polarprune.pruning.trial import TrialAnalysis
from polarprune.sparsity.monitor import GammaMonitorHook
from polarprune.errors import PolarpruneError
from polarprune.sparsity.regularizers import (
    REGULARIZERS,
    SparsityHook,
    add_l1_subgradient_,
    clamp_,
    flops_weights,
    l1_penalty,
    linear_map,
    make_regularizer,
    polarization_penalty,
)

# Two layers with different means (0.4 and 0.6); the global mean is 2.6 / 5 = 0.52.
LAYER_A = [0.2, 0.6]
LAYER_B = [0.9, 0.1, 0.8]


def gammas(a: list[float] = LAYER_A, b: list[float] = LAYER_B) -> list[nn.Parameter]:
    return [nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))]


# ----------------------------------------------------------------------------- polarization


def test_polarization_value_uses_one_global_mean() -> None:
    # t*sum|g| = 1.2 * 2.6 = 3.12; sum|g - 0.52| = .32 + .08 + .38 + .42 + .28 = 1.48
    value = polarization_penalty(gammas(), lbd=0.1, t=1.2)
    assert value.item() == pytest.approx(0.1 * (3.12 - 1.48), abs=1e-6)
    # per-layer means (0.4, 0.6) would give sum|g - mean_l| = 0.4 + 1.0 = 1.4 -> 0.172
    assert value.item() != pytest.approx(0.1 * (3.12 - 1.40), abs=1e-4)


def test_polarization_gradient_global_mean() -> None:
    g = gammas()
    polarization_penalty(g, lbd=0.1, t=1.2).backward()
    # d/dg_i = lbd * (t - sign(g_i - m) + alpha/N * sum_j sign(g_j - m)); signs (-,+,+,-,+): sum = +1
    assert torch.allclose(g[0].grad, torch.tensor([0.24, 0.04]), atol=1e-6)
    assert torch.allclose(g[1].grad, torch.tensor([0.04, 0.24, 0.04]), atol=1e-6)


def test_polarization_gradient_detached_mean() -> None:
    g = gammas()
    polarization_penalty(g, lbd=0.1, t=1.2, detach_mean=True).backward()
    assert torch.allclose(g[0].grad, torch.tensor([0.22, 0.02]), atol=1e-6)
    assert torch.allclose(g[1].grad, torch.tensor([0.02, 0.22, 0.02]), atol=1e-6)


def test_polarization_alpha_and_weights() -> None:
    g = gammas()
    # alpha = 0.5: mean term 0.26; |g - 0.26| = .06 + .34 + .64 + .16 + .54 = 1.74
    assert polarization_penalty(g, 1.0, 1.0, alpha=0.5).item() == pytest.approx(2.6 - 1.74, abs=1e-6)
    # layer weights (2, 0.5) multiply each layer's terms; the mean stays global (0.52)
    weighted = polarization_penalty(g, 1.0, 1.2, weights=[2.0, 0.5]).item()
    layer_a = 1.2 * 0.8 - (0.32 + 0.08)
    layer_b = 1.2 * 1.8 - (0.38 + 0.42 + 0.28)
    assert weighted == pytest.approx(2.0 * layer_a + 0.5 * layer_b, abs=1e-6)


def test_polarization_can_be_negative() -> None:
    # t = 0: only -sum|g - mean| remains
    assert polarization_penalty(gammas(), 1.0, 0.0).item() == pytest.approx(-1.48, abs=1e-6)


def test_polarization_is_fp32_under_autocast() -> None:
    g = gammas()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = polarization_penalty(g, 0.1, 1.2)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(0.164, abs=1e-6)


# ----------------------------------------------------------------------------- L1 and mask-L1


def test_l1_penalty_and_subgradient() -> None:
    g = gammas([0.2, -0.6], [0.9, 0.0, -0.8])
    assert l1_penalty(g, 0.01).item() == pytest.approx(0.01 * 2.5, abs=1e-7)
    for p in g:
        p.grad = torch.ones_like(p)
    add_l1_subgradient_(g, 0.01)
    assert torch.allclose(g[0].grad, torch.tensor([1.01, 0.99]))
    assert torch.allclose(g[1].grad, torch.tensor([1.01, 1.0, 0.99]))  # sign(0) = 0


def test_l1_subgradient_creates_missing_grad_and_weights() -> None:
    g = gammas([0.2, -0.6], [0.9, 0.1, -0.8])
    add_l1_subgradient_(g, 0.1, weights=[2.0, 0.5])
    assert torch.allclose(g[0].grad, torch.tensor([0.2, -0.2]))
    assert torch.allclose(g[1].grad, torch.tensor([0.05, 0.05, -0.05]))


def test_mask_l1_only_masked_channels() -> None:
    g = gammas([0.2, -0.6], [0.9, 0.3, -0.8])
    keep = [torch.tensor([True, False]), torch.tensor([False, True, True])]
    for p in g:
        p.grad = torch.full_like(p, 0.125)
    add_l1_subgradient_(g, 0.01, regularize=[~k for k in keep])
    assert torch.allclose(g[0].grad[1], torch.tensor(0.115))
    assert torch.allclose(g[1].grad[0], torch.tensor(0.135))
    # kept channels get exactly nothing extra
    assert g[0].grad[0].item() == 0.125
    assert g[1].grad[1].item() == 0.125 and g[1].grad[2].item() == 0.125


def test_clamp() -> None:
    g = [nn.Parameter(torch.tensor([-0.1, 0.5, 1.3])), nn.Parameter(torch.tensor([2.0]))]
    clamp_(g, 1.0)
    assert g[0].tolist() == pytest.approx([0.0, 0.5, 1.0]) and g[1].tolist() == [1.0]
    h = [nn.Parameter(torch.tensor([-0.1, 1.3]))]
    clamp_(h, None)
    assert h[0].tolist() == pytest.approx([0.0, 1.3])


# ----------------------------------------------------------------------------- the hook in a step


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


BN_NAMES = ["1", "4"]


def engine_step(model: nn.Module, hook: SparsityHook, x: torch.Tensor, y: torch.Tensor, *, amp: bool) -> dict[str, torch.Tensor]:
    """The engine's sequence: autocast forward, + loss_term, scale -> backward -> unscale_ -> hook.

    Returns the gamma gradients before and after ``after_backward``.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=amp, init_scale=2.0**12)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(model(x), y)
    total = loss.float()
    term = hook.loss_term(model)
    if term is not None:
        total = total + term
    opt.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(opt)
    before = {n: model.get_submodule(n).weight.grad.clone() for n in BN_NAMES}
    hook.after_backward(model)
    after = {n: model.get_submodule(n).weight.grad.clone() for n in BN_NAMES}
    scaler.step(opt)
    scaler.update()
    hook.after_step(model)
    return {"before": before, "after": after}  # type: ignore[dict-item]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.mark.parametrize("regularizer", ["l1", "mask-l1"])
def test_l1_hook_lands_on_unscaled_gradients(regularizer: str) -> None:
    x, y = batch()
    keep = {"1": torch.tensor([True, False, True, False]), "4": torch.tensor([False] * 3 + [True] * 3)}
    lbd = 0.05
    results = {}
    for amp in (False, True):
        model = tiny_net()
        masks = {"regularize": [~keep[n] for n in BN_NAMES]} if regularizer == "mask-l1" else {}
        hook = SparsityHook(make_regularizer(regularizer, lbd=lbd, **masks), BN_NAMES)
        results[amp] = engine_step(model, hook, x, y, amp=amp)
    for amp, res in results.items():
        model = tiny_net()
        for n in BN_NAMES:
            expected = lbd * torch.sign(model.get_submodule(n).weight.detach())
            if regularizer == "mask-l1":
                expected = expected * (~keep[n]).float()
            # the hook adds exactly lbd*sign (not lbd*sign / scale): it runs after unscale_
            assert torch.allclose(res["after"][n] - res["before"][n], expected, atol=1e-7), (amp, n)
    for n in BN_NAMES:  # bf16 + scaler task gradients match fp32 within bf16 tolerance
        assert torch.allclose(results[True]["after"][n], results[False]["after"][n], atol=2e-2, rtol=5e-2)


def test_polarization_hook_under_amp_matches_fp32() -> None:
    x, y = batch()
    grads = {}
    for amp in (False, True):
        model = tiny_net()
        for n in BN_NAMES:
            nn.init.constant_(model.get_submodule(n).weight, 0.5)
            model.get_submodule(n).weight.data[::2] = 0.3
        hook = SparsityHook(make_regularizer("polarization", lbd=0.05, t=1.2, clamp=1.0), BN_NAMES)
        grads[amp] = engine_step(model, hook, x, y, amp=amp)["after"]
    for n in BN_NAMES:
        assert torch.allclose(grads[True][n], grads[False][n], atol=2e-2, rtol=5e-2)
    # the penalty's own gradient under the scaler is the fp32 one exactly
    model = tiny_net()
    hook = SparsityHook(make_regularizer("polarization", lbd=0.05, t=1.2), BN_NAMES)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = hook.loss_term(model)
    assert term is not None and term.dtype == torch.float32
    scaler.scale(term).backward()
    scaler.unscale_(opt)
    scaled = [model.get_submodule(n).weight.grad.clone() for n in BN_NAMES]
    model.zero_grad()
    ref = [model.get_submodule(n).weight for n in BN_NAMES]
    polarization_penalty(ref, 0.05, 1.2).backward()
    for a, b in zip(scaled, ref):
        assert torch.allclose(a, b.grad, atol=1e-7)


def test_polarization_hook_clamps_after_step() -> None:
    model = tiny_net()
    bn = model.get_submodule("1")
    bn.weight.data = torch.tensor([-0.2, 0.5, 1.4, 0.9])
    hook = SparsityHook(make_regularizer("polarization", lbd=0.0, t=1.0, clamp=1.0), BN_NAMES)
    assert hook.loss_term(model) is None  # lambda 0: nothing added
    hook.after_step(model)
    assert bn.weight.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.9])
    l1 = SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES)
    bn.weight.data = torch.tensor([-0.2, 0.5, 1.4, 0.9])
    l1.after_step(model)  # L1 never clamps
    assert bn.weight.tolist() == pytest.approx([-0.2, 0.5, 1.4, 0.9])


class FakeTrial:
    """Trial decisions whose MACs ratios (and latency ratios: ``latency``, else the same) are given in turn."""

    def __init__(self, ratios: list[float], latency: list[float] | None = None) -> None:
        self.ratios = list(ratios)
        self.latency = list(latency) if latency is not None else None
        self.calls = 0

    def decide(self, model: nn.Module, strategy: str, epoch: int | None = None) -> SimpleNamespace:
        self.calls += 1
        self.cache_keys = getattr(self, "cache_keys", []) + [epoch]
        macs = self.ratios.pop(0)
        return SimpleNamespace(macs_ratio=macs, cost_ratio=self.latency.pop(0) if self.latency is not None else macs)


def test_target_macs_ratio_stops_regularizing_and_survives_resume() -> None:
    model = tiny_net()
    trial = FakeTrial([0.9, 0.7, 0.5])
    hook = SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES, target_macs_ratio=0.6, trial=trial)
    assert hook.on_epoch_end(model, 0)["lambda"] == pytest.approx(0.1)
    assert hook.on_epoch_end(model, 1)["sparsity_target_reached"] == 0.0
    metrics = hook.on_epoch_end(model, 2)
    assert metrics["lambda"] == 0.0 and metrics["sparsity_target_reached"] == 1.0
    assert metrics["trial_macs_ratio_grad"] == 0.5
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hook.after_backward(model)  # lambda 0: gradients untouched
    assert all(float(model.get_submodule(n).weight.grad.abs().sum()) == 0.0 for n in BN_NAMES)
    state = hook.state_dict()
    resumed = SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES, target_macs_ratio=0.6, trial=FakeTrial([]))
    resumed.load_state_dict(state)
    assert resumed.lbd == 0.0 and resumed.target_reached and resumed.reached_epoch == 2
    assert resumed.on_epoch_end(model, 3)["lambda"] == 0.0  # no trial once reached
    assert trial.calls == 3


def test_target_check_every_stops_within_the_epoch_and_resumes_counting_steps() -> None:
    model = tiny_net()
    trial = FakeTrial([0.9, 0.8, 0.7, 0.5])
    hook = SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES, target_macs_ratio=0.6, trial=trial, check_every=3)
    hook.on_train_start(model, 2)
    for _ in range(4):  # epoch 1: a check after step 3 only (0.9), then the epoch end (0.8)
        hook.after_step(model)
    assert trial.calls == 1
    assert hook.on_epoch_end(model, 0)["trial_macs_ratio_grad"] == 0.8 and trial.calls == 2
    resumed = SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES, target_macs_ratio=0.6, trial=trial, check_every=3)
    resumed.load_state_dict(hook.state_dict())  # a resume at the epoch boundary
    resumed.on_train_start(model, 2)
    for _ in range(2):
        resumed.after_step(model)
    assert trial.calls == 2  # the step count restarted with the epoch
    resumed.after_step(model)  # step 3 of epoch 2: 0.7, above the target
    assert resumed.lbd == pytest.approx(0.1)
    for _ in range(3):  # step 6: 0.5 reaches it in the middle of epoch 2
        resumed.after_step(model)
    assert resumed.lbd == 0.0 and resumed.target_reached and resumed.reached_epoch == 1
    for _ in range(6):
        resumed.after_step(model)
    metrics = resumed.on_epoch_end(model, 1)
    assert metrics["lambda"] == 0.0 and "trial_macs_ratio_grad" not in metrics and trial.calls == 4
    assert trial.cache_keys == [None, 0, None, None]  # mid-epoch trials bypass the per-epoch cache
    with pytest.raises(ValueError, match="check_every"):
        SparsityHook(make_regularizer("l1", lbd=0.1), BN_NAMES, trial=trial, check_every=3)


# ----------------------------------------------------------------------------- FLOPs weights and the cost model


def test_linear_map() -> None:
    assert linear_map({"a": 1.0, "b": 2.0, "c": 3.0}, 0.5, 1.5) == pytest.approx({"a": 0.5, "b": 1.0, "c": 1.5})
    assert linear_map({"a": 4.0, "b": 4.0}, 0.5, 1.5) == {"a": 1.0, "b": 1.0}


def test_channel_macs_hand_computed() -> None:
    model = tiny_net().eval()
    macs = TrialAnalysis(model, torch.randn(2, 1, 6, 6)).channel_macs()
    # bn "1": conv0 per output channel 9*1*36 = 324, conv3 per input channel 9*6*36 = 1944
    assert macs["1"] == pytest.approx(324 + 1944)
    # bn "4": conv3 per output channel 9*4*36 = 1296, linear per input feature 3
    assert macs["4"] == pytest.approx(1296 + 3)
    weights = flops_weights({n: macs[n] for n in BN_NAMES}, 0.5, 1.5)
    assert weights == {"1": 1.5, "4": 0.5}


def test_channel_macs_through_flatten() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 5))
    trial = TrialAnalysis(model, torch.randn(1, 1, 4, 4))
    assert trial.channel_macs()["1"] == pytest.approx(16 + 16 * 5)  # 1x1 conv over 16 positions; 16 features * 5
    decision = trial.decide(model, "mask", masks={"1": torch.tensor([True, False])})
    assert decision.estimated_macs == pytest.approx(16 + 16 * 5)
    assert decision.estimated_params == pytest.approx(1 + 2 + 16 * 5 + 5)  # conv, BN (2 per channel), linear in/out + bias


def test_flops_weights_order_on_vgg() -> None:
    model = create("vgg11", 10)
    macs = TrialAnalysis(model, torch.randn(1, 3, 32, 32)).channel_macs()
    names = ["features.1", "features.5", "classifier.1"]
    w = flops_weights({n: macs[n] for n in names}, 0.5, 1.5)
    # first conv block (32x32) costs the most per channel, the FC BN1d the least
    assert w["features.1"] == 1.5 and w["classifier.1"] == 0.5 and 0.5 < w["features.5"] < 1.5


@pytest.mark.parametrize(
    "name,shape", [("resnet20", (3, 32, 32)), ("vgg11", (3, 32, 32)), ("small_cnn", (1, 8, 8)), ("mobilenet_v2", (3, 32, 32))]
)
def test_cost_model_matches_flops_counter(name: str, shape: tuple[int, ...]) -> None:
    model = create(name, 10, in_channels=shape[0])
    decision = TrialAnalysis(model, torch.randn(1, *shape)).decide(model, "fixed")  # gammas 1: nothing removed
    reference = count_model(model, shape)
    assert decision.estimated_macs_before == reference.macs and decision.estimated_params_before == reference.params
    assert decision.estimated_macs == reference.macs


def test_trial_pruner_small_cnn_hand_checked() -> None:
    model = create("small_cnn", 10, in_channels=1, bn_init=0.5)
    first = model.get_submodule("features.1")
    first.weight.data[:16] = 0.001  # half of the first layer below 0.01
    trial = TrialAnalysis(model, torch.randn(2, 1, 8, 8), bn_names=["features.1", "features.4", "features.8", "features.11", "classifier.1"])
    keep = trial.keep_masks(model, "fixed")
    assert int(keep["features.1"].sum()) == 16 and int(keep["features.4"].sum()) == 32
    macs, params = trial.ratios(model, "fixed")
    # conv0 (9*1*32*64) and conv3 (9*32*32*64) lose half: 1497728 - 9216 - 294912
    assert macs == pytest.approx((1497728 - 9216 - 294912) / 1497728)
    assert params == pytest.approx((70122 - 144 - 4608 - 32) / 70122)


def test_monitor_hook_metrics_and_histograms() -> None:
    model = create("small_cnn", 10, in_channels=1, bn_init=0.5)
    names = ["features.1", "features.4"]
    model.get_submodule("features.1").weight.data[:8] = 0.0
    trial = TrialAnalysis(model, torch.randn(2, 1, 8, 8), bn_names=names)

    class Writer:
        def __init__(self) -> None:
            self.tags: list[str] = []

        def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
            self.tags.append(tag)

    writer = Writer()
    hook = GammaMonitorHook(names, trial, current_lambda=lambda: 1e-4)
    metrics = hook.on_epoch_end(model, 0, writer)
    assert metrics["gamma_frac_below_0.01"] == pytest.approx(8 / 64)
    assert metrics["lambda"] == 1e-4
    assert metrics["trial_macs_ratio_fixed"] < 1.0 and metrics["trial_params_ratio_grad"] <= 1.0
    assert writer.tags == ["gamma/all", "gamma/features.1", "gamma/features.4"]


# ----------------------------------------------------------------------------- build_hooks


def test_build_hooks_variants(tmp_path) -> None:
    model = create("resnet20", 10, bn_init=0.5)
    x = torch.randn(2, 3, 32, 32)
    assert build_hooks(SparsityConfig(regularizer="none"), model, x) == []
    hooks = build_hooks(SparsityConfig(regularizer="polarization", lbd=1e-4, t=1.2), model, x)
    assert [type(h).__name__ for h in hooks] == ["SparsityHook", "GammaMonitorHook"]
    assert hooks[0].regularizer.clamp == 1.0 and len(hooks[0].bn_names) == 18
    l1 = build_hooks(SparsityConfig(regularizer="l1", monitor=False, flops_weighted=True), model, x)
    assert len(l1) == 1 and l1[0].regularizer.clamp is None
    w = l1[0].layer_weights
    assert min(w.values()) == pytest.approx(0.5) and max(w.values()) == pytest.approx(1.5)
    assert w["layer1.0.bn2"] > w["layer1.0.bn1"]  # a residual channel feeds several consumers
    keep = {"layer1.0.bn1": torch.tensor([True] * 8 + [False] * 8)}
    path = save_mask(keep, tmp_path / "m.json", "resnet20")
    masked = build_hooks(SparsityConfig(regularizer="mask-l1", mask=str(path), monitor=False), model, x)
    assert masked[0].bn_names == ["layer1.0.bn1"]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    masked[0].after_backward(model)
    grad = model.get_submodule("layer1.0.bn1").weight.grad
    assert grad[:8].abs().sum() == 0 and torch.allclose(grad[8:], torch.full((8,), 1e-4))


# ----------------------------------------------------------------------------- the registry


def test_regularizer_registry_names_match_config_and_unknown_is_one_line(monkeypatch) -> None:
    from pydantic import Field

    from polarprune.sparsity.regularizers import RegularizerParams, resolve_sparsity

    for make in (lambda: make_regularizer("l2", lbd=0.1), lambda: resolve_sparsity(SparsityConfig(regularizer="l2"))):
        with pytest.raises(PolarpruneError) as err:
            make()
        message = str(err.value)
        assert "\n" not in message and "'l2'" in message
        assert all(name in message for name in REGULARIZERS)

    class ScaledParams(RegularizerParams):
        scale: float = Field(2.0, gt=0)

    from polarprune.sparsity.regularizers import Regularizer

    class Scaled(Regularizer):  # a registered name and its own parameters are all the config knows
        name = "scaled"
        Params = ScaledParams

    monkeypatch.setitem(REGULARIZERS, "scaled", Scaled)
    resolved = resolve_sparsity(SparsityConfig(regularizer="scaled", lbd=0.5))
    assert (resolved.regularizer, resolved.lbd, resolved.scale) == ("scaled", 0.5, 2.0)
    with pytest.raises(PolarpruneError, match=r"^config: sparsity\.scale: .*greater than 0 \(got -1\)$"):
        resolve_sparsity(SparsityConfig(regularizer="scaled", scale=-1))
    with pytest.raises(PolarpruneError, match=r"unknown key 'sparsity\.t'"):  # polarization's key is not scaled's
        resolve_sparsity(SparsityConfig(regularizer="scaled", t=1.2))


def test_each_regularizer_checks_its_own_parameters_once() -> None:
    """Polarization's keys are checked by polarization; mask-l1 without a mask is refused by its Params."""
    from polarprune.sparsity.regularizers import resolve_sparsity

    polar = resolve_sparsity(SparsityConfig(regularizer="polarization", t=1.4))
    assert (polar.lbd, polar.t, polar.alpha, polar.clamp, polar.detach_mean) == (1e-4, 1.4, 1.0, 1.0, False)
    with pytest.raises(PolarpruneError, match=r"sparsity\.lbd: .*greater than or equal to 0 \(got -0\.002\)"):
        resolve_sparsity(SparsityConfig(regularizer="polarization", lbd=-0.002))
    with pytest.raises(PolarpruneError, match=r"missing key 'sparsity\.mask'"):
        build_hooks(SparsityConfig(regularizer="mask-l1"), tiny_net(), torch.randn(2, 1, 6, 6))
    with pytest.raises(PolarpruneError, match=r"unknown key 'sparsity\.t'"):
        resolve_sparsity(SparsityConfig(regularizer="l1", t=1.2))


def test_registered_regularizer_is_used_by_build_hooks(monkeypatch) -> None:
    """A new class in the registry is what build_hooks builds and the hook calls (no string branches)."""
    from polarprune.sparsity.regularizers import L1, Regularizer

    class Halving(Regularizer):
        name = "l1"  # replaces l1 for this test: halves the targeted gammas after each step

        def after_step(self, gammas: list[torch.Tensor]) -> None:
            with torch.no_grad():
                for g in gammas:
                    g.mul_(0.5)

    monkeypatch.setitem(REGULARIZERS, "l1", Halving)
    model = tiny_net()
    (hook,) = build_hooks(SparsityConfig(regularizer="l1", monitor=False, include=["4"]), model, torch.randn(2, 1, 6, 6))
    assert isinstance(hook.regularizer, Halving) and not isinstance(hook.regularizer, L1)
    before = model.get_submodule("4").weight.detach().clone()
    other = model.get_submodule("1").weight.detach().clone()
    hook.after_step(model)
    assert torch.equal(model.get_submodule("4").weight, before * 0.5)
    assert torch.equal(model.get_submodule("1").weight, other)
