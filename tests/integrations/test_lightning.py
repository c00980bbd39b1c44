"""``SparsityCallback`` in a small LightningModule on CPU: the penalty's gradient on the BN gammas is the
hand-computed one, the MACs and latency target stops end the fit, the gammas are monitored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

from polarprune.errors import PolarpruneError  # noqa: E402
from polarprune.integrations.lightning import SparsityCallback  # noqa: E402
from polarprune.sparsity import save_mask  # noqa: E402

LBD = 0.01


class Toy(pl.LightningModule):
    """conv-BN-ReLU twice, pooled, a linear head; gammas spread over (0.1, 0.9) so no sign is 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        with torch.no_grad():
            for bn in (self.net[1], self.net[4]):
                bn.weight.copy_(torch.rand(8) * 0.8 + 0.1)
        self.example_input_array = torch.zeros(2, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int = 16) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def precision_settings(precision: str) -> dict:
    """``16-mixed-scaled``: float16 autocast with a GradScaler at a loss scale of 1024 (CPU; Lightning's plain
    ``16-mixed`` falls back to bf16 there), so gradients are scaled until Lightning unscales them."""
    if precision != "16-mixed-scaled":
        return {"precision": precision}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return {"plugins": [pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)]}


def fit(module: Toy, callbacks: list, epochs: int = 1, batches: int = 2, precision: str = "32-true") -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=batches, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         **precision_settings(precision),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader())
    return trainer


class Recorder(pl.Callback):
    """The gammas and their gradients at ``on_before_optimizer_step`` of the first step (gradients unscaled
    there); placed before ``SparsityCallback`` it sees the task's gradient, after it the total."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.grads: dict[str, torch.Tensor] = {}
        self.gammas: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: pl_module.get_submodule(n).weight.grad.clone() for n in self.names}
            self.gammas = {n: pl_module.get_submodule(n).weight.detach().clone() for n in self.names}


def polarization_grad(gammas: list[torch.Tensor], lbd: float, t: float, alpha: float = 1.0) -> torch.Tensor:
    """d/dg_j of lbd * sum_i (t|g_i| - |g_i - alpha*mean(g)|) = lbd * (t sign(g_j) - sign(g_j - alpha*m)
    + alpha/N * sum_i sign(g_i - alpha*m)), over the gammas of all regularized BNs together."""
    flat = torch.cat(gammas)
    side = torch.sign(flat - alpha * flat.mean())
    return lbd * (t * torch.sign(flat) - side + alpha / flat.numel() * side.sum())


BNS = ["net.1", "net.4"]


def run_and_record(sparsity: dict, precision: str = "32-true") -> tuple[Recorder, Recorder]:
    """(task, total): the gradients just before and just after the callback's moment."""
    callback = SparsityCallback(sparsity)
    task, total = Recorder(BNS), Recorder(BNS)
    fit(Toy(), [task, callback, total], batches=1, precision=precision)
    assert callback.sparsity_hook is not None and callback.sparsity_hook.bn_names == BNS
    return task, total


def penalty_grad(records: tuple[Recorder, Recorder]) -> torch.Tensor:
    task, total = records
    return torch.cat([total.grads[n] - task.grads[n] for n in BNS])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed-scaled"])
def test_polarization_penalty_gradient_on_the_gammas_is_the_hand_computed_one(precision: str):
    """Also under autocast, and with a loss scale: the penalty is computed in float32 and added to unscaled gradients."""
    rec = run_and_record({"regularizer": "polarization", "lbd": LBD, "t": 1.2, "monitor": False}, precision)
    expected = polarization_grad([rec[1].gammas[n] for n in BNS], LBD, 1.2)
    assert expected.abs().max() > LBD * 0.1  # not a trivial zero
    torch.testing.assert_close(penalty_grad(rec), expected, rtol=1e-5, atol=1e-7)
    if precision != "32-true":  # the task gradient the penalty joins is unscaled: it matches float32's
        reference = run_and_record({"regularizer": "polarization", "lbd": LBD, "t": 1.2, "monitor": False})
        for name in BNS:
            torch.testing.assert_close(rec[0].grads[name], reference[0].grads[name], rtol=0.05, atol=2e-3)


