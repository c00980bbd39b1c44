"""One module per sub-command; each defines ``register(subparsers)``. What several commands share (parser
set-up, argument groups, bound checks, forward errors) is in ``common.py``, torch-free so ``--help`` stays fast."""

from __future__ import annotations

from .common import add_trust_code_argument

__all__ = ["add_trust_code_argument"]
