"""A library made from a pool file, kept in a cache folder: what ``expertise select --pool FILE``
ranks, so the practitioner's path is two commands (write the pool file, select) with no library
built by hand.

The folder is ``ROOT/pools/<key>/library`` (ROOT: ``$EXPERTISE_CACHE``, else
``$XDG_CACHE_HOME/expertise``, else ``~/.cache/expertise``), its key a digest of the pool file's
checked entries (sources with relative paths resolved, sizes, names, metadata) and of the size and
modification time of every local weight file they name, so an edited pool file or a replaced
checkpoint gets a library of its own. A copy of the pool file lies beside it (``pool.toml``).
Members are added by :func:`expertise.pool_file.add_from_file`, which is idempotent: a second
``select`` finds them all present and loads nothing to add them; an interrupted build keeps the
members already added, and the next run adds the rest. The library's embedding cache
(``library/cache``) makes a second selection on the same task cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from expertise.io import atomic_write_text
from expertise.library import Library
from expertise.pool_file import Outcome, PoolEntry, add_from_file, read


def cache_root() -> Path:
    """Where pool libraries are kept (see the module docstring)."""
    if os.environ.get("EXPERTISE_CACHE"):
        return Path(os.environ["EXPERTISE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "expertise"


def _stamp(path: Path) -> list[object]:
    """Size and modification time of a local file, or of each file directly in a folder."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def pool_key(entries: list[PoolEntry]) -> str:
    """16 hex digits over the entries and the local files they name."""
    rows = []
    for e in entries:
        local = e.checkpoint or (Path(e.hf) if e.hf is not None and Path(e.hf).is_absolute() else None)
        rows.append({"name": e.name, "source": list(e.source), "timm": e.timm, "pretrained": e.pretrained,
                     "size": e.size, "metadata": [e.metadata.upstream_dataset, e.metadata.upstream_images,
                                                  e.metadata.imagenet_top1, e.metadata.notes],
                     "files": _stamp(local) if local is not None else []})
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_library(pool_file: Path, root: Path | None = None,
                 report: Callable[[Outcome], None] = lambda o: None) -> Library:
    """The cached library of ``pool_file``'s members, created or completed as needed."""
    pool_file = Path(pool_file)
    entries = read(pool_file)  # checked whole before anything is created
    folder = (root or cache_root()) / "pools" / pool_key(entries)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pool.toml", pool_file.read_text(encoding="utf-8"))
    add_from_file(folder / "library", pool_file, report=report)
    return Library.open(folder / "library")


__all__ = ["cache_root", "pool_key", "pool_library"]