def test_l1_and_mask_l1_add_lambda_sign_where_they_regularize(tmp_path):
    rec = run_and_record({"regularizer": "l1", "lbd": LBD, "monitor": False})
    torch.testing.assert_close(penalty_grad(rec), LBD * torch.sign(torch.cat([rec[1].gammas[n] for n in BNS])))
    keep = {n: torch.arange(8) % 2 == 0 for n in BNS}
    save_mask(keep, tmp_path / "mask.json", None)
    rec = run_and_record({"regularizer": "mask-l1", "lbd": LBD, "mask": str(tmp_path / "mask.json"), "monitor": False})
    expected = torch.cat([LBD * torch.sign(rec[1].gammas[n]) * (~keep[n]).float() for n in BNS])
    torch.testing.assert_close(penalty_grad(rec), expected)


def halved() -> Toy:
    """A Toy whose first BN has half its gammas at 0: a grad trial prune removes them at once."""
    module = Toy()
    with torch.no_grad():
        module.net[1].weight[:4] = 0.0
    return module


@pytest.mark.parametrize("target, stops", [(0.95, True), (0.05, False)])
def test_the_macs_target_stop_ends_the_fit(target: float, stops: bool):
    callback = SparsityCallback({"regularizer": "polarization", "lbd": 1e-4, "target_macs_ratio": target, "target_check_every": 1})
    trainer = fit(halved(), [callback], epochs=3, batches=2)
    assert trainer.should_stop is stops and callback.target_reached is stops
    assert trainer.global_step == (1 if stops else 6)  # checked after every step: stops after the first
    assert callback.sparsity_hook.lbd == (0.0 if stops else 1e-4)
    last = callback.history[-1]  # the monitor's numbers of the last epoch
    assert last["sparsity_target_reached"] == float(stops) and 0.0 < last["trial_macs_ratio_grad"] < 1.0
    assert last["gamma_frac_below_0.01"] >= 4 / 16 - 1e-6


def test_the_latency_target_stop_uses_the_measured_cost_model(tmp_path, monkeypatch):
    from latency_fakes import fake_ms

    monkeypatch.setattr("polarprune.deploy.latency_cost.runtime_measure", lambda *args, **kwargs: fake_ms)
    callback = SparsityCallback({"regularizer": "l1", "lbd": 1e-4, "target_latency_ratio": 0.95, "monitor": False,
                                 "latency_cache": str(tmp_path)}, module="net", example_inputs=torch.zeros(2, 3, 8, 8))
    trainer = fit(halved(), [callback], epochs=3, batches=2)
    assert trainer.should_stop and callback.target_reached and trainer.global_step == 2  # stopped at the first epoch end
    assert callback.history[-1]["trial_latency_ratio_grad"] < 0.95  # the fake runtime's price of the grad prune


def test_bad_settings_get_one_line():
    with pytest.raises(PolarpruneError, match="unknown regularizer 'nope'"):
        SparsityCallback({"regularizer": "nope"})
    with pytest.raises(PolarpruneError, match="sparsity.lbd"):
        SparsityCallback({"regularizer": "l1", "lbd": -1})
    module = Toy()
    module.example_input_array = None
    with pytest.raises(PolarpruneError, match="give example_inputs"):
        fit(module, [SparsityCallback({"regularizer": "l1", "lbd": 1e-4})])
    with pytest.raises(PolarpruneError, match="no sub-module 'body'"):
        fit(Toy(), [SparsityCallback({"regularizer": "l1", "lbd": 1e-4}, module="body")])


def test_a_restored_state_keeps_lambda_zero_after_the_target():
    settings = {"regularizer": "polarization", "lbd": 1e-4, "target_macs_ratio": 0.95, "target_check_every": 1}
    first = SparsityCallback(settings)
    fit(halved(), [first], epochs=1, batches=1)
    state = first.state_dict()
    assert state["target_reached"] and state["lbd"] == 0.0
    resumed = SparsityCallback(settings, stop_on_target=False)
    resumed.load_state_dict(state)  # what Lightning does when it restores a checkpoint
    module = Toy()  # would not reach the target on its own
    before = [module.get_submodule(n).weight.detach().clone() for n in BNS]
    trainer = fit(module, [resumed], epochs=2, batches=2)
    assert resumed.sparsity_hook.lbd == 0.0 and resumed.target_reached and trainer.global_step == 4
    for name, gamma in zip(BNS, before):  # frozen on target (freeze_on_target): the optimizer skips them
        torch.testing.assert_close(module.get_submodule(name).weight.detach(), gamma, rtol=0, atol=0)
