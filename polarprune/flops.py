"""Count a model's multiply-accumulates (MACs), FLOPs and parameters, per image.

One forward pass under a ``TorchDispatchMode`` prices every aten operator that reaches it, so no
per-module hooks are needed and functional code counts too. Conventions (docs/flops.md has the table):
``macs`` counts convolutions and matrix products only, no bias terms (the papers' metric); ``flops``
counts everything, one MAC as one FLOP (the seeds' convention, so ``flops >= macs``); data movement
costs 0; ``params`` counts every parameter once, buffers not.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from .errors import PolarpruneError
from .modes import inference
from .models.entry import entry_for
from .models.inputs import input_shape_of

# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ModelCost:
    """Per-image cost of one forward pass: MACs, FLOPs (MACs included) and parameter count."""

    macs: int
    flops: int
    params: int

    def as_dict(self) -> dict[str, int]:
        """``{"macs": ..., "flops": ..., "params": ...}`` (plain ints, JSON-ready)."""
        return {"macs": self.macs, "flops": self.flops, "params": self.params}


@dataclass(frozen=True)
class OpCost:
    """Cost of one operator call: ``flops`` includes ``macs`` (one MAC counts as one FLOP)."""

    macs: int = 0
    flops: int = 0

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(self.macs + other.macs, self.flops + other.flops)


FREE = OpCost()


@dataclass(frozen=True)
class CostProfile:
    """Per-image totals plus where they come from: ``per_op`` per aten operator (in-place folded into
    the plain name), ``uncounted``: calls per pass of operators with no cost rule (counted as 0)."""

    cost: ModelCost
    per_op: dict[str, OpCost] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pure formulas


def conv_macs(input_shape: Sequence[int], weight_shape: Sequence[int], output_shape: Sequence[int], transposed: bool = False) -> int:
    """MACs of one convolution call (whole batch): ``prod(weight_shape[1:])`` per output element, or per
    *input* element for a transposed conv (its weight is ``(C_in, C_out/groups, *kernel)``)."""
    return math.prod(input_shape if transposed else output_shape) * math.prod(weight_shape[1:])


def matmul_macs(left_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """MACs of a matrix product (mm, bmm, mv, dot): output elements times the inner size."""
    return math.prod(output_shape) * left_shape[-1]


def pool_window(kernel_size: int | Sequence[int], spatial_dims: int) -> int:
    """Elements in one pooling window; a single size means a square/cubic window."""
    sizes = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    if len(sizes) == 1:
        sizes = sizes * spatial_dims
    return math.prod(int(s) for s in sizes)


def per_image(total: int, batch_size: int) -> int:
    """``total / batch_size`` rounded to the nearest integer, in exact integer arithmetic."""
    return (2 * total + batch_size) // (2 * batch_size)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (a parameter shared by two modules counts once)."""
    return sum(p.numel() for p in model.parameters())


def format_units(count: int | float) -> str:
    """Short human form: ``125.49 M``, ``4.11 G``, ``855.77 K``, ``640``."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:g}"


# ---------------------------------------------------------------------------------------------
# Cost rules: aten op name -> (bound arguments, output) -> OpCost

Args = dict[str, Any]
Rule = Callable[[Args, Any], OpCost]


def _first_tensor(value: Any) -> torch.Tensor:
    """The main output of an op (ops such as batch norm return a tuple, output first)."""
    return value[0] if isinstance(value, (tuple, list)) else value


def _numel(value: Any) -> int:
    tensor = _first_tensor(value)
    return tensor.numel() if isinstance(tensor, torch.Tensor) else 1


def _convolution(args: Args, out: Any) -> OpCost:
    x, weight = args["input"], args["weight"]
    macs = conv_macs(x.shape, weight.shape, _first_tensor(out).shape, bool(args.get("transposed", False)))
    bias = _numel(out) if args.get("bias") is not None else 0
    return OpCost(macs, macs + bias)


def _matmul(left: str, bias: str | None = None) -> Rule:
    """Rule for a matrix product whose left operand is argument ``left``; ``bias``: added term."""

    def rule(args: Args, out: Any) -> OpCost:
        macs = matmul_macs(args[left].shape, _first_tensor(out).shape)
        extra = _numel(out) if bias is not None and args.get(bias) is not None else 0
        return OpCost(macs, macs + extra)

    return rule


def _linear(args: Args, out: Any) -> OpCost:
    macs = _numel(out) * args["weight"].shape[-1]
    return OpCost(macs, macs + (_numel(out) if args.get("bias") is not None else 0))


def _addbmm(args: Args, out: Any) -> OpCost:
    """``self + sum_b batch1[b] @ batch2[b]``: every batch's product, then one bias add."""
    macs = math.prod(args["batch1"].shape) * args["batch2"].shape[-1]
    return OpCost(macs, macs + _numel(out))


