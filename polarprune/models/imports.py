"""Models by import path (``"package.module:callable"``), imported only when code is trusted.

Importing a module runs its code, so a name that came from a file imports nothing on its own: only
when the caller trusts code (``trust_code=True``, or a ``with trusting_code():`` scope, which
``--trust-code`` opens around a command); otherwise a one-line refusal. ``tv:``/``timm:`` are registry
prefixes, not import paths.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import re
from typing import Any, Callable, Iterator

from torch import nn

from ..errors import PolarpruneError
from .entry import ModelEntry, add_resolver

REGISTRY_PREFIXES = ("tv", "timm")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_IMPORT_PATH = re.compile(rf"^({_DOTTED}):({_DOTTED})$")
TRUST_HINT = "pass trust_code=True (commands: --trust-code) if you trust it"

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("polarprune_trusted_code", default=False)


def is_import_path(name: object) -> bool:
    """True for ``"package.module:callable"`` names (not the ``tv:``/``timm:`` registry prefixes)."""
    if not isinstance(name, str):
        return False
    match = _IMPORT_PATH.match(name)
    return match is not None and match.group(1) not in REGISTRY_PREFIXES


def split_import_path(name: str) -> tuple[str, str]:
    """``("package.module", "callable")`` of an import path; a one-line error for anything else."""
    match = _IMPORT_PATH.match(name)
    if match is None or match.group(1) in REGISTRY_PREFIXES:
        raise PolarpruneError(f"model {name!r} is not an import path of the form 'package.module:callable'")
    return match.group(1), match.group(2)


@contextlib.contextmanager
def trusting_code(enabled: bool = True) -> Iterator[None]:
    """Within this scope, import paths named by files, configs and specs may be imported."""
    token = _TRUSTED.set(bool(enabled) or _TRUSTED.get())
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def code_trusted() -> bool:
    """Whether the current scope trusts code (``trusting_code``)."""
    return _TRUSTED.get()


def check_trusted(name: str, where: str = "", trust_code: bool = False) -> None:
    """Refuse (one line, nothing imported) to build import path ``name`` unless code is trusted."""
    if trust_code or code_trusted():
        return
    module, _ = split_import_path(name)
    prefix = f"{where}: " if where else ""
    raise PolarpruneError(f"{prefix}model {name!r} is an import path: building it would import and run module {module!r}; "
                          f"not imported; {TRUST_HINT}")


def load_callable(name: str, *, trust_code: bool = False, where: str = "") -> Callable[..., Any]:
    """The callable an import path names, imported only when trusted (see ``check_trusted``)."""
    check_trusted(name, where, trust_code)
    module_name, attr_path = split_import_path(name)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PolarpruneError(f"model {name!r}: cannot import module {module_name!r} ({exc}); "
                              "is its folder on PYTHONPATH?") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise PolarpruneError(f"model {name!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise PolarpruneError(f"model {name!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise PolarpruneError(f"model {name!r}: {attr_path!r} is not callable")
    return target


def _accepts(parameters: dict[str, inspect.Parameter], key: str) -> bool:
    return key in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_from_import_path(name: str, num_classes: int, in_channels: int = 3, *, trust_code: bool = False,
                           **options: Any) -> nn.Module:
    """Import (when trusted) and call ``name``: ``callable(num_classes=..., [in_channels=...], **options)``
    (``in_channels`` when the callable names it; one other than 3 needs a callable that takes it)."""
    builder = load_callable(name, trust_code=trust_code)
    try:
        parameters = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):  # builtins without a signature: pass the keywords
        parameters = {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}
    if not _accepts(parameters, "num_classes"):
        raise PolarpruneError(f"model {name!r}: the callable takes no 'num_classes' keyword (polarprune passes the number of classes)")
    kwargs: dict[str, Any] = {"num_classes": num_classes, **options}
    if "in_channels" in parameters or in_channels != 3:
        if not _accepts(parameters, "in_channels"):
            raise PolarpruneError(f"model {name!r}: in_channels={in_channels} asked, but the callable takes no 'in_channels' keyword")
        kwargs["in_channels"] = in_channels
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise PolarpruneError(f"model {name!r}: bad option: {exc}") from None
    if not isinstance(model, nn.Module):
        raise PolarpruneError(f"model {name!r}: the callable returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def import_path_entry(name: str) -> ModelEntry | None:
    """Registry resolver: an entry for an import-path name (nothing is imported until it is built)."""
    if not is_import_path(name):
        return None

    def build(num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
        return build_from_import_path(name, num_classes, in_channels, **options)

    return ModelEntry(name=name, builder=build, family="import path")


__all__ = ["is_import_path", "split_import_path", "trusting_code", "code_trusted", "check_trusted", "load_callable",
           "build_from_import_path", "import_path_entry", "TRUST_HINT"]


add_resolver(import_path_entry)
