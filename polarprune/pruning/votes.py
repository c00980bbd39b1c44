"""MaskSparsity's group vote: how the BNs of one residual group agree on the channels to remove.

The BNs whose outputs are added together (a ResNet stage's last BNs and its downsample BN) must
lose the same channels. Each BN first chooses on its own (its threshold, or its mask); then
MaskSparsity's rule (Jiang et al., the ``super_norm_layers`` groups of its pruning code) starts
from a unanimous *prune* vote and relaxes it one vote at a time:

- ``votes[c]``: how many of the group's BNs want channel ``c`` removed;
- ``least``: the smallest number of channels any single BN of the group wants removed;
- for ``need`` = number of BNs, then one less, ... down to 1: remove the channels with
  ``votes[c] >= need``; stop at the first ``need`` that removes at least ``least`` channels.

So the group removes at least as many channels as its most conservative BN, choosing the
channels most BNs agree on. polarprune's default rule ``any`` (keep a channel while any BN keeps
it) is the unanimous vote without the relaxation: it removes only channels every BN gave up,
which is exact when those channels are zero in every BN, and removes far fewer otherwise.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import PolarpruneError


def relaxed_prune(votes: Tensor, voters: int, least: int) -> Tensor:
    """Channels to remove (bool) from per-channel prune ``votes`` out of ``voters`` BNs: the
    strictest agreement level ``need`` (``voters`` down to 1) whose set ``votes >= need`` has at
    least ``least`` channels. ``least`` = 0 gives the unanimous set; when no level reaches
    ``least`` the loosest (``votes >= 1``) is returned."""
    votes = torch.as_tensor(votes).long()
    if voters < 1:
        raise PolarpruneError(f"a group vote needs at least one voter, got {voters}")
    if (votes < 0).any() or (votes > voters).any():
        raise PolarpruneError(f"prune votes must lie in [0, {voters}], got {votes.tolist()}")
    for need in range(voters, 0, -1):  # voters >= 1: runs at least once
        prune = votes >= need
        if int(prune.sum()) >= least:
            break
    return prune


def masksparsity_keep(bn_keep: Sequence[Tensor]) -> Tensor:
    """The group's keep mask (True = keep) from the keep masks of its BNs (all of one length)."""
    if not bn_keep:
        raise PolarpruneError("a group vote needs the keep mask of at least one BN")
    masks = [torch.as_tensor(m).bool().flatten() for m in bn_keep]
    if len({m.numel() for m in masks}) != 1:
        raise PolarpruneError(f"the BNs of a group must have one width, got {[m.numel() for m in masks]}")
    prune = torch.stack([~m for m in masks]).long()
    least = int(prune.sum(dim=1).min())
    return ~relaxed_prune(prune.sum(dim=0), len(masks), least)


# The group rules' votes (``registry.GROUP_RULES`` names them): per group channel, ``yes`` of the
# ``total`` voting BNs keep it; ``own_prunes``: how many channels each voting BN removes on its own.


def vote_any(yes: Tensor, total: Tensor, own_prunes: Sequence[int]) -> Tensor:
    """Kept while any voting BN keeps the channel."""
    return yes > 0


def vote_all(yes: Tensor, total: Tensor, own_prunes: Sequence[int]) -> Tensor:
    """Kept only if every voting BN keeps the channel."""
    return yes == total


def vote_mean(yes: Tensor, total: Tensor, own_prunes: Sequence[int]) -> Tensor:
    """Kept if at least half of the voting BNs keep the channel (majority)."""
    return 2 * yes >= total


def vote_masksparsity(yes: Tensor, total: Tensor, own_prunes: Sequence[int]) -> Tensor:
    """MaskSparsity's relaxing vote: at least as many channels go as the most conservative BN removes."""
    return ~relaxed_prune(total - yes, max(1, int(total.max())), min(own_prunes, default=0))


__all__ = ["relaxed_prune", "masksparsity_keep", "vote_any", "vote_all", "vote_mean", "vote_masksparsity"]