def _addmm_activation(args: Args, out: Any) -> OpCost:
    base = _matmul("mat1", "self")(args, out)
    return OpCost(base.macs, base.flops + _numel(out))


def _per_output_element(flops: int) -> Rule:
    return lambda args, out: OpCost(0, flops * _numel(out))


def _per_input_element(flops: int) -> Rule:
    return lambda args, out: OpCost(0, flops * args["self"].numel())


def _batch_norm(args: Args, out: Any) -> OpCost:
    """Eval mode folds BN into a scale and a shift; with batch statistics it is a full norm."""
    if args.get("training", False):
        return _runtime_norm(args, out)
    return OpCost(0, 2 * args["input"].numel())


def _runtime_norm(args: Args, out: Any) -> OpCost:
    """Layer/group/instance norm (and BN on batch statistics): mean 1, variance 2, normalise 1."""
    per_element = 4 + (2 if args.get("weight") is not None else 0)
    return OpCost(0, per_element * args["input"].numel())


def _pool(spatial_dims: int) -> Rule:
    def rule(args: Args, out: Any) -> OpCost:
        return OpCost(0, pool_window(args["kernel_size"], spatial_dims) * _numel(out))

    return rule


def _attention_scores(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[int, int]:
    """(MACs, score elements) of softmax(Q K^T) V for (..., L, E) shaped q, k, v."""
    batch = math.prod(query.shape[:-2])
    q_len, k_len = query.shape[-2], key.shape[-2]
    scores = batch * q_len * k_len
    return scores * (query.shape[-1] + value.shape[-1]), scores


def _sdpa(args: Args, out: Any) -> OpCost:
    """Fused scaled dot-product attention: two products, plus scale and softmax per score."""
    macs, scores = _attention_scores(args["query"], args["key"], args["value"])
    return OpCost(macs, macs + 4 * scores)


def _native_mha(args: Args, out: Any) -> OpCost:
    """nn.MultiheadAttention's fused eval path: q/k/v projections, attention, out projection."""
    query, key, value = args["query"], args["key"], args["value"]
    embed, heads = int(args["embed_dim"]), int(args["num_head"])
    q_rows, k_rows, v_rows = query.numel() // embed, key.numel() // embed, value.numel() // embed
    projections = (q_rows + k_rows + v_rows) * embed * embed
    batch = q_rows // query.shape[-2]
    q_len, k_len = query.shape[-2], key.shape[-2]
    scores = batch * heads * q_len * k_len
    attention = 2 * batch * q_len * k_len * embed  # Q K^T and A V summed over heads
    out_projection = q_rows * embed * embed
    macs = projections + attention + out_projection
    biases = (q_rows + k_rows + v_rows + q_rows) * embed
    return OpCost(macs, macs + biases + 4 * scores)


ACTIVATIONS = (
    "relu", "relu6", "hardtanh", "sigmoid", "silu", "hardswish", "hardsigmoid", "gelu", "tanh",
    "elu", "selu", "celu", "leaky_relu", "prelu", "_prelu_kernel", "mish", "softplus", "softshrink",
    "hardshrink", "threshold", "log_sigmoid_forward", "rrelu_with_noise", "glu", "logit",
)
ELEMENTWISE = (
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod",
    "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "pow", "exp", "exp2", "expm1", "log",
    "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "neg", "abs", "square", "erf", "sign",
    "sin", "cos", "floor", "ceil", "round", "trunc", "eq", "ne", "lt", "le", "gt", "ge",
)
TWO_PER_ELEMENT = ("addcmul", "addcdiv", "lerp")
REDUCTIONS = ("mean", "sum", "amax", "amin", "max", "min", "prod", "logsumexp", "nansum")
ADAPTIVE_POOLS = (
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "mkldnn_adaptive_avg_pool2d",
)
WINDOW_POOLS = (
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "mkldnn_max_pool2d",
    "mkldnn_max_pool3d",
)
SOFTMAXES = ("_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax")

# Operators that only create, move or reinterpret data: 0 FLOPs, and not reported as uncounted.
FREE_OPS = frozenset({
        "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
        "expand_as", "squeeze", "unsqueeze", "flatten", "unflatten", "slice", "select", "index",
        "index_select", "gather", "narrow", "cat", "stack", "split", "split_with_sizes", "chunk",
        "unbind", "constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d",
        "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
        "clone", "copy", "_to_copy", "contiguous", "detach", "alias", "lift_fresh",
        "lift_fresh_copy", "as_strided", "empty", "empty_like", "empty_strided", "zeros",
        "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_empty",
        "new_full", "new_empty_strided", "fill", "zero", "randn", "rand", "randint", "arange",
        "scalar_tensor", "roll", "flip", "masked_fill", "where", "channel_shuffle",
        "pixel_shuffle", "pixel_unshuffle", "upsample_nearest1d", "upsample_nearest2d",
        "upsample_nearest3d", "repeat", "tile", "unfold", "embedding", "dropout", "native_dropout",
        "bernoulli", "_local_scalar_dense", "item", "unsafe_split", "split_copy", "view_copy",
        "index_put", "masked_scatter", "set", "resize", "_assert_async", "_assert_tensor_metadata",
})


def _rules() -> dict[str, Rule]:
    table: dict[str, Rule] = dict.fromkeys(("convolution", "_convolution", "convolution_overrideable"), _convolution)
    table.update(dict.fromkeys(("mm", "bmm", "mv", "dot", "vdot"), _matmul("self")))
    table.update(addmm=_matmul("mat1", bias="self"), baddbmm=_matmul("batch1", bias="self"), addmv=_matmul("mat", bias="self"),
                 addbmm=_addbmm, linear=_linear, _addmm_activation=_addmm_activation)
    table.update(dict.fromkeys(("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                                "_batch_norm_no_update", "cudnn_batch_norm", "miopen_batch_norm"), _batch_norm))
    table.update(dict.fromkeys(("_batch_norm_with_update", "native_layer_norm", "native_group_norm", "_fused_rms_norm"),
                               _runtime_norm))
    table["_native_multi_head_attention"] = _native_mha
    table.update(dict.fromkeys(("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                                "scaled_dot_product_attention"), _sdpa))
    table.update(dict.fromkeys(ACTIVATIONS + ELEMENTWISE, _per_output_element(1)))
    table.update(dict.fromkeys(TWO_PER_ELEMENT, _per_output_element(2)))
    table.update(dict.fromkeys(SOFTMAXES, _per_output_element(3)))
    table.update(dict.fromkeys(REDUCTIONS + ADAPTIVE_POOLS, _per_input_element(1)))
    table["linalg_vector_norm"] = _per_input_element(2)
    table.update({name: _pool(int(re.search(r"(\d)d", name).group(1))) for name in WINDOW_POOLS})  # type: ignore[union-attr]
    return table


RULES: dict[str, Rule] = _rules()


def op_name(func: Any) -> str:
    """Name under which an operator is priced: in-place ``relu_`` -> ``relu``; other namespaces
    keep theirs (``torchvision::nms``)."""
    packet = getattr(func, "_overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(func, "__name__", str(func))
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    namespace = getattr(func, "namespace", "aten")
    return name if namespace == "aten" else f"{namespace}::{name}"


def bind_arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """Map an operator's positional and keyword arguments to its schema's argument names."""
    return dict(zip([a.name for a in func._schema.arguments], args), **kwargs)


def index_arithmetic(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when an operator's tensors are all integer or bool (index bookkeeping such as a layer's
    ``placement >= 0``): it costs 0, like data movement, so a model counts the same whichever
    equivalent layer (a padding shortcut or its index-placing form) it holds."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return bool(tensors) and not any(t.is_floating_point() or t.is_complex() for t in tensors)


class CostCounter(TorchDispatchMode):
    """Dispatch mode that prices every aten call made while it is active (whole batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_op: dict[str, OpCost] = {}
        self.uncounted: Counter[str] = Counter()

    @property
    def total(self) -> OpCost:
        return sum(self.per_op.values(), FREE)

    def profile(self, model: nn.Module, batch: int) -> CostProfile:
        """What was counted, per image of a batch of ``batch``, with ``model``'s parameter count."""
        per_op = {name: OpCost(per_image(c.macs, batch), per_image(c.flops, batch)) for name, c in sorted(self.per_op.items())}
        total = self.total
        cost = ModelCost(per_image(total.macs, batch), per_image(total.flops, batch), count_params(model))
        return CostProfile(cost, per_op, dict(self.uncounted))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if not hasattr(func, "_schema"):  # higher-order operators: run them uncounted
            self.uncounted[str(func)] += 1
            return func(*args, **kwargs)
        name = op_name(func)
        rule = RULES.get(name)
        if rule is not None and index_arithmetic(args, kwargs):
            return func(*args, **kwargs)  # integer/bool bookkeeping (indices, masks): computes addresses, not activations
        if rule is None and name not in FREE_OPS:
            # An op we do not know may be built from ones we do: price its decomposition.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        out = func(*args, **kwargs)
        if rule is not None:
            self.per_op[name] = self.per_op.get(name, FREE) + rule(bind_arguments(func, args, kwargs), out)
        elif name not in FREE_OPS:
            self.uncounted[name] += 1
        return out


# ---------------------------------------------------------------------------------------------
# Public entry points


def example_input(model: nn.Module, input_shape: Sequence[int] | torch.Tensor | None = None, *, input_size: int | None = None,
                  in_channels: int | None = None, batch: int = 1) -> Any:
    """The tensor the model is run on: the given one, or ``batch`` random images of the given ``(C, H, W)``,
    else of the model's own input shape (``models.inputs.input_shape_of``: ``input_size``/``in_channels``,
    else recorded in the model, else its family's, else an error asking for --input-size). Random images
    come from a private generator (the global RNG is left alone), on the device and floating dtype of the
    model's first parameter. A family with its own input form (``ModelEntry.example_input``: a list of
    images for torchvision detectors) gets that form at the shape's side."""
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    if isinstance(input_shape, torch.Tensor):
        if input_shape.dim() < 1 or input_shape.shape[0] < 1:
            raise PolarpruneError(f"example input must have a batch dimension of at least 1, got shape {tuple(input_shape.shape)}")
        return input_shape.to(device)
    shape = input_shape_of(model, input_size, in_channels) if input_shape is None else tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise PolarpruneError(f"input shape must be positive integers (C, H, W), got {shape!r}")
    family = entry_for(model)
    if family is not None and family.example_input is not None:  # e.g. a list of images (torchvision detection)
        return tree_map(lambda t: t.to(device=device, dtype=dtype) if isinstance(t, torch.Tensor) else t,
                        family.example_input(model, shape[-1]))
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype)


def counted_forward(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, CostProfile]:
    """``model(*inputs)`` (eval mode, no grad, modes restored) and its per-image cost profile (one pass)."""
    batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() else 1
    counter = CostCounter()
    with inference(model), counter:
        output = model(*inputs)
    return output, counter.profile(model, batch)


def image_shape(example: Any) -> list[int]:
    """The ``(C, H, W)`` of one image of an example input: a 4-D batch or a list of 3-D images."""
    first = example[0] if isinstance(example, (list, tuple)) else example[0]
    return list(first.shape)


def profile_model(model: nn.Module, input_shape: Sequence[int] | torch.Tensor | None = None) -> CostProfile:
    """Per-image totals and per-op costs of one forward pass (eval mode, no grad, modes restored) on one
    (C, H, W) image (default: the model's own input, ``example_input``), or on an example batch whose
    counts are divided by its batch size."""
    x = example_input(model, input_shape)
    try:
        return counted_forward(model, (x,))[1]
    except PolarpruneError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PolarpruneError(f"cannot run {type(model).__name__} on an input of shape {tuple(x.shape)}: {first}") from exc


def count_model(model: nn.Module, input_shape: Sequence[int] | torch.Tensor | None = None) -> ModelCost:
    """Per-image MACs, FLOPs and parameter count of ``model`` (see the module docstring); ``input_shape``
    defaults to the model's own input (``example_input``)."""
    return profile_model(model, input_shape).cost


__all__ = ["ModelCost", "OpCost", "CostProfile", "CostCounter", "count_model", "profile_model", "counted_forward",
           "count_params", "conv_macs", "matmul_macs", "pool_window", "per_image", "format_units", "example_input",
           "op_name", "RULES", "FREE_OPS"]
