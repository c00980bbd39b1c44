"""Model entries: what the generic code needs to know about a model family, in one record.

Each family declares its ``ModelEntry`` next to its definition (``cifar_resnet.py``,
``cifar_vgg.py``, ``small_cnn.py``, ``torchvision_models.py``) and the generic code
(sparsity selection, the commands' input sizes, pruning's block rules and adapters) asks
``entry_for(model)`` instead of testing classes itself. A field left at None means "no
family knowledge here": the caller falls back to its dependency-graph default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import PolarpruneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The sparsity methods whose papers choose the regularized BNs (``ModelEntry.regularized_bns``).
METHODS = ("polarization", "l1", "masksparsity")

BnSelection = Callable[[nn.Module, "str | None"], "list[str] | None"]


@dataclass(frozen=True)
class ModelEntry:
    """Everything polarprune knows about one model name (timm's ``default_cfg`` idea).

    ``mean``/``std``: the normalisation its weights expect (None: the data set's own); ``classes``
    recognise plain instances built outside polarprune; ``bn_selection(model, method)``: the BNs the
    papers regularize (None: the dependency-graph default); the rest are the pruning code's slots.
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str = ""
    input_size: int | None = None  # square input side of the family; None: unknown (commands ask for --input-size)
    in_channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int = 1000
    classes: tuple[type[nn.Module], ...] = ()
    bn_selection: BnSelection | None = None
    residual_blocks: Callable[[nn.Module], Any] | None = None
    prepare_for_pruning: Callable[[nn.Module, Any], Any] | None = None
    # residual: scatter (the original accounting): ``scatter_block(block, positions, width)`` wraps a
    # pruned residual block so that its last BN's kept channels go back to ``positions`` of ``width``
    scatter_block: Callable[[nn.Module, Sequence[int], int], nn.Module] | None = None
    finish_pruning: Callable[[nn.Module], Any] | None = None  # undoes what prepare_for_pruning did only for the analysis
    # makes a fresh, unpruned instance able to take a plan (e.g. a split whose sizes a plan changes
    # reads them from its layers); run by ``apply_plan`` before it resizes layers
    before_plan: Callable[[nn.Module], Any] | None = None
    # layer classes the analysis keeps whole, with the reason (Torch-Pruning does not look inside them)
    whole_layers: tuple[tuple[type[nn.Module], str], ...] = ()
    # the module an export writes and checks (e.g. a detector whose head returns only its tensors)
    for_export: Callable[[nn.Module], nn.Module] | None = None
    export_note: str | None = None  # what an export writes when it is not the whole model (shown to the user)
    # the model's own name of a layer ``prepare`` renamed (e.g. a conv's two halves -> the conv), so
    # BN names and keep masks from the analysis fit the model; None: prepare renames nothing
    live_name: Callable[[str], str] | None = None
    # every prune report of this family also gives the original code's (scatter) accounting of MACs
    paper_accounting: bool = False
    task: str = "classification"  # what the family does: "classification", "detection", "segmentation"
    # ``example_input(model, side)``: an input of the form the model takes (None: one 4-D image batch)
    example_input: Callable[[nn.Module, int], Any] | None = None
    # ``inputs_for_trace(model, example_inputs)``: what the model adapted by ``prepare`` is traced with
    # (checks the form; None: the example inputs themselves)
    inputs_for_trace: Callable[[nn.Module, Any], Any] | None = None
    outputs: tuple[str, ...] = ()  # the outputs pruning preserves (the traced form's), for the docs and reports
    kept_whole: tuple[str, ...] = ()  # what the family's pruning leaves whole and why (a note of every prune report)

    def blocks(self, model: nn.Module) -> dict[str, Any]:
        """The residual blocks whose branch pruning may remove (name -> ``BlockInfo``); none without a rule."""
        return dict(self.residual_blocks(model)) if self.residual_blocks is not None else {}

    def prepare(self, model: nn.Module, example_inputs: Any) -> list[str]:
        """Adapt ``model`` for pruning in place (e.g. option-A shortcuts become placement shortcuts);
        returns what was replaced, nothing without an adapter."""
        return list(self.prepare_for_pruning(model, example_inputs) or []) if self.prepare_for_pruning is not None else []

    def trace_inputs(self, model: nn.Module, example_inputs: Any) -> Any:
        """What ``model`` (adapted by ``prepare``) is traced with; the example inputs without an adapter."""
        return self.inputs_for_trace(model, example_inputs) if self.inputs_for_trace is not None else example_inputs

    def finish(self, model: nn.Module) -> None:
        """Undo, after surgery, what ``prepare`` changed only for the analysis."""
        if self.finish_pruning is not None:
            self.finish_pruning(model)

    def plan_ready(self, model: nn.Module) -> None:
        """Make a fresh instance able to take a pruning plan (nothing without an adapter)."""
        if self.before_plan is not None:
            self.before_plan(model)

    def live(self, name: str) -> str:
        """The model's own name of a layer of the analysed (prepared) model."""
        return self.live_name(name) if self.live_name is not None else name

    def export_form(self, model: nn.Module) -> nn.Module:
        """The module an export writes for ``model`` (the model itself without an adapter)."""
        return self.for_export(model) if self.for_export is not None else model

    def scatters(self) -> bool:
        """The family can prune the original way (``residual: scatter``)."""
        return self.scatter_block is not None and self.residual_blocks is not None

    def regularized_bns(self, model: nn.Module, method: str | None = None) -> list[str] | None:
        """The BNs the papers regularize for ``method`` on ``model`` (None: no family rule)."""
        if method is not None and method not in METHODS:
            raise PolarpruneError(f"unknown sparsity method {method!r}; known: {', '.join(METHODS)}")
        return self.bn_selection(model, method) if self.bn_selection is not None else None


FIELDS = tuple(f.name for f in dataclasses.fields(ModelEntry))

# name -> entry, for the names ``create`` builds itself (ours and the user's).
_BY_NAME: dict[str, ModelEntry] = {}
# class -> entry, to recognise an instance (looked up along the instance's MRO).
_BY_CLASS: dict[type, ModelEntry] = {}
# name -> entry or None, for names outside the table (torchvision names, prefixes such as tv:).
_RESOLVERS: list[Callable[[str], "ModelEntry | None"]] = []
# Run before a lookup misses, with the name or model asked about: lets a family whose module
# imports a heavy library (torchvision) register only when it can be needed.
_LOADERS: list[Callable[[Any], None]] = []


def add(entry: ModelEntry, *, by_name: bool = True) -> ModelEntry:
    """Put ``entry`` in the registry under its classes and (``by_name``) its name; a later one replaces."""
    if by_name:
        _BY_NAME[entry.name] = entry
    for cls in entry.classes:
        _BY_CLASS[cls] = entry
    return entry


def register(name: str, builder: Callable[..., nn.Module], **fields: Any) -> ModelEntry:
    """Register a model name: ``create(name)`` builds it and the generic code uses its entry (``fields``:
    ``ModelEntry`` fields such as ``input_size=32``, ``classes=(MyNet,)``)."""
    unknown = sorted(set(fields) - set(FIELDS) - {"name", "builder"})
    if unknown:
        raise PolarpruneError(f"register({name!r}): unknown entry field {unknown[0]!r}; fields: {', '.join(FIELDS[2:])}")
    if not name or not callable(builder):
        raise PolarpruneError(f"register({name!r}): needs a non-empty name and a callable builder")
    fields.setdefault("family", name)
    fields["classes"] = tuple(fields.get("classes", ()))
    return add(ModelEntry(name=name, builder=builder, **fields))


def add_resolver(resolver: Callable[[str], ModelEntry | None]) -> None:
    """Answer names outside the table (checked in order after it), e.g. ``tv:`` or ``timm:`` names."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)


def add_loader(loader: Callable[[Any], None]) -> None:
    """Call ``loader(name_or_model)`` before a lookup (it imports and registers families on need)."""
    if loader not in _LOADERS:
        _LOADERS.append(loader)


def _load(subject: Any) -> None:
    for loader in _LOADERS:
        loader(subject)


def registered_names() -> list[str]:
    """The names in the table (not those only a resolver answers)."""
    return sorted(_BY_NAME)


def get_entry(name: str) -> ModelEntry | None:
    """The entry of a model name: the table first, then the resolvers; None when nobody knows it."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    _load(name)
    if name in _BY_NAME:  # a loader registered it
        return _BY_NAME[name]
    for resolver in _RESOLVERS:
        entry = resolver(name)
        if entry is not None:
            return entry
    return None


def entry_for(model: nn.Module) -> ModelEntry | None:
    """The entry of ``model``: its registered ``polarprune_spec`` name, else its most derived known class,
    else a resolver's for its name; None when nobody knows the model."""
    _load(model)
    spec = getattr(model, "polarprune_spec", None)
    name = spec.get("name") if isinstance(spec, dict) else None
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    for cls in type(model).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return get_entry(name) if isinstance(name, str) else None


def _no_builder(*args: Any, **kwargs: Any) -> nn.Module:
    raise PolarpruneError("this model has no registered family to build it from")


# the entry of a model nobody knows: no block rule, no adapter (the dependency-graph defaults)
UNKNOWN = ModelEntry(name="", builder=_no_builder)


def pruning_entry(model: nn.Module) -> ModelEntry:
    """The entry whose pruning knowledge applies to ``model`` (``UNKNOWN`` when no family knows it)."""
    return entry_for(model) or UNKNOWN


def every_bn(model: nn.Module, method: str | None = None) -> list[str]:
    """Every affine BatchNorm of the model, in definition order (a ``bn_selection``)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


def prefixed(prefix: str, name: str) -> str:
    """``prefix.name`` (just ``name`` at the top level)."""
    return f"{prefix}.{name}" if prefix else name


def block_bns(model: nn.Module, rules: Sequence[tuple[type, Sequence[str]]]) -> list[str]:
    """For each block of a listed class (first matching rule), its listed child BN names."""
    names: list[str] = []
    for prefix, module in model.named_modules():
        for cls, children in rules:
            if isinstance(module, cls):
                names += [prefixed(prefix, child) for child in children]
                break
    return names


__all__ = ["ModelEntry", "UNKNOWN", "pruning_entry", "METHODS", "IMAGENET_MEAN", "IMAGENET_STD", "register", "add", "add_resolver", "get_entry",
           "entry_for", "add_loader", "registered_names", "every_bn", "block_bns"]
