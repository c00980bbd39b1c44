"""Atomic file output: a kill at any moment leaves either the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if needed); on success it is fsynced and
    replaces ``path``, on error it vanishes. The file gets the mode a plain ``open`` would give it (0666
    less the umask), not mkstemp's private 0600, so a shared run folder stays readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # after the writer: some (safetensors) replace the file
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, payload: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=default) + "\n")


def atomic_write_json_lines(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line (``metrics.jsonl``) to ``path`` atomically."""
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    """The JSON content of ``path``; None when the file is missing or not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None
