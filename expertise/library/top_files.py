"""The library's top-level files (``hierarchy.json``, ``upstream.json``): each checked against the
sha256 that ``library.json`` records for it before it is read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from expertise.data.hierarchy import Hierarchy
from expertise.errors import ExpertiseError, LibraryError
from expertise.io import sha256_file
from expertise.library import checks
from expertise.library.manifest import HIERARCHY, MANIFEST

if TYPE_CHECKING:
    from expertise.library.core import Library


def check_top_file(lib: Library, fname: str, recorded: dict[str, str] | None) -> Path | None:
    """The path of a top-level file after checking it against its ``recorded`` sha256 (None: a
    library written before top-level files were hashed); None when the file does not exist."""
    f = lib.path / fname
    if not f.exists():
        if recorded and fname in recorded:
            raise LibraryError(f"{f} is missing but {MANIFEST} records it; restore it from a backup")
        return None
    if checks.outside(f, lib.path):
        raise LibraryError(f"{f} leads outside the library (a symbolic link); copy the file into the library")
    if recorded is not None:
        if fname not in recorded:
            raise LibraryError(f"{f} is not recorded in {MANIFEST}; delete it or restore the library from a backup")
        if sha256_file(f) != recorded[fname]:
            raise LibraryError(f"{f} was modified since it was written (sha256 mismatch); restore it from a backup")
    return f


def read_hierarchy(lib: Library, recorded: dict[str, str] | None) -> Hierarchy | None:
    f = check_top_file(lib, HIERARCHY, recorded)
    if f is None:
        return None
    try:
        return Hierarchy.load(f)
    except ExpertiseError as e:
        raise LibraryError(f"{f} cannot be read ({e}); restore it from a backup") from None
