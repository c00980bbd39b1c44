"""Configuration as data: YAML plus ``key=value`` overrides, validated before anything runs. A ``TrainConfig``
describes one training run (a recipe, ``polarprune.workflows.recipe``, composes several); every section
forbids unknown keys, so a typo is an error naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import PolarpruneError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which network to build (``polarprune.models.create``)."""

    name: str = Field(
        "small_cnn",
        description="a registry name (`polarprune models`), `timm:<name>`, or an import path "
        "`package.module:callable` called with num_classes and `options` (imported only with --trust-code)",
    )
    num_classes: int | None = Field(None, ge=1, description="None: taken from the data set")
    bn_init: float | None = Field(None, description="initial BN gamma; 0.5 in the polarization recipes")
    bn_init_scope: Literal["all", "conv"] = Field(
        "all", description="which BNs bn_init sets: all, or conv (BatchNorm2d only, as the polarization code)"
    )
    weights: str | None = Field(None, description="local state-dict file to start from (e.g. torchvision's)")
    checkpoint: str | None = Field(None, description="start from this polarprune checkpoint or pruned model")
    options: dict[str, Any] = Field(default_factory=dict, description="extra constructor options (keyword arguments of an import path's callable)")


class DataConfig(Section):
    """Which data set, where, and how it is batched."""

    name: str = Field("digits", description="data set: a name of polarprune.data.SOURCES (docs/data.md)")
    root: str | None = Field(None, description="data folder (cifar: parent of cifar-10-batches-py; imagefolder: has train/ and val/ or test/)")
    download: bool = False
    batch_size: int = Field(128, ge=1, description="per process")
    global_batch_size: int | None = Field(
        None, ge=1, description="batch over all processes instead of batch_size: each process takes this / world size (an error when it does not divide)"
    )
    eval_batch_size: int = Field(256, ge=1)
    workers: int = Field(4, ge=0, description="loader processes for file-backed data sets")
    train_subset: int | None = Field(None, ge=1, description="use only this many training images (fixed stratified subset); fake: the training set size (512 default)")
    eval_subset: int | None = Field(None, ge=1, description="as train_subset, for the evaluation set; fake: its size (256 default)")
    image_size: int | None = Field(None, ge=8, description="imagefolder: crop size (224 default; small images stay in memory at their own size); fake: image side (32 default)")
    augment: bool = True
    in_memory_max_size: int = Field(64, ge=8, description="imagefolder images at most this size are decoded once into memory")
    num_classes: int = Field(10, ge=1, description="fake: number of classes")
    channels: int = Field(3, ge=1, description="fake: image channels")
    normalization: Literal["data", "model"] = Field(
        "data",
        description="data: the data set's mean/std; model: the model entry's own (e.g. a timm model's "
        "pretrained configuration: its mean/std, and its input size as image_size unless given)",
    )
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean, overriding data set and model")
    std: tuple[float, ...] | None = Field(None, description="per-channel std, overriding data set and model")

    def per_process_batch(self, world_size: int) -> int:
        """The training batch of each of ``world_size`` processes: ``global_batch_size`` split
        evenly when given (so a recipe keeps its global batch on any number of processes),
        otherwise ``batch_size``."""
        total = self.global_batch_size
        if total is None:
            return self.batch_size
        if total % world_size:
            raise PolarpruneError(f"data.global_batch_size {total} does not divide over {world_size} processes "
                                  f"(use a multiple of {world_size}, or data.batch_size per process)")
        if "batch_size" in self.model_fields_set and self.batch_size * world_size != total:
            raise PolarpruneError(
                f"data.batch_size {self.batch_size} (per process) and data.global_batch_size {total} disagree "
                f"on {world_size} process(es); give only one of them"
            )
        return total // world_size


class ScheduleConfig(Section):
    """Learning-rate schedule per epoch (with optional linear warm-up, per step)."""

    type: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[float] = Field(default_factory=list, description="epochs, or fractions of the run if all < 1")
    gammas: list[float] | float = Field(0.1, description="factor per milestone (one value for all)")
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.1, ge=0, le=1, description="lr factor at the start of the warm-up (0: from lr 0, as the original)")
    first_epoch_lr: float | None = Field(None, gt=0, description="lr for epoch 0 only (the polarization CIFAR recipe's 0.01)")
    min_lr: float = Field(0.0, ge=0, description="cosine floor")

    @model_validator(mode="after")
    def _check_milestones(self) -> "ScheduleConfig":
        if isinstance(self.gammas, list) and self.milestones and len(self.gammas) != len(self.milestones):
            raise ValueError(
                f"schedule.gammas has {len(self.gammas)} values but schedule.milestones has {len(self.milestones)}"
            )
        if self.milestones != sorted(self.milestones):
            raise ValueError("schedule.milestones must be increasing")
        return self


class TrainSection(Section):
    """Optimisation settings of one training run."""

    epochs: int = Field(10, ge=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    bn_weight_decay: bool = Field(True, description="apply weight decay to BN gammas/betas (and other 1-d params)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    amp: bool = Field(False, description="mixed precision on CUDA (bf16 autocast on CPU)")
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    channels_last: bool = False
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="the parameters' and inputs' precision while training; float64 (several times slower) keeps float rounding "
        "from growing into different pruning decisions, so runs match across process and thread counts (docs/distributed.md)")
    sync_bn: bool = Field(True, description="synchronised BatchNorm under DDP, so N processes with batch B train like 1 with N*B (off: faster, per-process statistics)")
    max_bad_steps: int = Field(
        0, ge=0, description="steps with a non-finite loss or gradient that are skipped before training stops (fp16 overflow steps the grad scaler skips do not count)"
    )
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and after the last)")
    progress: bool = Field(True, description="show progress: a bar on a terminal, else a log line at a steady pace")
    progress_interval: float = Field(30.0, gt=0, description="seconds between progress lines when stderr is not a terminal "
                                     "(a line also at every tenth of an epoch, but none within a sixth of this of the last)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap steps per epoch (smoke tests)")


