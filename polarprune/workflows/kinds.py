"""Stage kinds as records: what a recipe's stage is, in one place (``STAGE_KINDS``).

A ``StageKind`` says how a stage is configured (its schema), how it runs, where its model comes
from, which sparsity settings its training gets and what it leaves behind. Recipe validation,
``stage_config``, ``default_init``, the pipeline and the summary read these records; none of them
branches on a stage's name. The registry's order is the order the stages of a recipe run in.
The built-in kinds are registered by ``workflows.stages`` (imported by the package's ``__init__``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from ..pruning.registry import lookup

if TYPE_CHECKING:
    from .context import StageContext

StageFunction = Callable[["StageContext", str, Path], dict[str, Any]]


def no_sparsity(run_dir: Path) -> dict[str, Any]:
    """The sparsity defaults of a stage that trains without a regularizer."""
    return {"regularizer": "none", "monitor": False}


def recipe_sparsity(run_dir: Path) -> dict[str, Any]:
    """No defaults of its own: the recipe's sparsity section decides."""
    return {}


@dataclass(frozen=True)
class StageKind:
    """One kind of stage.

    ``sources``: the stages its model comes from when the recipe gives no ``init`` (the first
    present one wins); ``needs_source``: it cannot start without one. ``needs``: stages a recipe must also have. ``trains``: its schema is a
    training stage and ``stage_config`` builds its ``TrainConfig``. ``reads_recipe_sparsity``:
    the recipe's top-level ``sparsity`` section reaches it. ``sparsity_defaults``: the sparsity
    settings under everything else, from the run folder (e.g. the mask file to regularize).
    ``produces_model``: its ``done.json`` names a model the summary measures.
    """

    name: str
    schema: type[BaseModel]
    run: StageFunction
    sources: tuple[str, ...] = ()
    needs_source: bool = False
    needs: tuple[str, ...] = ()
    trains: bool = False
    reads_recipe_sparsity: bool = False
    sparsity_defaults: Callable[[Path], dict[str, Any]] = field(default=recipe_sparsity)
    produces_model: bool = True

    def reads_section(self, section: str) -> bool:
        """Whether the recipe's top-level ``section`` (model, data, train, sparsity) reaches this stage."""
        if section == "sparsity":
            return self.trains and self.reads_recipe_sparsity
        return self.trains


STAGE_KINDS: dict[str, StageKind] = {}


def register_stage_kind(kind: StageKind, *, after: str | None = None) -> StageKind:
    """Add ``kind`` to the registry, at the end of the run order or right after the kind ``after``."""
    if kind.name in STAGE_KINDS:
        raise ValueError(f"stage kind {kind.name!r} is already registered")
    if after is None:
        STAGE_KINDS[kind.name] = kind
        return kind
    if after not in STAGE_KINDS:
        raise ValueError(f"stage kind {after!r} (after=) is not registered")
    items = list(STAGE_KINDS.items())
    at = [name for name, _ in items].index(after) + 1
    STAGE_KINDS.clear()
    STAGE_KINDS.update(items[:at] + [(kind.name, kind)] + items[at:])
    return kind


def unregister_stage_kind(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    STAGE_KINDS.pop(name, None)


def stage_kind(name: str) -> StageKind:
    """The kind registered as ``name``; a one-line error listing the known kinds otherwise."""
    return lookup(STAGE_KINDS, name, "stage")


def stage_order() -> list[str]:
    """Every registered kind's name, in the order stages run."""
    return list(STAGE_KINDS)
