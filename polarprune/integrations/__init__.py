"""Sparsity training inside other projects' trainers (Lightning, ultralytics), one module each.

A layer next to ``workflows`` (docs/architecture.md): its modules may use sparsity, pruning, training and
workflows; nothing below imports them. Each module imports its trainer package (an optional extra) when it
is imported itself, so this package imports nothing: ``import polarprune.integrations.lightning``.
"""
