"""Which BN scaling factors a sparsity regularizer acts on (REFERENCE section 2, "Which layers").

The default is the papers' choice for the model's family, which each family declares in its
``ModelEntry`` (``polarprune.models.entry_for(model).regularized_bns(model, method)``; the rules
are listed next to each model definition). Any other model: the BNs of the prunable channel
groups of the pruning dependency graph (``polarprune.pruning.prunable_bn_names``).

``include``/``exclude`` are fnmatch patterns on BN module names: a non-empty ``include``
replaces the default choice, ``exclude`` removes names from it.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any, Sequence

from torch import nn

from ..errors import PolarpruneError
from ..models import entry_for
from ..models.entry import every_bn as all_bn_names

log = logging.getLogger(__name__)


def default_bn_names(model: nn.Module, example_inputs: Any | None = None, method: str | None = None) -> list[str]:
    """The papers' choice of regularized BNs for ``model`` and ``method`` (the model's entry), else the
    dependency-graph default."""
    entry = entry_for(model)
    chosen = entry.regularized_bns(model, method) if entry is not None else None
    if chosen is not None:
        return chosen
    if example_inputs is None:
        raise PolarpruneError(f"model {type(model).__name__}: no default list of regularized BNs; "
                              "give example inputs (to find the prunable groups) or sparsity.include patterns")
    from ..pruning import prunable_bn_names

    return list(prunable_bn_names(model, example_inputs))


def match_patterns(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The names matching any fnmatch pattern, in the order of ``names``."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def regularized_bn_names(model: nn.Module, example_inputs: Any | None = None, include: Sequence[str] = (),
                         exclude: Sequence[str] = (), *, option: str = "sparsity", method: str | None = None) -> list[str]:
    """BN module names whose gammas the regularizer acts on, in definition order: ``include`` patterns replace
    the default choice, ``exclude`` patterns remove names; ``option`` names the options in messages."""
    base = all_bn_names(model) if include else default_bn_names(model, example_inputs, method)
    return narrow(base, include, exclude, where=f"BatchNorm layer of {type(model).__name__}", option=option)


def narrow(names: Sequence[str], include: Sequence[str], exclude: Sequence[str], *, where: str,
           option: str = "sparsity") -> list[str]:
    """``names`` matching ``include`` (all when empty; each pattern must match one) minus ``exclude`` (one
    matching nothing only logs a warning); ``where`` describes the names in messages."""
    sep = "-" if option.startswith("--") else "."
    for pattern in include:
        if not match_patterns(names, [pattern]):
            raise PolarpruneError(f"{option}{sep}include pattern {pattern!r} matches no {where}")
    chosen = match_patterns(names, include) if include else list(names)
    for pattern in exclude:
        if not match_patterns(chosen, [pattern]):
            log.warning("%s%sexclude pattern %r matches none of the regularized BNs", option, sep, pattern)
    dropped = set(match_patterns(chosen, exclude))
    chosen = [n for n in chosen if n not in dropped]
    if not chosen:
        raise PolarpruneError(f"no {where} is left to regularize (check {option}{sep}include/{option}{sep}exclude)")
    return chosen


__all__ = ["regularized_bn_names", "default_bn_names", "all_bn_names", "match_patterns", "narrow"]
