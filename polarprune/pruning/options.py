"""``PruneOptions``: every option of a pruning, validated once (the API, the commands, the recipes).

This module imports neither torch nor the rest of ``polarprune.pruning`` (only the torch-free
``registry``), so the commands can build their ``--help`` (choices, defaults) from it and the recipe
schema can embed it. What a strategy or a group rule is lives in ``registry.py``: validation reads
the records at call time, so a strategy registered later is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator, model_validator

from ..errors import PolarpruneError
from .registry import (BUILTIN_GROUP_RULES, BUILTIN_STRATEGIES, GROUP_RULES, RATIO_STRATEGIES, SCORE_STRATEGIES, STRATEGIES,
                       STRATEGY_NEEDS, Strategy)

# how residual channels go: with their whole coupled group, or scattered back (the original; CIFAR ResNets)
RESIDUAL_MODES: tuple[str, ...] = ("group", "scatter")


def _known_strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"unknown pruning strategy {value!r}; choose one of {', '.join(STRATEGIES)}")
    return value


def _known_group_rule(value: Any) -> str:
    if value not in GROUP_RULES:
        raise ValueError(f"unknown group rule {value!r}; choose one of {', '.join(GROUP_RULES)}")
    return value


# The Literal lists the built-in names (schema, docs); validation reads the registry at call time.
StrategyName = Annotated[Literal[BUILTIN_STRATEGIES], PlainValidator(_known_strategy)]  # type: ignore[valid-type]
GroupRuleName = Annotated[Literal[BUILTIN_GROUP_RULES], PlainValidator(_known_group_rule)]  # type: ignore[valid-type]
GroupRule = GroupRuleName  # the old name of the annotation
ResidualMode = Literal[RESIDUAL_MODES]  # type: ignore[valid-type]

# round_to's default: "auto" snaps every kept width up to a width the runtime's latency cost model says pays
# (docs/pruning.md); tests/conftest.py sets it to 1 for the unit tests, so they keep their exact counts
DEFAULT_ROUND_TO: int | str = "auto"
# the runtime whose latency counts when none is named (latency-target, round_to: auto, the slower-model check)
DEFAULT_RUNTIME = "eager"


def _round_to(value: Any) -> int | str:
    """``round_to``: an int >= 1 (also given as text, "8") or "auto"."""
    if value == "auto":
        return "auto"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be an integer >= 1 or 'auto', got {value!r}") from None
    if isinstance(value, bool) or number != value and str(number) != str(value).strip() or number < 1:
        raise ValueError(f"must be an integer >= 1 or 'auto', got {value!r}")
    return number


RoundTo = Annotated[int | Literal["auto"], PlainValidator(_round_to)]


class PruneOptions(BaseModel):
    """How a pruning chooses channels (docs/pruning.md has the rules)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    strategy: StrategyName = Field("fixed", description="how channels are chosen")
    threshold: float = Field(0.01, ge=0, description="fixed: global |gamma| threshold")
    percent: float | None = Field(None, ge=0, le=1, description="percent: fraction of all scored channels removed (global quantile)")
    ratio: float | dict[str, float] | None = Field(None, description="uniform / l1-norm / random: fraction removed per group (or per group/BN name)")
    target_macs_reduction: float | None = Field(None, gt=0, lt=1, description="flops-target: MACs reduction to reach, in (0, 1)")
    target_latency_reduction: float | None = Field(None, gt=0, lt=1, description="latency-target: predicted latency reduction to reach, in (0, 1)")
    runtime: str = Field(DEFAULT_RUNTIME, min_length=1, description="latency-target and round_to auto: the runtime whose latency counts (deploy.runtimes)")
    batch: int = Field(1, ge=1, description="latency-target and round_to auto: the batch size whose latency counts")
    threads: int = Field(1, ge=1, description="latency-target and round_to auto: the thread count whose latency counts")
    masks: dict[str, Any] | None = Field(None, description="mask: BN name -> keep vector")
    bn_names: list[str] | None = Field(None, description="BNs that are scored (default: every BN of a prunable group)")
    bn_include: list[str] = Field(default_factory=list, description="score only BNs matching these fnmatch patterns")
    bn_exclude: list[str] = Field(default_factory=list, description="do not score BNs matching these fnmatch patterns")
    group_rule: GroupRuleName = Field("any", description="how a group's BNs vote (masksparsity: MaskSparsity's relaxing vote)")
    residual: ResidualMode = Field("group", description="group: residual channels leave with their whole group; scatter: the original's accounting, block outputs scattered back to full width (CIFAR ResNets)")
    min_channels: int = Field(1, ge=0, description="channels every group keeps")
    remove_empty_blocks: bool = Field(True, description="an emptied residual branch is removed (else it keeps min_channels)",
                                      json_schema_extra={"off_flag": "--keep-empty-blocks", "off_help": "keep an emptied residual branch (with min_channels) instead of removing it"})
    round_to: RoundTo = Field(default_factory=lambda: DEFAULT_ROUND_TO,  # read at call time (tests set it to 1)
                              description="auto: snap every group's kept channels up to a width the runtime's latency tables say pays; "
                                          "N: round them to a multiple of N (1: the exact count)",
                              json_schema_extra={"metavar": "auto|N"})
    measure_latency: bool = Field(True, description="where a runtime is in play (round_to auto, latency-target), time the pruned model against the unpruned one and warn when it is not faster",
                                  json_schema_extra={"off_flag": "--no-measure", "off_help": "do not time the pruned model against the unpruned one (round_to auto)"})
    compensate: bool = Field(True, description="fold removed channels' constant shift into their consumers",
                             json_schema_extra={"off_flag": "--no-compensate", "off_help": "do not fold removed channels' constant shift into their consumers"})
    seed: int = Field(0, description="seed of the random strategy")

    @property
    def strategy_record(self) -> Strategy:
        """The record of the chosen strategy (what it needs, how it decides)."""
        return STRATEGIES[self.strategy]

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: Any) -> Any:
        values = value.values() if isinstance(value, Mapping) else [] if value is None else [value]
        for v in values:
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"ratio must be in [0, 1], got {v}")
        return value

    @model_validator(mode="after")
    def _needs(self) -> "PruneOptions":
        record = STRATEGIES[self.strategy]
        if record.needs is not None and getattr(self, record.needs) is None:
            raise ValueError(f"strategy {self.strategy!r} needs {record.needs}{record.hint}")
        return self


def parse_options(strategy: str | None = None, options: PruneOptions | None = None, **fields: Any) -> PruneOptions:
    """``PruneOptions`` from keywords (and/or a given model), a one-line ``PolarpruneError`` if invalid."""
    data = options.model_dump() if options is not None else {}
    if options is not None and options.masks is not None:
        data["masks"] = options.masks  # keep the tensors as they are
    data.update(fields)
    if strategy is not None:
        data["strategy"] = strategy
    try:
        return PruneOptions(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", exc)).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = f"unknown prune option {where!r}; options: {', '.join(PruneOptions.model_fields)}"
        elif where and where not in message:
            message = f"prune option {where}: {message}"
        raise PolarpruneError(message) from None


__all__ = ["DEFAULT_ROUND_TO", "DEFAULT_RUNTIME", "PruneOptions", "parse_options", "STRATEGIES", "STRATEGY_NEEDS", "RATIO_STRATEGIES", "SCORE_STRATEGIES", "GROUP_RULES",
           "RESIDUAL_MODES"]
