"""MaskSparsity's relaxing group vote, on small groups worked out by hand."""

from __future__ import annotations

import pytest
import torch

from polarprune.errors import PolarpruneError
from polarprune.pruning.votes import masksparsity_keep, relaxed_prune


def keep(*bits: int) -> torch.Tensor:
    """A keep mask from 0/1 digits (1 = keep)."""
    return torch.tensor(bits, dtype=torch.bool)


def test_relaxes_one_vote_until_the_smallest_per_bn_count_is_reached() -> None:
    # prune votes: a removes {0,1}, b {0,2}, c {0,1,2,3}  ->  votes = [3,2,2,1,0,0], least = 2
    # need 3: {0} (1 channel < 2)  ->  need 2: {0,1,2} (3 >= 2): stop
    a, b, c = keep(0, 0, 1, 1, 1, 1), keep(0, 1, 0, 1, 1, 1), keep(0, 0, 0, 0, 1, 1)
    assert masksparsity_keep([a, b, c]).tolist() == [False, False, False, True, True, True]
    # polarprune's default (`any`: keep while any BN keeps) removes only the unanimous {0}
    assert (a | b | c).tolist() == [False, True, True, True, True, True]


def test_disjoint_choices_fall_back_to_the_union() -> None:
    # a removes {0,1}, b removes {2,3}: votes [1,1,1,1,0,0], least 2
    # need 2: {} (0 < 2)  ->  need 1: {0,1,2,3}
    a, b = keep(0, 0, 1, 1, 1, 1), keep(1, 1, 0, 0, 1, 1)
    assert masksparsity_keep([a, b]).tolist() == [False, False, False, False, True, True]


def test_a_bn_that_removes_nothing_keeps_the_group_unanimous() -> None:
    # least = 0: the unanimous level is accepted at once; b keeps everything, so nothing goes
    a, b = keep(0, 0, 1, 1), keep(1, 1, 1, 1)
    assert masksparsity_keep([a, b]).tolist() == [True, True, True, True]
    # with a third BN that agrees with a, channels 0 and 1 still are not unanimous
    assert masksparsity_keep([a, a, b]).tolist() == [True, True, True, True]


def test_four_voters_stop_at_three_votes() -> None:
    masks = [
        keep(0, 0, 0, 0, 0, 1, 1, 1),  # removes 0,1,2,3,4 (5)
        keep(0, 0, 0, 1, 1, 0, 0, 1),  # removes 0,1,2,5,6 (5)
        keep(0, 0, 1, 1, 0, 0, 1, 1),  # removes 0,1,4,5   (4)
        keep(0, 1, 0, 0, 1, 1, 1, 1),  # removes 0,2,3     (3)
    ]
    # votes per channel: [4,3,3,2,2,2,1,0]; least = 3
    # need 4: {0} (1 < 3); need 3: {0,1,2} (3 >= 3): stop
    assert masksparsity_keep(masks).tolist() == [False, False, False, True, True, True, True, True]


def test_four_voters_relax_to_two_votes_and_overshoot() -> None:
    masks = [
        keep(0, 0, 0, 0, 0, 1, 1, 1),  # removes 0,1,2,3,4 (5)
        keep(0, 0, 0, 1, 1, 0, 0, 1),  # removes 0,1,2,5,6 (5)
        keep(0, 0, 1, 1, 0, 0, 1, 1),  # removes 0,1,4,5   (4)
        keep(0, 1, 1, 0, 1, 0, 0, 0),  # removes 0,3,5,6,7 (5)
    ]
    # votes per channel: [4,3,2,2,2,3,2,1]; least = 4
    # need 4: {0} (1); need 3: {0,1,5} (3 < 4); need 2: {0,1,2,3,4,5,6} (7 >= 4): stop
    assert masksparsity_keep(masks).tolist() == [False] * 7 + [True]


def test_single_bn_removes_exactly_its_own_choice() -> None:
    a = keep(1, 0, 1, 0, 0)
    assert masksparsity_keep([a]).tolist() == a.tolist()


def test_relaxed_prune_on_vote_counts() -> None:
    votes = torch.tensor([3, 2, 2, 1, 0, 0])
    assert relaxed_prune(votes, voters=3, least=1).tolist() == [True, False, False, False, False, False]
    assert relaxed_prune(votes, voters=3, least=3).tolist() == [True, True, True, False, False, False]
    assert relaxed_prune(votes, voters=3, least=4).tolist() == [True, True, True, True, False, False]
    # no level reaches 5: the loosest one (any prune vote) is the answer
    assert relaxed_prune(votes, voters=3, least=5).tolist() == [True, True, True, True, False, False]


def test_bad_groups_are_one_line_errors() -> None:
    with pytest.raises(PolarpruneError, match="one width"):
        masksparsity_keep([keep(1, 0), keep(1, 0, 1)])
    with pytest.raises(PolarpruneError, match="at least one"):
        masksparsity_keep([])
    with pytest.raises(PolarpruneError, match=r"\[0, 2\]"):
        relaxed_prune(torch.tensor([3, 0]), voters=2, least=0)
