"""Every torchvision classification model with BatchNorm: pruned (``fixed``, half of every BN
zeroed), run, saved and loaded into a fresh torchvision instance with the same logits.

All of ``torchvision.models.list_models(module=torchvision.models)`` is parametrized. By default
one or two small members of each family run (``REPRESENTATIVES``, about 2-3 minutes on 2
cores); the larger members of the same families (the same block types at more depth or width,
several minutes each for the largest) run with ``POLARPRUNE_TEST_ALL_TORCHVISION=1``.
Models without any BatchNorm (ViT, Swin, ConvNeXt, AlexNet, the plain VGGs) are skipped: there
is no gamma to prune by.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from prune_roundtrip import prune_save_load

ALL_ENV = "POLARPRUNE_TEST_ALL_TORCHVISION"
NAMES = sorted(torchvision.models.list_models(module=torchvision.models))
# the smallest members of each torchvision family module (and each block type in resnet.py)
REPRESENTATIVES = {
    "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3", "mnasnet0_5",
    "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnet50",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "vgg11_bn",
}
# known failures, each with its reason (strict: a fix makes the test fail until the entry goes)
KNOWN_FAILURES: dict[str, str] = {}
# input sides other than the default 64: Inception-v3 needs at least 75, MaxViT's window
# 7x7 windows need a side of 7 x 32 (224)
INPUT_SIZES = {"inception_v3": 96, "maxvit_t": 224}


def has_batchnorm(name: str) -> bool:
    """Whether torchvision's ``name`` has a BatchNorm (built on the meta device: no memory, no init)."""
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=10)
    except NotImplementedError:  # builders that compute with tensors (RegNet's widths): build for real
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_representatives_are_torchvision_names() -> None:
    assert REPRESENTATIVES <= set(NAMES) and set(INPUT_SIZES) | set(KNOWN_FAILURES) <= set(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_torchvision_classifier(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if name not in REPRESENTATIVES and not os.environ.get(ALL_ENV):
        pytest.skip(f"a larger member of a family covered by the representatives; set {ALL_ENV}=1 to run it")
    if not has_batchnorm(name):
        pytest.skip(f"{name} has no BatchNorm (no gamma to prune by)")
    if name in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name]))
    prune_save_load(
        lambda: torchvision.models.get_model(name, weights=None, num_classes=10), tmp_path, size=INPUT_SIZES.get(name, 64)
    )
