"""What several commands share: parser set-up, argument groups, bound checks and the one-line error for a
model that does not run on the input it was given. Torch is imported only inside functions that run a
model, so ``polarprune --help`` stays fast."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Sequence

from ..errors import PolarpruneError, first_line

TRUST_CODE_HELP = (
    "allow importing the Python module that a model name 'package.module:callable' names "
    "(on the command line, in a config or recipe, or inside a model file); without it such a model is refused"
)
CHECKPOINT_HELP = "training checkpoint (.pt) or polarprune model file (.safetensors)"
INPUT_SIZE_HELP = ("input height and width (default: what the model file records it was trained or pruned at, "
                   "else its family's: 8 small_cnn, 32 CIFAR models, 224 torchvision/timm)")
IN_CHANNELS_HELP = "input channels (default: what the model file records, else the model's own)"

Runner = Callable[[argparse.Namespace], int]


def add_trust_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-code``: the command may import modules named by import paths (cli.main opens the scope)."""
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)


def command_parser(sub: argparse._SubParsersAction, name: str, summary: str, description: str, run: Runner, *,
                   raw: bool = False, trust_code: bool = True) -> argparse.ArgumentParser:
    """A sub-command's parser: its one-line summary for ``polarprune --help``, its description (``raw``:
    printed as written), ``--trust-code`` unless ``trust_code`` is False, and the function it runs."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    parser = sub.add_parser(name, help=summary, description=description, formatter_class=formatter)
    if trust_code:
        add_trust_code_argument(parser)
    parser.set_defaults(func=run)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, name: str, source_help: str, out_help: str) -> None:
    """``run`` and ``train``: a YAML source (recipe or config), ``key=value`` overrides of it, and ``--out``."""
    parser.add_argument(name, help=source_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"{name} overrides (dotted keys)")
    parser.add_argument("--out", help=out_help)


def add_input_size_argument(parser: argparse.ArgumentParser, *, channels: bool = False) -> None:
    """``--input-size S`` (and ``--in-channels C``), both defaulting to the model's own input
    (``models.inputs.input_shape_of``: what the file records, else the family's, else an error)."""
    parser.add_argument("--input-size", type=int, default=None, metavar="S", help=INPUT_SIZE_HELP)
    if channels:
        parser.add_argument("--in-channels", type=int, default=None, metavar="C", help=IN_CHANNELS_HELP)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``prune``, ``mask``, ``inspect``: the trained model to read and the example input's size."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    add_input_size_argument(parser)


def add_model_name_arguments(parser: argparse.ArgumentParser, *, channels: bool = False) -> None:
    """``export``, ``latency``, ``flops``: ``--input-size`` (``channels``: and ``--in-channels``) and the
    classes of a model given by name."""
    add_input_size_argument(parser, channels=channels)
    parser.add_argument("--num-classes", type=int, default=10, metavar="N",
                        help="classes of a model name (default 10; a model file knows its own)")


def data_image_size(model: Any, given: int | None) -> int | None:
    """The image size to load evaluation data at (``data.image_size``: imagefolder's crop, fake's side):
    ``given``, else the square side the model records; None leaves the data set's own default (also for
    a recorded side below what ``data.image_size`` accepts)."""
    from ..config import DataConfig
    from ..models import recorded_input_shape

    recorded = recorded_input_shape(model)
    if given is not None or recorded is None or recorded[1] != recorded[2]:
        return given
    least = min((m.ge for m in DataConfig.model_fields["image_size"].metadata if getattr(m, "ge", None) is not None), default=1)
    return recorded[1] if recorded[1] >= least else None


def check_at_least(bounds: Mapping[str, tuple[Any, int]]) -> None:
    """``{"--rounds": (value, 1)}``: a one-line error naming the first option below its least value
    (a None value is an option not given)."""
    for option, (value, least) in bounds.items():
        if value is not None and value < least:
            raise PolarpruneError(f"{option} must be >= {least}, got {value}")


def expected_input(model: Any) -> str:
    """The input form a model takes, from its spec or its first layer with ``in_channels`` (the stem
    convolution): ``"N x 1 x H x W"``."""
    spec = getattr(model, "polarprune_spec", None) or {}
    channels = spec.get("in_channels") or next(
        (m.in_channels for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), None)
    return f"N x {channels} x H x W" if channels else "N x C x H x W"


def check_forward(label: str, model: Any, input_shape: Sequence[int], hint: str = "") -> None:
    """Run ``model`` once on one zero image of ``input_shape`` (C, H, W); when it fails, one line naming the
    model, the shape given, the form it expects and torch's reason, instead of a traceback from deep inside
    torch. ``hint`` (e.g. which option sets the size) ends the line."""
    import torch

    shape = (1, *(int(s) for s in input_shape))
    parameter = next(model.parameters(), None)
    x = torch.zeros(shape, dtype=parameter.dtype if parameter is not None else torch.float32,
                    device=parameter.device if parameter is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        given = "x".join(map(str, shape))
        raise PolarpruneError(f"{label} does not run on input {given}: it expects {expected_input(model)} "
                              f"({first_line(exc)})" + (f"; {hint}" if hint else "")) from None
    finally:
        model.train(was_training)


def check_output_folders(paths: Mapping[str, Any]) -> None:
    """``{"--out": path}``: a one-line error when an output file's folder does not exist (nothing is written)."""
    from pathlib import Path

    for option, value in paths.items():
        parent = Path(value).parent if value else None
        if parent is not None and str(parent) and not parent.is_dir():
            raise PolarpruneError(f"{option} {value}: folder {parent} does not exist")
