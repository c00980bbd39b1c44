"""Caches under ``$POLARPRUNE_CACHE``: tar archives extracted once, decoded image splits as ``.npz``;
entries are keyed by what they were made from and written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from ..errors import PolarpruneError
from ..fileio import atomic_output, current_umask

CACHE_ENV = "POLARPRUNE_CACHE"
ARCHIVE_ENV = "POLARPRUNE_CIFAR10_ARCHIVE"
CIFAR10_ARCHIVE_NAME = "cifar10-jpg.tar.gz"
DECODED_CACHE_VERSION = 1


def default_cache_root() -> Path:
    """``$POLARPRUNE_CACHE`` or ``~/.cache/polarprune``: extracted archives, decoded images."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polarprune"


def default_cifar10_archive() -> Path | None:
    """The shared CIFAR-10 JPEG archive: ``$POLARPRUNE_CIFAR10_ARCHIVE``, else
    ``../shared/data/cifar10-jpg.tar.gz`` next to the repository; None when it is not there."""
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_file() else None
    repo = Path(__file__).resolve().parents[2]
    path = repo.parent / "shared" / "data" / CIFAR10_ARCHIVE_NAME
    return path if path.is_file() else None


def _archive_stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a tar archive that ``ensure_extracted`` can open."""
    return Path(path).name.endswith((".tar.gz", ".tgz", ".tar"))


def _split_root(folder: Path, archive: Path) -> Path:
    """The folder holding ``train/``: ``folder`` itself or its only sub-folder that has one."""
    if (folder / "train").is_dir():
        return folder
    candidates = [child for child in sorted(folder.iterdir()) if (child / "train").is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    raise PolarpruneError(f"{archive}: no train/ folder inside the archive")


def ensure_extracted(archive: str | Path, cache_root: str | Path | None = None) -> Path:
    """Extract a tar archive once (via a temporary folder renamed into place) into
    ``<cache_root>/extracted/<stem>-<key of path, size, mtime>`` and return the folder holding ``train/``."""
    archive = Path(archive).expanduser().resolve()
    if not archive.is_file():
        raise PolarpruneError(f"archive not found: {archive}")
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    stat = archive.stat()
    key = hashlib.sha1(f"{archive}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = _archive_stem(archive.name)
    target = root / "extracted" / f"{stem}-{key}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-", dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the cache may be shared
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race with another process
                    raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PolarpruneError(f"{archive}: cannot extract: {exc}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _split_root(target, archive)


def decoded_cache_path(split_dir: Path, samples: list[tuple[str, int]], size: tuple[int, int]) -> Path:
    """The cache file of one decoded split: keyed by the folder's absolute path, its file count,
    the newest file mtime, and the decode size (a changed tree gets a new file)."""
    newest = max((os.stat(path).st_mtime_ns for path, _ in samples), default=0)
    absolute = split_dir.expanduser().resolve()
    key = f"v{DECODED_CACHE_VERSION}|{absolute}|{len(samples)}|{newest}|{size[0]}x{size[1]}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return default_cache_root() / "decoded" / f"{absolute.parent.name}-{absolute.name}-{digest}.npz"


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` into ``path`` atomically, readable by everyone the umask allows (a shared cache)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