class SparsityConfig(Section):
    """How sparsity training is set up (REFERENCE section 2). The regularizer's own parameters (``lbd``;
    polarization's ``t``, ``alpha``, ``clamp``, ``detach_mean``; mask-l1's ``mask``) sit next to these
    keys, but each regularizer declares and checks them (``sparsity.regularizers``: its ``Params``);
    ``sparsity.resolve_sparsity`` checks the name and those parameters. This layer knows neither."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    regularizer: str = Field("none", description="a name of sparsity.regularizers.REGULARIZERS (none, l1, polarization, mask-l1)")
    include: list[str] = Field(default_factory=list, description="fnmatch patterns of BN names to regularize (empty: default choice)")
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns of BN names not to regularize")
    flops_weighted: bool = False
    flops_weighting: Literal["residual", "original"] = Field(
        "residual", description="flops_weighted: what one channel costs: residual (producer + every consumer through residual additions) "
        "or original (the polarization code: producer + direct readers only)")
    weight_min: float = Field(0.5, gt=0)
    weight_max: float = Field(1.5, gt=0)
    target_macs_ratio: float | None = Field(None, gt=0, le=1, description="stop regularizing once a trial prune leaves MACs <= this fraction")
    target_latency_ratio: float | None = Field(
        None, gt=0, le=1, description="stop regularizing once a trial prune leaves predicted latency <= this fraction "
        "(the latency cost model of latency_runtime at latency_batch and latency_threads); with target_macs_ratio: whichever comes first")
    latency_runtime: str = Field("eager", min_length=1, description="with target_latency_ratio: the runtime whose latency counts (deploy.runtimes)")
    latency_batch: int = Field(1, ge=1, description="with target_latency_ratio: the batch size whose latency counts")
    latency_threads: int = Field(1, ge=1, description="with target_latency_ratio: the thread count whose latency counts")
    latency_cache: str | None = Field(None, description="with target_latency_ratio: the latency tables' folder (null: ~/.cache/polarprune/latency)")
    target_check_every: int | None = Field(None, ge=1, description="with a target (MACs or latency): also trial-prune every N training steps, "
                                           "so the stop lands closer to the target (null: at epoch ends only, as the original)")
    freeze_on_target: bool = Field(True, description="with a target: once reached, also freeze the regularized gammas (as the original)")
    clamp_scope: Literal["regularized", "all"] = Field("regularized", description="clamp: the regularized gammas, or every BN's (the original)")
    monitor: bool = Field(True, description="trial-prune every epoch and log the MACs grad/fixed would leave")

    @model_validator(mode="after")
    def _check_weights(self) -> "SparsityConfig":
        if self.weight_min > self.weight_max:
            raise ValueError(f"weight_min ({self.weight_min}) exceeds weight_max ({self.weight_max})")
        if self.target_check_every is not None and self.target_macs_ratio is None and self.target_latency_ratio is None:
            raise ValueError("target_check_every needs target_macs_ratio or target_latency_ratio")
        return self

    def regularizer_options(self) -> dict[str, Any]:
        """The keys this section does not declare: the regularizer's own parameters."""
        return dict(self.model_extra or {})


class DistillConfig(Section):
    """Knowledge distillation from a teacher: ``alpha * T^2 * KL(soft teacher || soft student) + (1 - alpha) * task loss``."""

    teacher: str = Field(description="an earlier stage of the recipe (its final model) or a checkpoint / model file")
    temperature: float = Field(4.0, gt=0, description="T: both logits are divided by it before the softmax")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term (1 - alpha: the task loss)")


class TrainConfig(Section):
    """One training run (``polarprune train CONFIG``)."""

    seed: int = 0
    deterministic: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    out: str = Field("runs/train", description="output folder (checkpoints, metrics, TensorBoard)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    distill: DistillConfig | None = Field(None, description="distil from a teacher while training (None: off)")


# ----------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise PolarpruneError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PolarpruneError(f"{p}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolarpruneError(f"{p}: a config must be a YAML mapping of keys, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed YAML value)."""
    if "=" not in item:
        raise PolarpruneError(f"override {item!r}: expected key=value (for example train.lr=0.05)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise PolarpruneError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_path(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    """Set ``data[path[0]][path[1]]... = value`` in place, creating sections (``item``: the override, for errors)."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise PolarpruneError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides set (sections are created)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        set_path(data, path, value, item)
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """The first offending key (``prefix``: the section the schema sits in), its problem and the value given."""
    err = exc.errors()[0]
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in err["loc"]])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return f"{key}: {msg}" if key else msg
    given = err.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    return f"{key or '(top level)'}: {msg} (got {shown})"


def format_validation_error(exc: ValidationError, source: str = "config", prefix: str = "") -> str:
    """One line: ``source``, then the first offending key, its problem and the value given."""
    return f"{source}: {describe_validation_error(exc, prefix)}"


def validate(schema: type[Section], data: dict[str, Any], source: str = "config") -> Any:
    """Validate ``data`` against ``schema``; any problem is a one-line PolarpruneError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise PolarpruneError(format_validation_error(exc, source)) from None


def dump_yaml(cfg: BaseModel) -> str:
    """The config as YAML (what a run really used, saved next to its results)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
