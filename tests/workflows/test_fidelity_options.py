"""The options that reproduce the original code bases (issue 13): the freeze of the regularized
gammas at the MACs target, the clamp scope, the original FLOPs weighting as a config choice."""

from __future__ import annotations

import torch

from polarprune import models
from polarprune.config import SparsityConfig
from polarprune.pruning.graph import analysed_copy
from polarprune.sparsity import build_hooks
from polarprune.sparsity.flops_weighting import original_channel_macs
from polarprune.sparsity.regularizers import flops_weights
from polarprune.training.engine import optimisation_step


def _steps(model, hooks, optimizer, batches) -> None:
    criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for images, labels in batches:
        optimisation_step(model, model, images, labels, criterion=criterion, optimizer=optimizer, scaler=scaler, hooks=hooks)


def _setup(**sparsity):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, bn_init=0.5)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator)) for _ in range(3)]
    cfg = SparsityConfig(regularizer="polarization", lbd=1e-2, t=1.2, monitor=False, **sparsity)
    hooks = build_hooks(cfg, model, batches[0][0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, hooks, optimizer, batches


def test_regularized_gammas_freeze_once_the_target_is_reached() -> None:
    # target 1.0: any trial prune leaves <= 100% of the MACs, so the target is reached after epoch 0
    model, hooks, optimizer, batches = _setup(target_macs_ratio=1.0)
    hook = hooks[0]
    gammas = [model.get_submodule(n).weight for n in hook.bn_names]
    start = [g.detach().clone() for g in gammas]
    model.train()
    _steps(model, hooks, optimizer, batches)
    assert any(not torch.equal(g, s) for g, s in zip(gammas, start))  # epoch 0: they move
    metrics = hook.on_epoch_end(model, 0)
    assert metrics["sparsity_target_reached"] == 1.0 and hook.lbd == 0.0
    frozen = [g.detach().clone() for g in gammas]
    conv = model.conv1.weight.detach().clone()
    beta = model.layer1[0].bn1.bias.detach().clone()
    _steps(model, hooks, optimizer, batches)  # epoch 1: momentum and weight decay would still move them
    assert all(torch.equal(g, f) for g, f in zip(gammas, frozen))
    assert not torch.equal(model.conv1.weight, conv)
    assert not torch.equal(model.layer1[0].bn1.bias, beta)
    # the freeze follows the saved decision (a resumed run loads target_reached)
    assert hook.frozen and hook.state_dict()["target_reached"] is True


def test_without_the_freeze_gammas_keep_moving_after_the_target() -> None:
    model, hooks, optimizer, batches = _setup(target_macs_ratio=1.0, freeze_on_target=False)
    hook = hooks[0]
    model.train()
    _steps(model, hooks, optimizer, batches)
    hook.on_epoch_end(model, 0)
    before = [model.get_submodule(n).weight.detach().clone() for n in hook.bn_names]
    _steps(model, hooks, optimizer, batches)
    after = [model.get_submodule(n).weight for n in hook.bn_names]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_clamp_scope_all_clamps_bns_that_are_not_regularized() -> None:
    for scope, expected in (("regularized", None), ("all", 1.0)):
        model, hooks, optimizer, batches = _setup(clamp_scope=scope)
        other = model.bn1.weight  # the stem BN: not regularized on a CIFAR ResNet
        with torch.no_grad():
            other.fill_(1.2)
        model.train()
        _steps(model, hooks, optimizer, batches[:1])
        if expected is None:
            assert float(other.detach().max()) > 1.0  # untouched by the clamp (moved by SGD only)
        else:
            assert float(other.detach().max()) <= expected


def test_flops_weighting_original_is_a_config_choice() -> None:
    model = models.create("resnet20", num_classes=10)
    example = torch.zeros(1, 3, 32, 32)
    cfg = SparsityConfig(regularizer="polarization", lbd=1e-4, flops_weighted=True, flops_weighting="original", monitor=False)
    hook = build_hooks(cfg, model, example)[0]
    layers = analysed_copy(model, example).layer_shapes()
    expected = flops_weights(original_channel_macs(model, layers, hook.bn_names), cfg.weight_min, cfg.weight_max)
    assert hook.layer_weights == expected
    # a bn2's weight counts its conv's outputs only: the first stage's bn2 is below its bn1
    assert hook.layer_weights["layer1.0.bn2"] < hook.layer_weights["layer1.0.bn1"]


def test_bn_init_scope_conv_leaves_bn1d_at_one() -> None:
    """Point 7: the polarization code sets 0.5 on BatchNorm2d only; VGG's BatchNorm1d head keeps 1.0."""
    every = models.create("vgg11", 10, bn_init=0.5)
    conv_only = models.create("vgg11", 10, bn_init=0.5, bn_init_scope="conv")
    bn1d = [m for m in conv_only.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    bn2d = [m for m in conv_only.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn1d) == 1 and len(bn2d) == 8
    assert torch.equal(bn1d[0].weight, torch.ones_like(bn1d[0].weight))
    assert all(torch.equal(m.weight, torch.full_like(m.weight, 0.5)) for m in bn2d)
    every_bn1d = [m for m in every.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert torch.equal(every_bn1d.weight, torch.full_like(every_bn1d.weight, 0.5))


def test_vgg_paper_recipes_init_batchnorm2d_only() -> None:
    from pathlib import Path

    from polarprune.workflows import load_recipe
    from polarprune.workflows.recipe import stage_config

    for name in ["cifar10-vgg16-polarization", "cifar100-vgg16-polarization", "cifar10-vgg16-l1", "cifar100-vgg16-l1"]:
        cfg = stage_config(load_recipe(name), "sparsity", Path("."))
        assert (cfg.model.bn_init, cfg.model.bn_init_scope) == (0.5, "conv"), name
