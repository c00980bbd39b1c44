"""Shared check of the own-model tests: prune with ``fixed``, save, load into a fresh instance.

With half of every BN's gamma and beta set to 0 those channels output exactly 0 (after the
ReLU), so ``fixed`` removes them and the pruned model computes the same logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

import polarprune
from polarprune.flops import count_model
from polarprune.pruning import prune_model

TOLERANCE = 1e-5  # relative to the largest logit (absolute below 1)


def zero_half_of_every_bn(model: nn.Module, seed: int = 0) -> None:
    """Gamma and beta of the first half of every BN's channels to 0; running statistics random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                half = module.num_features // 2
                module.weight[:half] = 0
                module.bias[:half] = 0
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def prune_save_load(
    build: Callable[[], nn.Module], tmp_path: Path, size: int = 64, *, expect_fewer_macs: bool = True
) -> dict[str, float]:
    """Prune ``build()`` with ``fixed``, save it, load it into ``build()`` again; assert equivalence.

    Returns the MACs before/after and the largest logit difference.
    """
    torch.manual_seed(0)
    original = build().eval()
    zero_half_of_every_bn(original)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    pruned, report = prune_model(original, x[:1], "fixed")
    path = polarprune.save(pruned, tmp_path / "pruned.safetensors")
    torch.manual_seed(123)  # a fresh instance with other random weights: all must come from the file
    fresh = build()
    loaded = polarprune.load(path, model=fresh)
    assert loaded is fresh
    assert not loaded.training
    reference = logits(original, x)
    difference = float((logits(loaded, x) - reference).abs().max())
    # float32 rounding grows with the logits' size (convs of other widths sum in another
    # order): Inception-v3's init gives logits of ~7.5e3, where 1e-5 is below one rounding step
    assert difference <= TOLERANCE * max(1.0, float(reference.abs().max())), difference
    macs_loaded = count_model(loaded, (3, size, size)).macs
    assert macs_loaded == report.macs_after
    if expect_fewer_macs:
        assert report.macs_after < report.macs_before
    return {"macs_before": report.macs_before, "macs_after": report.macs_after, "difference": difference}
