"""polarprune: structured channel pruning of CNNs through sparsity training."""

__version__ = "0.1.0"

from .errors import PolarpruneError  # noqa: E402

__all__ = ["PolarpruneError", "__version__"]
