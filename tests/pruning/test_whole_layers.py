"""A model entry's ``whole_layers``: a layer class the dependency graph treats as a leaf whose
channels stay whole. Torch-Pruning takes an op it does not know (here a channel flip) for a
channel-wise one; keeping the channels through it whole keeps the pruned model exact."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polarprune.models import register
from polarprune.pruning import channel_groups, prune_model

from prune_roundtrip import zero_half_of_every_bn


class Flip(nn.Module):
    """Reverses the channel order: channel i comes out as channel C-1-i."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(1)


class FlipNet(nn.Module):
    """conv-BN-ReLU, the flip, conv-BN-ReLU, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.flip = Flip()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flip(self.bn1(self.conv1(x)).relu())
        return self.fc(self.bn2(self.conv2(x)).relu().mean((2, 3)))


class WholeFlipNet(FlipNet):
    """The same network, known to a model entry that keeps the flip's channels whole."""


register("test_whole_flip_net", WholeFlipNet, classes=(WholeFlipNet,), whole_layers=((Flip, "reverses the channel order"),))


def pruned_difference(cls: type[FlipNet]) -> tuple[float, list[tuple[str, bool, str]]]:
    torch.manual_seed(0)
    model = cls().eval()
    zero_half_of_every_bn(model)
    x = torch.randn(2, 3, 8, 8)
    pruned, _ = prune_model(model, x, "fixed")
    with torch.no_grad():
        difference = float((pruned(x) - model(x)).abs().max())
    return difference, [(g.name, g.prunable, g.reason) for g in channel_groups(model, x)]


def test_the_graph_alone_prunes_through_the_flip_wrongly() -> None:
    difference, groups = pruned_difference(FlipNet)
    assert ("bn1", True, "") in groups
    assert difference > 1e-3  # channel i was removed on one side of the flip, channel C-1-i on the other


def test_whole_layer_keeps_its_channels_and_the_outputs() -> None:
    difference, groups = pruned_difference(WholeFlipNet)
    assert ("bn1", False, "passes flip (Flip: reverses the channel order)") in groups
    assert ("bn2", True, "") in groups
    assert difference <= 1e-6
